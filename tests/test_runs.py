"""`vlcli runs`: finished, interrupted, failed and running runs read from their own records."""

from __future__ import annotations

import json
import os
import shutil
import socket

import h5py
import numpy as np
import pytest

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return {"data": make_world(root / "datasets"), "t5": make_backbone_dir(root / "t5", "t5")}


def finetune(world, out, data=None, *extra):
    return ["finetune", "vqa", "--backbone", str(world["t5"]), "--data_root", str(data or world["data"]),
            "--feature_type", FEATURE_TYPE, "--batch_size", "4", "--epochs", "2", "--output", str(out), *extra]


def test_runs_lists_finished_interrupted_failed_and_running(cli, world, tmp_path, monkeypatch):
    snap = tmp_path / "snap"
    assert cli(*finetune(world, snap / "done", None, "--adapter", "lora")).code == 0
    monkeypatch.setenv("VLCLI_INTERRUPT_AT", "step:4")  # a Ctrl-C in epoch 2
    res = cli(*finetune(world, snap / "cut", None, "--use_adapter"))
    monkeypatch.delenv("VLCLI_INTERRUPT_AT")
    assert res.code == 130 and "--resume" in res.err
    data = tmp_path / "nan"
    shutil.copytree(world["data"], data)
    with h5py.File(data / "COCO/clip_features/data_clip_RN50_att/COCO_train2014_000000000001.h5", "r+") as f:
        f["features"][0, 0] = np.nan
    res = cli(*finetune(world, snap / "nan", data, "--use_adapter"))
    assert res.code == 2 and "non-finite loss" in res.err
    running = snap / "running"
    shutil.copytree(snap / "done", running)
    (running / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))

    res = cli("runs", str(snap), "--json")
    assert res.code == 0, res.err
    rows = {os.path.basename(r["path"]): r for r in json.loads(res.out)}
    assert {k: r["status"] for k, r in rows.items()} == {"done": "finished", "cut": "interrupted", "nan": "failed",
                                                         "running": "running"}
    done = rows["done"]
    assert done["tasks"] == ["vqa"] and done["method"] == "lora (single)" and done["command"] == "finetune"
    assert done["epochs_done"] == 2 and done["epochs"] == 2 and 0 < done["trainable_percent"] < 100
    assert rows["cut"]["epochs_done"] == 1 and rows["cut"]["method"] == "adapter"
    assert done["best_score"] == max(json.loads(x)["score"] for x in (snap / "done/metrics.jsonl").read_text().splitlines())
    table = cli("runs", str(snap))
    assert table.code == 0 and "interrupted" in table.out and "failed" in table.out


def test_runs_on_a_missing_folder_is_one_line(cli, tmp_path):
    res = cli("runs", str(tmp_path / "nowhere"))
    assert res.code == 2 and "no such folder" in res.err
