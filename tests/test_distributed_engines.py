"""--deepspeed: the built-in shorthands, the precision rule (R32), the install message, and real 2-process
ZeRO-2 / ZeRO-3 runs on CPU (gloo, DS_ACCELERATOR=cpu) checked against DDP, `eval --load` and `--resume`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.world import FEATURE_TYPE
from vlcli.config import deepspeed as dsc
from vlcli.config.resolve import resolve
from vlcli.train.dist import free_port


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


def test_optimizer_or_scheduler_sections_are_refused_not_ignored(tmp_path):
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}, "scheduler": {}}))
    errors, _ = _r32({"deepspeed": str(cfg)})
    assert errors and "remove its 'optimizer' and 'scheduler' section" in errors[0].message


def test_bad_json_is_one_line_error(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    errors, _ = _r32({"deepspeed": str(bad)})
    assert errors and "not valid JSON (line 1" in errors[0].message


def test_missing_package_message_names_the_extra():
    from vlcli.config.deepspeed import missing_message

    assert 'pip install -e ".[deepspeed]"' in missing_message("zero2")


def _without_deepspeed(monkeypatch):
    """The package looks absent (as on a machine without the extra)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))


def test_deepspeed_without_the_package_is_refused_before_the_demo_world_or_the_run_directory(cli, tmp_path,
                                                                                            monkeypatch):
    _without_deepspeed(monkeypatch)
    root, out = tmp_path / "demo-data", tmp_path / "run"
    res = cli("finetune", "vqa", "--adapter", "lora", "--profile", "demo", "--data_root", str(root),
              "--backbone", str(root / "backbones/t5-demo"), "--output", str(out), "--deepspeed", "zero2")
    assert res.code == 2 and "--deepspeed zero2: the deepspeed package is not installed" in res.err
    assert 'pip install -e ".[deepspeed]"' in res.err and "Traceback" not in res.err
    assert not root.exists() and not out.exists()


# ------------------------------------------------------------------------------ real runs (2 processes)

needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed: pip install -e '.[deepspeed]' (in [dev])")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.test_pretrain import write_pretraining_data
    from tests.tiny import make_backbone_dir
    from tests.world import make_world

    root = tmp_path_factory.mktemp("ds")
    data = make_world(root / "datasets")
    write_pretraining_data(data)
    return {"data": data, "t5": make_backbone_dir(root / "t5", "t5")}


METHODS = {"adapter": ["--use_adapter"], "full": ["--unfreeze_language_model"]}


def _finetune(world, out, method, *extra):
    return ["finetune", "vqa", "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--feature_type",
            FEATURE_TYPE, "--downsample", "false", "--batch_size", "3", "--num_workers", "0", "--epochs", "2",
            *METHODS[method], "--lr", "3e-3", "--output", str(out), *extra]


def _launch(args, env=None, timeout=300):
    """``torchrun --nproc_per_node 2 -m vlcli ARGS`` on CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "vlcli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def _predictions(path):
    return {p["id"]: p["prediction"] for p in json.loads(path.read_text())}


@pytest.fixture(scope="module")
def ddp(world, tmp_path_factory):
    """The references: the same fine-tuning runs with DDP (vlcli's own loop), made when first asked for."""
    runs = {}

    def run_for(method):
        if method not in runs:
            run = tmp_path_factory.mktemp(f"ddp-{method}") / "run"
            proc = _launch(_finetune(world, run, method))
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[method] = run
        return runs[method]

    return run_for


def _train(world, run, method, engine, interrupt):
    """A 2-process run; ``interrupt``: Ctrl-C after step 3 of 4 (mid-epoch), then ``--resume``."""
    args = _finetune(world, run, method, *engine, "--sync_every", "1")
    if interrupt:
        proc = _launch(args, env={"VLCLI_INTERRUPT_AT": "step:3"})
        assert proc.returncode != 0 and "interrupted at epoch 1, batch 1" in proc.stderr, proc.stderr[-3000:]
        assert len(_records(run)) == 1
        args.append("--resume")
    proc = _launch(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "is deprecated" not in proc.stderr
    return proc


def _check_same_as_ddp_and_eval_load(cli, world, run, reference, method, tmp_path):
    # the same training as DDP: loss curve and the trained weights (gathered from the shards)
    ours, theirs = _records(run), _records(reference)
    assert [r["train_samples"] for r in ours] == [12, 12]
    assert [r["train_loss"] for r in ours] == pytest.approx([r["train_loss"] for r in theirs], abs=1e-5)
    a, b = load_file(run / "LAST.safetensors"), load_file(reference / "LAST.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # the checkpoint is a plain vlcli run: `eval --load` (one process, no DeepSpeed / FSDP) predicts what the sharded
    # model predicted at the end of the run
    written = _predictions(run / "vqa_karpathy_test_predictions.json")
    assert sorted(written) == [2000, 2001, 2002, 2003] and any(written.values())
    res = cli("eval", "vqa", "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--feature_type",
              FEATURE_TYPE, "--downsample", "false", *METHODS[method], "--load", str(run),
              "--output", str(tmp_path / "e"))
    assert res.code == 0, res.err
    assert _predictions(tmp_path / "e" / "vqa_karpathy_test_predictions.json") == written


@needs_deepspeed
@pytest.mark.parametrize("stage,method,interrupt", [("zero2", "adapter", False), ("zero3", "full", True)])
def test_zero_training_matches_ddp_and_its_checkpoint_evaluates_to_the_same_predictions(cli, world, ddp, tmp_path,
                                                                                       stage, method, interrupt):
    run = tmp_path / stage
    _train(world, run, method, ["--deepspeed", stage], interrupt)
    assert (run / "LAST.deepspeed" / "engine").is_dir()  # DeepSpeed's own engine state, for --resume
    _check_same_as_ddp_and_eval_load(cli, world, run, ddp(method), method, tmp_path)


def test_fsdp2_full_finetuning_matches_ddp_through_an_interruption_and_resume(cli, world, ddp, tmp_path):
    run = tmp_path / "fsdp"
    proc = _train(world, run, "full", ["--fsdp"], interrupt=True)
    assert "R56" not in proc.stderr  # full fine-tuning: no PEFT warning
    state = torch.load(run / "LAST.state.pt", weights_only=False)
    assert state["optimizers"][0]["state"]  # the optimiser state, consolidated from the shards
    _check_same_as_ddp_and_eval_load(cli, world, run, ddp("full"), "full", tmp_path)


@needs_deepspeed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_full_pretraining_checkpoint_gives_the_deepspeed_models_validation(cli, world, tmp_path, stage):
    from vlcli import api
    from vlcli.train.engine import Engine

    run = tmp_path / "pre"
    args = ["pretrain", "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--feat_dim", "2048",
            "--n_boxes", "4", "--batch_size", "4", "--losses", "lm,qa", "--unfreeze_language_model", "--epochs", "1",
            "--num_workers", "0", "--deepspeed", stage, "--output", str(run)]
    proc = _launch(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = _records(run)[-1]["valid/pretrain"]

    settings = api.load_settings(command="pretrain", backbone=str(world["t5"]), data_root=str(world["data"]),
                                 feat_dim=2048, n_boxes=4, batch_size=4, losses="lm,qa", unfreeze_language_model=True,
                                 output=str(tmp_path / "again"))
    engine = Engine(settings, roles=("valid",))
    engine.load_weights(run / "BEST.safetensors")
    again, _, _ = engine.evaluate(engine.tasks[0], "valid")
    assert again["loss"] == pytest.approx(recorded["loss"], abs=1e-5)
    assert again["qa_accuracy"] == pytest.approx(recorded["qa_accuracy"])
    # and `eval --load` reads it like any pretraining checkpoint (zero-shot VQA, one process, no DeepSpeed)
    res = cli("eval", "vqa", "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--feature_type",
              FEATURE_TYPE, "--downsample", "false", "--unfreeze_language_model", "--load", str(run),
              "--output", str(tmp_path / "e"))
    assert res.code == 0, res.err
    assert sorted(_predictions(tmp_path / "e" / "vqa_karpathy_test_predictions.json")) == [2000, 2001, 2002, 2003]


def test_the_deepspeed_launchers_leading_local_rank_reaches_the_command(cli):
    """`deepspeed --module vlcli finetune ...` runs `python -m vlcli --local_rank=N finetune ...`."""
    res = cli("--local_rank=1", "inspect-config", "vqa", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["config"]["local_rank"] == 1
