"""--deepspeed configuration: the built-in shorthands, the precision rule (R32), the install message."""

from __future__ import annotations

import json

import pytest

from vlcli.config import deepspeed as dsc
from vlcli.config.resolve import resolve


def _r32(cli, env=None, command="finetune"):
    res = resolve(command, "vqa", [], cli, env=env or {})
    return [i for i in res.errors if i.rule == "R32"], [i for i in res.warnings if i.rule == "R32"]


@pytest.mark.parametrize("value", ["zero2", "zero3", "ZeRO3"])
def test_shorthands_are_accepted(value):
    errors, _ = _r32({"deepspeed": value})
    assert errors == []


def test_shorthand_fills_auto_from_vlcli_settings():
    cfg = dsc.resolve(dsc.load_config("zero3"), fp16=False, batch_size=4, accumulation=2, clip=1.0)
    assert cfg["zero_optimization"]["stage"] == 3
    assert (cfg["fp16"]["enabled"], cfg["bf16"]["enabled"]) == (False, False)
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]) == (4, 2, 1.0)


def test_precision_conflicts_are_rule_errors(tmp_path):
    bf16 = tmp_path / "bf16.json"
    bf16.write_text(json.dumps({"bf16": {"enabled": True}}))
    errors, _ = _r32({"deepspeed": str(bf16), "fp16": "1"})
    assert errors and "--fp16 conflicts with bf16.enabled=true" in errors[0].message
    fp16 = tmp_path / "fp16.json"
    fp16.write_text(json.dumps({"fp16": {"enabled": True}}))
    errors, _ = _r32({"deepspeed": str(fp16)})
    assert errors and "add --fp16" in errors[0].message
    errors, _ = _r32({"deepspeed": str(fp16), "fp16": "1"})
    assert errors == []


def test_bad_json_is_one_line_error(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    errors, _ = _r32({"deepspeed": str(bad)})
    assert errors and "not valid JSON (line 1" in errors[0].message


def test_missing_package_message_names_the_extra():
    from vlcli.config.deepspeed import missing_message

    assert 'pip install -e ".[deepspeed]"' in missing_message("zero2")


def test_deepspeed_is_refused_before_the_demo_world_or_the_run_directory_exist(cli, tmp_path):
    root, out = tmp_path / "demo-data", tmp_path / "run"
    res = cli("finetune", "vqa", "--adapter", "lora", "--profile", "demo", "--data_root", str(root),
              "--backbone", str(root / "backbones/t5-demo"), "--output", str(out), "--deepspeed", "zero2")
    assert res.code in (2, 3) and "--deepspeed zero2" in res.err and "Traceback" not in res.err
    assert not root.exists() and not out.exists()
