"""The command line as a user drives it: exit codes, one-line errors, JSON output, help."""

import json
import subprocess
import sys

import pytest

COMMANDS = ("inspect-config", "extract-features", "pretrain", "finetune", "eval", "submit")


def test_help_lists_six_commands(cli):
    r = cli("--help")
    assert r.code == 0
    for name in COMMANDS:
        assert name in r.out


def test_python_dash_m_and_console_script():
    r = subprocess.run([sys.executable, "-m", "vlcli", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "finetune" in r.stdout
    exe = subprocess.run([sys.executable, "-c", "import shutil; print(shutil.which('vlcli') or '')"], capture_output=True, text=True)
    script = exe.stdout.strip()
    if script:
        r2 = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
        assert r2.returncode == 0 and r2.stdout.startswith("vlcli ")


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_groups_options_by_section(cli, name):
    r = cli(name, "--help")
    assert r.code == 0
    for panel in ("Train", "Dataset", "Model", "PEFT", "Visual encoder", "Inference", "Multitask"):
        assert panel in r.out
    assert "--reduction_factor" in r.out


def test_acceptance_profile_source_and_cli_source(cli):
    r = cli("inspect-config", "vqa", "--profile", "single_adapter", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["config"]["reduction_factor"] == 8
    assert data["sources"]["reduction_factor"] == "profile:single_adapter"
    assert set(data) >= {"config", "sources", "warnings", "errors"} and data["errors"] == []
    r = cli("inspect-config", "vqa", "--profile", "single_adapter", "--json", "--lr", "3e-4")
    data = json.loads(r.out)
    assert data["config"]["lr"] == 3e-4 and data["sources"]["lr"] == "cli"


def test_reference_jsonc_syntax_slip(cli, reference_jsonc):
    r = cli("inspect-config", "--profile", str(reference_jsonc))
    assert r.code == 2
    assert f"{reference_jsonc}:38:29:" in r.err
    assert "Traceback" not in r.err + r.out
    assert len(r.err.strip().splitlines()) == 1


def repaired(reference_jsonc, tmp_path):
    text = reference_jsonc.read_text()
    text = text.replace('"vis_weight_decay":0.01,,', '"vis_weight_decay":0.01,')  # M1
    text = text.replace('"feature_type":"butd" \n', '"feature_type":"butd",\n').replace('"feature_type":"butd"\n', '"feature_type":"butd",\n')  # M2
    text = text.replace('"use_single_prompt":true or,', '"use_single_prompt":false,')  # M3 (M4: trailing comma is accepted)
    path = tmp_path / "reference-repaired.jsonc"
    path.write_text(text)
    return path


def test_reference_jsonc_repaired_lists_every_error(cli, reference_jsonc, tmp_path):
    path = repaired(reference_jsonc, tmp_path)
    r = cli("inspect-config", "--profile", str(path), "--json")
    assert r.code == 2
    data = json.loads(r.out)
    rules = sorted({e["rule"] for e in data["errors"]}, key=lambda x: int(x[1:]))
    assert rules == ["R13", "R14", "R19", "R33", "R39", "R45"]
    r = cli("inspect-config", "--profile", str(path))
    assert r.code == 2
    for rule in rules:
        assert f"error [{rule}]" in r.err
    assert "Traceback" not in r.err


def test_inspect_config_tables_and_highlight(cli):
    r = cli("inspect-config", "vqa", "--profile", "single_lora", "--changed")
    assert r.code == 0, r.err
    assert "profile:single_lora" in r.out and "Per task" in r.out and "configuration valid" in r.out
    assert "--changed" not in r.out


def test_list_profiles(cli):
    r = cli("inspect-config", "--list-profiles")
    assert r.code == 0 and "single_adapter" in r.out and "hyperformer" in r.out


def test_unknown_argument_one_line(cli):
    r = cli("finetune", "vqa", "--reduction-facto", "8")
    assert r.code == 2
    assert r.err.strip() == "error: unknown argument --reduction-facto; did you mean --reduction_factor?"


def test_dashed_aliases_bools_and_negative_values(cli):
    r = cli("inspect-config", "vqa", "--json", "--use-adapter", "--no-use_vis_order_embedding", "--clip-grad-norm", "-1",
            "--feature", "RN50", "--wordMaskRate=0.3", "--do_lower_case", "yes", "--fp16=false", "--reduction_factor", "8")
    assert r.code == 0, r.err
    c = json.loads(r.out)["config"]
    assert c["use_adapter"] is True and c["use_vis_order_embedding"] is False and c["clip_grad_norm"] == -1
    assert c["feature_type"] == "RN50" and c["word_mask_rate"] == 0.3 and c["do_lower_case"] is True and c["fp16"] is False


def test_config_error_exit_2_all_errors(cli):
    r = cli("finetune", "vqa", "--use_adapter", "--use_compacter", "--pos_dim", "3")
    assert r.code == 2
    assert "error [R1]" in r.err and "error [R23]" in r.err
    assert "Traceback" not in r.err


def test_bad_value_one_line(cli):
    r = cli("finetune", "vqa", "--batch_size", "many")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "--batch_size 'many'" in lines[0] and "valid integer" in lines[0]


def test_debug_shows_traceback():
    r = subprocess.run([sys.executable, "-m", "vlcli", "--debug", "finetune", "vqa", "--lrr", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UnknownArgumentError" in r.stderr


def test_missing_value(cli):
    r = cli("finetune", "vqa", "--lr")
    assert r.code == 2 and "--lr needs a value" in r.err


def test_pretrain_without_data_names_the_missing_files(cli, tmp_path):
    r = cli("pretrain", "--data_root", str(tmp_path))
    assert r.code == 2 and "Traceback" not in r.err
    assert "lxmert/mscoco_resplit_train.json" in r.err and "data paths missing" in r.err


def test_finetune_without_data_names_the_missing_files(cli, tmp_path):
    r = cli("finetune", "vqa", "--adapter", "lora", "--data_root", str(tmp_path / "datasets"))
    assert r.code == 2 and "Traceback" not in r.err
    assert "vqa/karpathy_train.json" in r.err and "vlcli convert vqa" in r.err


def test_finetune_needs_a_task(cli):
    r = cli("finetune")
    assert r.code == 2 and "needs a TASK" in r.err


def test_multitask_positional(cli):
    r = cli("inspect-config", "multitask", "--tasks", "vqa,gqa", "--json")
    assert json.loads(r.out)["derived"]["multitask"] is True


def test_test_only_requires_load(cli):
    r = cli("eval", "vqa", "--test_only")
    assert r.code == 2 and "error [R33] --test_only requires --load" in r.err


def test_eval_takes_tasks_and_settings_from_run_directory(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "BEST.safetensors").write_bytes(b"0")
    (run / "config.json").write_text(json.dumps({"tasks": "vqa,gqa", "backbone": "facebook/bart-base", "use_lora": True,
                                                 "lora_dim": 16, "load": "somewhere", "from_scratch": True}))
    r = cli("inspect-config", "--json", "--load", str(run))
    data = json.loads(r.out)
    # inspect-config --load shows the run's own configuration, as eval / submit would use it
    assert data["derived"]["tasks"] == ["vqa", "gqa"] and data["derived"]["load_path"] == str(run / "BEST.safetensors")
    assert data["config"]["backbone"] == "facebook/bart-base" and data["sources"]["lora_dim"].startswith("run:")
    r = cli("eval", "--test_only", "--load", str(run), "--data_root", str(tmp_path / "datasets"))
    assert r.code == 2, r.err  # valid: tasks from the run's config.json; then the data preflight
    assert "vqa/karpathy_test.json" in r.err and "GQA/submit.json" in r.err


def test_eval_missing_checkpoint_lists_candidates(cli, tmp_path):
    r = cli("eval", "vqa", "--load", str(tmp_path / "nothing"))
    assert r.code == 2 and "error [R47]" in r.err and "nothing.safetensors" in r.err


def test_extract_features_needs_images(cli, tmp_path):
    r = cli("extract-features", "--feature_type", "RN101")
    assert r.code == 2 and "--images" in r.err
    r = cli("extract-features", "--feature_type", "RN101", "--images", str(tmp_path / "none"), "--out", str(tmp_path))
    assert r.code == 2 and "no such folder" in r.err


def test_profile_not_found_one_line(cli):
    r = cli("finetune", "vqa", "--profile", "singel_adapter")
    assert r.code == 2 and "did you mean 'single_adapter'" in r.err and len(r.err.strip().splitlines()) == 1


def test_no_arguments_shows_help(cli):
    r = cli()
    assert r.code == 0 and "finetune" in r.out and "error" not in r.err


def test_unknown_command_suggests(cli):
    r = cli("finetun", "vqa")
    assert r.code == 2 and "Did you mean 'finetune'" in r.err and len(r.err.strip().splitlines()) == 1
