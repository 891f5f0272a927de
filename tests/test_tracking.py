"""--report_to: TensorBoard event files and an offline W&B run hold the loss, the metrics and the config."""

from __future__ import annotations

import pytest

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {"data": make_world(root / "datasets"), "t5": make_backbone_dir(root / "t5", "t5")}


def finetune(world, out, *extra):
    return ["finetune", "vqa", "--backbone", str(world["t5"]), "--data_root", str(world["data"]),
            "--feature_type", FEATURE_TYPE, "--batch_size", "4", "--epochs", "2", "--use_adapter",
            "--output", str(out), *extra]


def test_tensorboard_events_hold_loss_lr_metrics_and_config(cli, world, tmp_path):
    pytest.importorskip("tensorboard", reason="the tracking extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = cli(*finetune(world, tmp_path / "run", "--report_to", "tensorboard", "--run_name", "tb-test", "--sync_every", "1"))
    assert res.code == 0, res.err
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "tb-test"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/train_loss", "epoch/valid/vqa/accuracy", "epoch/score"} <= scalars
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]  # 3 steps per epoch, global steps
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [1, 2]
    texts = acc.Tags()["tensors"]
    assert "config/text_summary" in texts and "parameters/text_summary" in texts


def test_wandb_offline_writes_its_run_directory(cli, world, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the tracking extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = cli(*finetune(world, tmp_path / "run", "--report_to", "wandb,tensorboard", "--run_name", "wb"))
    assert res.code == 0, res.err
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(p.suffix == ".wandb" for p in runs[0].iterdir())
    assert (tmp_path / "run" / "tensorboard" / "wb").is_dir()


def test_an_unknown_tracker_is_refused_before_any_work(cli, world, tmp_path):
    res = cli(*finetune(world, tmp_path / "run", "--report_to", "mlflow"))
    assert res.code == 2
    assert "--report_to mlflow" in res.err and "tensorboard" in res.err
    assert not (tmp_path / "run").exists()
