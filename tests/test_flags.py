"""Every accepted flag acts, or is refused / warned about."""

from __future__ import annotations

import json
import re

import pytest

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli.cli.common import _help, resolve_command
from vlcli.cli.main import COMMAND_NAMES
from vlcli.config.settings import FIELDS
from vlcli.config.usage import USED_BY
from vlcli.errors import ConfigError

SETTINGS_COMMANDS = ["inspect-config", "extract-features", "pretrain", "finetune", "eval", "submit"]


def cli_value(name: str) -> str:
    """The field's default as a command-line string (always valid, but given explicitly)."""
    default = FIELDS[name].default
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return ",".join(str(x) for x in default)
    if isinstance(default, dict):
        return ",".join(f"{k}={v}" for k, v in default.items())
    return str(default)


def test_the_usage_table_covers_every_command_and_every_field():
    assert set(USED_BY) == set(COMMAND_NAMES)
    assert set().union(*USED_BY.values()) == set(FIELDS)


@pytest.mark.parametrize("command", SETTINGS_COMMANDS)
def test_every_field_given_to_every_command_is_used_or_warned_about(command):
    task = None if command in ("pretrain", "extract-features") else "vqa"
    for name in FIELDS:
        if name in ("tasks",):
            continue
        try:
            res = resolve_command(command, task, [], None, {name: cli_value(name)})
        except ConfigError as exc:  # a default that is an error for this command (e.g. a rule); still not silent
            assert exc.issues, name
            continue
        warned = [w for w in res.warnings if w.rule == "R51" and name in w.fields]
        if name in USED_BY[command]:
            assert not warned, f"{command} uses --{name} but warns about it"
        else:
            assert warned and f"--{name}" in warned[0].message, f"{command} ignores --{name} silently"


def test_training_flags_given_to_eval_and_extract_features_are_named_once(cli, tmp_path):
    (tmp_path / "imgs").mkdir()
    res = cli("extract-features", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "o"), "--lr", "3e-4",
              "--epochs", "3")
    assert "warning [R51] --lr, --epochs ignored by `vlcli extract-features`" in res.err
    assert res.err.count("[R51]") == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["--adapter", "lora", "--adapter", "prompt"], "--adapter lora and --adapter prompt: an option given twice"),
    (["--lr", "1e-3", "--lr=2e-3"], "--lr 1e-3 and --lr 2e-3"),
    (["--reduction-factor", "4", "--reduction_factor", "8"], "--reduction-factor 4 and --reduction_factor 8"),
    (["--feature", "RN50", "--feature_type", "RN101"], "--feature RN50 and --feature_type RN101"),
    (["--use_lora", "--no-use_lora"], "given twice"),
    (["--json", "--json"], "--json and --json"),
])
def test_an_option_given_twice_is_an_error(cli, args, needle):
    res = cli("inspect-config", "vqa", *args)
    assert res.code == 2 and needle in res.err


def test_repeating_profiles_and_the_same_value_is_fine(cli):
    res = cli("inspect-config", "vqa", "-p", "single_lora", "--profile", "demo", "--use_lora", "--use_lora=yes")
    assert res.code == 0, res.err


def test_inspect_config_changed_json_and_list_profiles_json(cli):
    full = json.loads(cli("inspect-config", "vqa", "--lr", "3e-4", "--json").out)
    changed = json.loads(cli("inspect-config", "vqa", "--lr", "3e-4", "--changed", "--json").out)
    assert set(changed["config"]) == {"lr", "tasks"} and set(changed["sources"]) == {"lr", "tasks"}
    assert len(full["config"]) == len(FIELDS)
    profiles = json.loads(cli("inspect-config", "--list-profiles", "--json").out)
    assert {"single_lora", "demo"} <= {p["name"] for p in profiles} and all(p["description"] for p in profiles)


def test_help_at_80_columns_shows_every_option_name_and_every_bracket(cli, monkeypatch):
    import typer
    from typer.core import TyperOption

    from vlcli.cli.main import app

    monkeypatch.setenv("COLUMNS", "80")
    group = typer.main.get_command(app)
    for name in COMMAND_NAMES:
        res = cli(name, "--help")
        flat = re.sub(r"[│\s]+", "", res.out)
        for param in group.commands[name].params:
            if not isinstance(param, TyperOption):
                continue
            assert param.opts[0] in res.out, f"{name}: {param.opts[0]} cut"
            for bracket in re.findall(r"\[[^\]]*\]", (param.help or "").replace("\\[", "[")):
                assert re.sub(r"\s+", "", bracket) in flat, f"{name} {param.opts[0]}: {bracket} eaten"
    assert "[default: vlt5]" in re.sub(r"[│\s]+", " ", cli("eval", "--help").out)
    assert "[coco ids]" in re.sub(r"[│\s]+", " ", cli("convert", "--help").out)
    assert "[default:" in _help("losses") and "lm, qa" in _help("losses")


# ---------------------------------------------------------------------------- flags that now act


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-epoch VQA run on the tiny world."""
    from vlcli.cli.main import main

    root = tmp_path_factory.mktemp("flags")
    data, t5 = make_world(root / "datasets"), make_backbone_dir(root / "t5", "t5")
    out = root / "run"
    common = ["--backbone", str(t5), "--data_root", str(data), "--feature_type", FEATURE_TYPE, "--batch_size", "4"]
    assert main(["finetune", "vqa", *common, "--use_adapter", "--epochs", "1", "--output", str(out)]) == 0
    return {"out": out, "common": common}


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_finetune_test_only_evaluates_and_trains_nothing(cli, run):
    before = files(run["out"])
    res = cli("finetune", "--test_only", "--load", str(run["out"]))
    assert res.code == 0, res.err
    assert "epoch 1" not in res.err and "test/vqa" in res.out
    after = files(run["out"])
    assert {k: v for k, v in after.items() if k.parts[0] != "eval"} == before  # the run itself is untouched
    [metrics] = [k for k in after if k.name == "eval_metrics.json"]
    assert set(json.loads(after[metrics])) == {"test/vqa", "test/score"}


def test_finetune_test_none_skips_testing(cli, run, tmp_path):
    res = cli("finetune", "vqa", *run["common"], "--use_adapter", "--epochs", "1", "--test", "none",
              "--output", str(tmp_path / "r"))
    assert res.code == 0, res.err
    assert not (tmp_path / "r" / "test_metrics.json").exists()
    assert not list((tmp_path / "r").glob("*_predictions.json"))


def test_submit_writes_where_submission_says(cli, run, tmp_path):
    target = tmp_path / "mine.json"
    res = cli("submit", "--load", str(run["out"]), "--submission", str(target))
    assert res.code == 0, res.err
    assert sorted(r["question_id"] for r in json.loads(target.read_text())) == [3000, 3001, 3002, 3003]
    res = cli("submit", "--load", str(run["out"]), "--submission", str(tmp_path))
    assert res.code == 2 and "is a folder" in res.err


def test_eval_load_refuses_file_scoring_options_and_applies_the_evaluator_version(cli, run, tmp_path):
    res = cli("eval", "--load", str(run["out"]), "--annotations", str(tmp_path / "a.json"))
    assert res.code == 2 and "--annotations score a predictions file" in res.err
    res = cli("eval", "--load", str(run["out"]), "--vqa_eval_mode", "official", "--json")
    assert res.code == 0, res.err
    assert "valid/vqa" in json.loads(res.out)


def test_the_vqa_evaluator_version_reaches_the_score():
    from tests.test_metrics import vqa_annotations, vqa_predictions
    from vlcli.train.scoring import score

    anns = vqa_annotations()
    refs = {a["question_id"]: a for a in (anns["annotations"] if isinstance(anns, dict) else anns)}
    preds = dict(vqa_predictions())
    vlt5 = score("vqa", preds, refs, None, mode="vlt5")
    official = score("vqa", preds, refs, None, mode="official")
    assert vlt5["accuracy"] != official["accuracy"]


# ------------------------------------------------------------------------------------- bad input


def test_an_empty_training_split_stops_before_any_model_is_built(cli, run, tmp_path):
    import shutil

    data = tmp_path / "datasets"
    shutil.copytree(run["common"][3], data)
    (data / "vqa" / "karpathy_train.json").write_text("[]")
    common = [*run["common"][:2], "--data_root", str(data), *run["common"][4:]]
    res = cli("finetune", "vqa", *common, "--use_adapter", "--output", str(tmp_path / "r"))
    assert res.code == 2
    assert "train split 'karpathy_train'" in res.err and "karpathy_train.json" in res.err and "no examples" in res.err
    assert not (tmp_path / "r").exists()  # nothing written: the directory it would have made is gone again


def test_a_topk_that_selects_nothing_names_the_option(cli, run, tmp_path):
    res = cli("finetune", "vqa", *run["common"], "--use_adapter", "--valid_topk", "0.01",
              "--output", str(tmp_path / "r"))
    assert res.code == 2 and "--valid_topk 0.01 selects none of its 4 examples" in res.err
