"""All seven fine-tuning tasks in one multitask run (spec data-and-eval §7): RN50 grids for the image
tasks and BUTD region boxes for RefCOCOg and VCR, one shared model, per-task validation and test."""

from __future__ import annotations

import json

import pytest

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, add_region_and_cls_tasks, make_world

TASKS = "vqa,gqa,nlvr,caption,refcoco,vcr,cls"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("all")
    data = add_region_and_cls_tasks(make_world(root / "datasets", n_train=4, n_eval=2))
    return {"data": data, "t5": make_backbone_dir(root / "t5", "t5")}


def test_seven_task_mix_trains_validates_tests_and_reloads(cli, world, tmp_path):
    run = tmp_path / "run"
    res = cli("finetune", "multitask", "--tasks", TASKS, "--profile", "single_adapter", "--backbone", str(world["t5"]),
              "--data_root", str(world["data"]), "--feature_type", FEATURE_TYPE, "--downsample", "true",
              "--n_boxes", "4", "--batch_size", "4", "--epochs", "1", "--num_workers", "0", "--output", str(run))
    assert res.code == 0, res.err
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for task, metric in (("vqa", "accuracy"), ("gqa", "accuracy"), ("nlvr", "accuracy"), ("caption", "CIDEr"),
                         ("refcoco", "accuracy"), ("vcr", "q_ar"), ("cls", "accuracy")):
        assert metric in record[f"valid/{task}"], task
    assert record["score"] is not None
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["test/refcoco"]["total"] == 1 and "accuracy" in test["test/cls"]
    # the run reloads for evaluation with the same per-task settings (text lengths, prompts)
    res = cli("eval", "--test_only", "--load", str(run))
    assert res.code == 0, res.err
    [metrics] = list((run / "eval").glob("*/eval_metrics.json"))
    again = json.loads(metrics.read_text())
    for task in ("vqa", "refcoco", "cls"):
        assert again[f"test/{task}"] == pytest.approx(test[f"test/{task}"], abs=1e-6), task


def test_region_tasks_keep_every_box_when_grids_are_pooled(world):
    import torch

    from vlcli import api
    from vlcli.tasks import get_task

    s = api.load_settings(task="multitask", tasks="vqa,vcr", backbone=str(world["t5"]), feature_type=FEATURE_TYPE,
                          downsample=True, n_boxes=4, data_root=str(world["data"]))
    model = api.build_model(s, tokenizer=api.build_tokenizer(s))
    feats, boxes = torch.randn(1, 36, 2048), torch.rand(1, 36, 4)
    assert model.embed_visual(feats, boxes)[0].shape[1] == 4  # a 6x6 grid pooled to 2x2
    assert model.embed_visual(feats, boxes, reduce=False)[0].shape[1] == 36
    assert get_task("vcr").region_features and get_task("refcoco").region_features
    assert not get_task("vqa").region_features
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "vis_feats": feats, "vis_pos": boxes, "ids": [1]}
    assert get_task("refcoco").model_inputs(batch)["reduce_visual"] is False
    assert "reduce_visual" not in get_task("vqa").model_inputs(batch)
