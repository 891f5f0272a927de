"""Configuration values never give a traceback: each bad value is one line naming the option and the fix, exit 2.

Covers issue 14's configuration items: odd task lists and undecodable text, path-like values that no file
system call can take (unknown ~user, over-long names, NUL bytes), bounded integers, finite floats,
``--best_metric TASK/METRIC`` and backbone / tokenizer names checked before any slow work.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.config.load import resolve_load
from vlcli.config.rules import METRIC_NAMES
from vlcli.config.settings import FIELDS
from vlcli.config.types import path_problem
from vlcli.errors import CheckpointNotFoundError, ConfigError, VlcliError
from vlcli.model.presets import backbone_info
from vlcli.model.tokenizer import build_vl_tokenizer
from vlcli.tasks import get_task

LONG_NAME = "a" * 300
LONG_PATH = "/" + "b/" * 2100


def one_error(res, *needles: str) -> str:
    """The single error line of a rejected command that holds every needle (no traceback anywhere)."""
    assert res.code == 2, (res.code, res.err)
    assert "Traceback" not in res.err + res.out
    lines = [line for line in res.err.splitlines() if all(n in line for n in needles)]
    assert lines, f"no error line with {needles} in:\n{res.err}"
    return lines[0]


# ---------------------------------------------------------------------------------------------- task lists, text


@pytest.mark.parametrize("tasks", ["inf", "[a]", "vqa,,nope", "nan"])
def test_odd_task_lists_are_one_error_naming_the_known_tasks(cli, tasks):
    one_error(cli("inspect-config", "multitask", "--tasks", tasks), "--tasks", "known tasks: vqa, gqa")


@pytest.mark.parametrize("option", ["image_size", "train_topk", "num_workers", "batch_size", "data_paths"])
def test_undecodable_command_line_bytes_are_one_error_naming_the_option(cli, option):
    # $'\xff' on a UTF-8 command line reaches Python as a lone surrogate
    one_error(cli("inspect-config", "vqa", f"--{option}", "x\udcff"), f"--{option}", "\\udcff")


def test_an_undecodable_backbone_name_is_one_error_naming_it():
    # (through the API: the CLI would echo the value in its table, which pytest's capture cannot encode)
    with pytest.raises(ConfigError) as info:
        api.load_settings(task="vqa", backbone="x\udcff")
    assert [i.rule for i in info.value.issues] == ["R53"] and "--backbone x\\udcff: " in str(info.value)


def test_a_long_bad_value_is_shortened_in_the_message(cli):
    line = one_error(cli("inspect-config", "vqa", "--image_size", "x" * 5000), "--image_size", "not an image size")
    assert "(5002 characters)" in line and len(line) < 5000 + 400  # the value is echoed once by the resolver


# ---------------------------------------------------------------------------------------------- path-like values


PATH_CASES = [
    ("~nouser/x", "~nouser names no user of this machine; write the path out in full"),
    (LONG_NAME, "has a 300-byte name in it; file names are limited to 255 bytes; shorten it"),
    (LONG_PATH, "is 4201 bytes long; paths are limited to 4096 bytes; use a shorter one"),
]


@pytest.mark.parametrize("value,why", PATH_CASES, ids=["unknown-user", "long-name", "long-path"])
@pytest.mark.parametrize("option", ["output", "backbone", "tokenizer", "deepspeed", "clip_weights", "data_root", "load"])
def test_path_values_no_file_system_can_take_are_one_error_naming_the_option(cli, option, value, why):
    extra = ["--feature_type", "raw_RN50"] if option == "clip_weights" else []
    one_error(cli("inspect-config", "vqa", *extra, f"--{option}", value), f"--{option} ", why)


@pytest.mark.parametrize("value,why", PATH_CASES, ids=["unknown-user", "long-name", "long-path"])
def test_data_paths_values_are_checked_like_paths(cli, value, why):
    one_error(cli("inspect-config", "vqa", "--data_paths", f"vqa.questions={value}"), "--data_paths vqa.questions=", why)


def test_a_nul_byte_in_a_profile_path_is_one_error(cli, tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"output": "runs/a\u0000b", "data_paths": "vqa.questions=q\u0000.json"}))
    res = cli("inspect-config", "vqa", "--profile", str(profile))
    one_error(res, "--output runs/a", "contains a NUL byte; remove it")
    one_error(res, "--data_paths vqa.questions=", "contains a NUL byte")


@pytest.mark.parametrize("value", ["~nouser/x", LONG_NAME, LONG_PATH, "a\x00b", "x\udcffy", "\ud800"])
def test_file_system_probes_of_user_values_never_raise(value, tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="--load "):
        resolve_load(value, tmp_path)
    assert backbone_info(value) is None
    assert (path_problem(value) is None) == (value == "x\udcffy")  # undecodable bytes can still name a file


def test_load_auto_in_a_missing_or_odd_output_is_one_error(tmp_path):
    for output in (tmp_path / "none", "~nouser/run", "a\x00b"):
        with pytest.raises(CheckpointNotFoundError, match="--load auto: no checkpoint"):
            resolve_load("auto", output)


@pytest.mark.parametrize("content", ["[1, 2]", '"t5"', '{"model_type": "t5", "d_model": "wide"}', "{", "null"])
def test_a_local_backbone_with_an_odd_config_json_is_described_without_raising(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    info = backbone_info(str(tmp_path))
    assert info is None or (info.family == "t5" and info.d_model is None)


# ---------------------------------------------------------------------------------------------- numeric ranges


@pytest.mark.parametrize("option,value,why", [
    ("additional_visual_embedding_layers", "2147483648", "must be >= 0 and <= 64"),
    ("batch_size", "0", "must be >= 1 and <= 1000000"),
    ("num_beams", "2147483648", "must be >= 1 and <= 100"),
    ("lora_dim", "1000000000", "must be >= 1 and <= 65536"),
    ("seed", "-5", "must be >= 0 and <= 4294967295"),
    ("epochs", "1000000", "must be >= 0 and <= 100000"),
    ("num_workers", "100000", "must be >= 0 and <= 256"),
    ("train_topk", "2000000000", "must be >= -1 and <= 1000000000"),
    ("projected_task_embedding_dim", "100000", "must be -1 or >= 1 and <= 65536"),
    ("projected_task_embedding_dim", "0", "must be -1 (= 64) or at least 1"),  # R6's line, and no second one
    ("dropout", "1.5", "must be >= 0 and < 1"),
    ("warmup_ratio", "1.0", "must be >= 0 and < 1"),
    ("lr", "0.0", "must be > 0 and <= 10"),
    ("adam_eps", "0.0", "must be > 0 and <= 1"),
    ("adam_beta2", "1.0", "must be >= 0 and < 1"),
    ("gradient_accumulation_steps", "0", "must be >= 1 and <= 100000"),
])
def test_size_like_and_rate_values_out_of_range_name_the_range(cli, option, value, why):
    t0 = time.perf_counter()
    res = cli("inspect-config", "vqa", f"--{option}", value)
    one_error(res, f"--{option} {value} {why}")
    assert len([line for line in res.err.splitlines() if line.startswith("error")]) == 1  # one line per mistake
    assert time.perf_counter() - t0 < 10  # refused before anything is built


def test_image_size_is_bounded(cli):
    one_error(cli("inspect-config", "vqa", "--image_size", "99999999"), "--image_size", "must be >= 1 and <= 8192")


FLOATS = [n for n, f in FIELDS.items() if isinstance(f.default, float)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_setting_refuses_nan_and_inf(cli, value):
    args = [a for n in FLOATS for a in (f"--{n}", value)]
    res = cli("inspect-config", "vqa", *args)
    for name in FLOATS:
        one_error(res, f"--{name} {value} must be a finite number (")


# ---------------------------------------------------------------------------------------------- best_metric


def test_best_metric_with_a_metric_the_task_does_not_report_lists_the_valid_names(cli):
    line = one_error(cli("inspect-config", "vqa", "--best_metric", "vqa/acc"), "--best_metric 'vqa/acc'")
    assert "vqa reports no metric 'acc'; use one of vqa/accuracy" in line
    line = one_error(cli("inspect-config", "caption", "--best_metric", "caption/cider"), "--best_metric")
    assert "caption/CIDEr" in line and "did you mean 'CIDEr'?" in line


@pytest.mark.parametrize("task,metric", [("vqa", "accuracy/yes/no"), ("caption", "CIDEr"), ("vcr", "q_ar"), ("nlvr", "consistency")])
def test_best_metric_task_slash_metric_of_a_reported_metric_is_accepted(task, metric):
    assert api.load_settings(task=task, best_metric=f"{task}/{metric}").get("best_metric") == f"{task}/{metric}"


def _scores() -> dict[str, dict]:
    """What each evaluator really returns on two tiny examples (caption runs the real pycocoevalcap)."""
    s = api.load_settings(task="vqa")
    ans = {"answers": [{"answer": "yes"}] * 10, "answer_type": "yes/no", "question_type": "is"}
    caption_id = "COCO_val2014_000000000001"
    return {
        "vqa": get_task("vqa").score({1: "yes"}, {1: ans}, s),
        "gqa": get_task("gqa").score({1: "yes"}, {1: {"yes": 1.0}}, s),
        "nlvr": get_task("nlvr").score({"a-0-1": True, "a-1-1": False}, {"a-0-1": 1, "a-1-1": 0}, s),
        "refcoco": get_task("refcoco").score({1: [0, 0, 10, 10]}, {1: [0, 0, 10, 10]}, s),
        "cls": get_task("cls").score({1: "cat"}, {1: "cat"}, s),
        "caption": get_task("caption").score({caption_id: "a dog on grass"}, {caption_id: ["a dog on the grass"]}, s),
    }


def test_every_metric_an_evaluator_returns_is_a_valid_best_metric():
    for task, scores in _scores().items():
        assert get_task(task).primary_metric in scores, task
        for metric in scores:
            api.load_settings(task=task, best_metric=f"{task}/{metric}", feature_type="RN50")  # R49 must agree
        core = {m for m in scores if "/" not in m}
        assert core <= set(METRIC_NAMES[task]), (task, core)


# ---------------------------------------------------------------------------------------------- backbone / tokenizer


def test_a_misspelt_backbone_names_the_backbone_with_a_suggestion_before_any_demo_set_up(cli, tmp_path):
    root = tmp_path / "demo-data"
    res = cli("finetune", "vqa", "--profile", "demo", "--data_root", str(root), "--backbone", "t5-bse",
              "--output", str(tmp_path / "run"))
    line = one_error(res, "--backbone t5-bse", "did you mean 't5-base'?")
    assert "--tokenizer" not in res.err and "with --demo_world use" in line
    assert not root.exists() and not (tmp_path / "run").exists()  # nothing was set up or written


def test_a_misspelt_tokenizer_names_the_tokenizer(cli):
    one_error(cli("inspect-config", "vqa", "--tokenizer", "bart-bse"), "--tokenizer bart-bse", "did you mean 'bart-base'?")


@pytest.mark.parametrize("name", ["google/t5-v1_1-base", "facebook/bart-large", "t5-base", "bart-base"])
def test_hub_ids_and_presets_stay_accepted(name):
    assert api.load_settings(task="vqa", backbone=name).get("backbone") == name


def test_local_directories_must_hold_a_model_or_a_tokenizer(cli, tmp_path):
    one_error(cli("inspect-config", "vqa", "--backbone", str(tmp_path)), f"--backbone {tmp_path}", "has no config.json")
    one_error(cli("inspect-config", "vqa", "--tokenizer", str(tmp_path)), "--tokenizer", "has no tokenizer files")
    backbone = make_backbone_dir(tmp_path / "t5", "t5")
    assert api.load_settings(task="vqa", backbone=str(backbone), tokenizer=str(backbone)).get("backbone") == str(backbone)


def test_tokenizer_load_errors_name_the_option_the_name_came_from(tmp_path):
    with pytest.raises(VlcliError, match=r"^--backbone .*: no such directory"):
        build_vl_tokenizer(str(tmp_path / "missing"), "t5", option="--backbone")


# ---------------------------------------------------------------------------------------------- api.load_settings


@pytest.mark.parametrize("kwargs,needle", [
    ({"task": 5}, "task=5"), ({"adapter": ["lora"]}, "adapter=['lora']"), ({"profiles": [5]}, "profiles=[5]"),
    ({"profiles": None}, "profiles=None"), ({"command": "bogus"}, "command='bogus': unknown command"),
])
def test_load_settings_refuses_argument_types_it_cannot_use(kwargs, needle):
    with pytest.raises(VlcliError, match="load_settings: ") as info:
        api.load_settings(**kwargs)
    assert needle in str(info.value) and not isinstance(info.value, ConfigError)


def test_load_settings_takes_one_profile_name_as_a_string():
    assert api.load_settings("demo", task="vqa").get("demo_world") is True
