"""The training engine end to end on a tiny data root: finetune, eval, submit, resume, NaN, Ctrl-C."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli import api
from vlcli.train.engine import Engine, Interrupted, TrainingError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {"data": make_world(root / "datasets"), "t5": make_backbone_dir(root / "t5", "t5"),
            "bart": make_backbone_dir(root / "bart", "bart")}


def common(world, family="bart"):
    return ["--backbone", str(world[family]), "--data_root", str(world["data"]), "--feature_type", FEATURE_TYPE,
            "--batch_size", "4", "--downsample", "false", "--num_workers", "0"]


@pytest.mark.parametrize("profile", ["single_adapter", "single_lora"])
def test_multitask_finetune_then_eval_reproduces_the_test_metrics(cli, world, tmp_path, profile):
    run = tmp_path / "run"
    res = cli("finetune", "multitask", "--tasks", "vqa,gqa,nlvr,caption", "--profile", profile, *common(world),
              "--output", str(run), "--epochs", "2", "--submit")
    assert res.code == 0, res.err
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "BEST.safetensors", "BEST.json", "LAST.safetensors", "LAST.state.pt",
            "curves.png", "test_metrics.json", "vqa_karpathy_test_predictions.json", "nlvr_submit.csv"} <= names
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert {"valid/vqa", "valid/gqa", "valid/nlvr", "valid/caption"} <= set(records[0])
    test = json.loads((run / "test_metrics.json").read_text())
    assert "Run" in res.out and "trainable parameters" in res.out
    # `eval --test_only --load RUN` rebuilds the model from the run's config.json and BEST
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = cli("eval", "--test_only", "--load", str(run), "--json")
    assert res.code == 0, res.err
    [folder] = list((run / "eval").iterdir())  # a new folder; the run's own files are untouched
    again = json.loads((folder / "eval_metrics.json").read_text())
    assert json.loads(res.out) == again  # --json: the metrics on stdout, nothing else
    for task in ("vqa", "nlvr", "caption"):
        assert again[f"test/{task}"] == pytest.approx(test[f"test/{task}"], abs=1e-6)
    # `submit --load RUN` writes the leaderboard files, every id once
    res = cli("submit", "--load", str(run), "--submission", str(run.parent / "subs"))
    assert res.code == 0, res.err
    rows = json.loads((run.parent / "subs" / "vqa_submit.json").read_text())
    assert sorted(r["question_id"] for r in rows) == [3000, 3001, 3002, 3003]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def engine_settings(world, out, **extra):
    return api.load_settings(task="vqa", backbone=str(world["t5"]), data_root=str(world["data"]),
                             feature_type=FEATURE_TYPE, batch_size=4, output=str(out), epochs=2, use_adapter=True,
                             reduction_factor=4, lr=3e-3, **extra)


def test_resume_after_an_interruption_ends_with_the_same_weights(world, tmp_path):
    Engine(engine_settings(world, tmp_path / "full")).fit()
    with pytest.raises(Interrupted, match="--resume"):
        Engine(engine_settings(world, tmp_path / "cut")).fit(stop_after_steps=4)  # mid epoch 2 (3 steps/epoch)
    state = torch.load(tmp_path / "cut" / "LAST.state.pt", weights_only=False)
    position = state["position"]
    assert (position["epoch"], position["batches_done"], position["global_step"]) == (1, 1, 4)
    Engine(engine_settings(world, tmp_path / "cut", resume=True)).fit(resume=True)
    full = load_file(str(tmp_path / "full" / "LAST.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "LAST.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]


def test_interrupt_saves_last_and_its_state(world, tmp_path, cli):
    with pytest.raises(Interrupted) as err:
        Engine(engine_settings(world, tmp_path / "run")).fit(stop_after_steps=1)
    assert err.value.exit_code == 130
    assert (tmp_path / "run" / "LAST.safetensors").is_file() and (tmp_path / "run" / "LAST.state.pt").is_file()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(world, tmp_path):
    import shutil

    data = tmp_path / "datasets"
    shutil.copytree(world["data"], data)
    bad = data / "COCO/clip_features/data_clip_RN50_att/COCO_train2014_000000000001.h5"
    with h5py.File(bad, "r+") as f:
        f["features"][0, 0] = np.nan
    settings = api.load_settings(task="vqa", backbone=str(world["t5"]), data_root=str(data), feature_type=FEATURE_TYPE,
                                 batch_size=4, output=str(tmp_path / "run"), epochs=1, use_adapter=True)
    with pytest.raises(TrainingError, match="non-finite loss"):
        Engine(settings).fit()
    assert not (tmp_path / "run" / "LAST.safetensors").exists()


def test_missing_data_is_reported_before_any_model_is_built(cli, world, tmp_path):
    args = common(world)
    args[args.index("--data_root") + 1] = str(tmp_path / "nowhere")
    res = cli("finetune", "vqa", *args, "--output", str(tmp_path / "r"))
    assert res.code == 2 and "vqa/karpathy_train.json" in res.err


def test_submit_from_a_predictions_file_checks_coverage(cli, world, tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"question_id": q, "answer": "red"} for q in (3000, 3001, 3002)]))
    args = ["submit", "vqa", "--data_root", str(world["data"]), "--predictions", str(preds),
            "--submission", str(tmp_path / "out.json")]
    res = cli(*args)
    assert res.code == 2 and "1 missing" in res.err and "3003" in res.err
    assert not (tmp_path / "out.json").exists()
    preds.write_text(json.dumps([{"id": q, "prediction": "red"} for q in (3000, 3001, 3002, 3003)]))
    res = cli(*args)
    assert res.code == 0, res.err
    assert [r["question_id"] for r in json.loads((tmp_path / "out.json").read_text())] == [3000, 3001, 3002, 3003]


def test_torchrun_two_cpu_processes_count_each_example_once(world, tmp_path):
    """`torchrun --nproc_per_node 2 -m vlcli finetune ...` on CPU (gloo): one run, evaluation de-duplicated."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "vlcli", "finetune", "vqa", *common(world, "t5")[:-6], "--batch_size", "3", "--num_workers", "0",
           "--epochs", "1",
           "--use_adapter", "--gradient_accumulation_steps", "2", "--output", str(run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = json.loads((run / "vqa_karpathy_test_predictions.json").read_text())
    ids = [p["id"] for p in preds]
    assert sorted(ids) == [2000, 2001, 2002, 2003]  # 4 test questions over 2 ranks (one padded): each once
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(lines) == 1  # rank 0 alone writes
    assert lines[0]["train_samples"] == 12  # summed over both ranks (6 each)
    assert proc.stderr.count("epoch 1:") == 1  # rank 0 alone reports


def test_selection_score_follows_best_metric():
    from vlcli.train.scoring import selection_score

    metrics = {"vqa": {"accuracy": 40.0}, "caption": {"CIDEr": 0.8, "Bleu_1": 0.5}}
    assert selection_score(metrics) == pytest.approx(60.0)  # (40 + 0.8 x 100) / 2
    assert selection_score(metrics, "vqa") == 40.0
    assert selection_score(metrics, "caption/Bleu_1") == 0.5


def test_train_accuracy_is_logged_when_asked(world, tmp_path):
    settings = engine_settings(world, tmp_path / "run", log_train_accuracy=True)
    history = Engine(settings).fit()
    assert all(0.0 <= r["train_accuracy"] <= 100.0 for r in history.records)


def test_deepspeed_without_the_package_is_a_clear_error(cli, world, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec  # the package made to look absent, as on a machine without the extra
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    config = tmp_path / "ds.json"
    config.write_text("{}")
    res = cli("finetune", "vqa", *common(world, "t5"), "--use_adapter", "--deepspeed", str(config),
              "--output", str(tmp_path / "r"))
    assert res.code == 2 and "deepspeed package is not installed" in res.err


def test_atomic_writes_keep_old_files_and_use_normal_permissions(tmp_path):
    import os
    import stat

    from vlcli.atomic import WriteError, atomic_write, default_mode, write_json

    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    assert stat.S_IMODE(os.stat(target).st_mode) == default_mode()

    def fail(tmp):
        tmp.write_text("half")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(WriteError, match="cannot write"):
        write_json(tmp_path / "out.json" / "below-a-file.json", {})
