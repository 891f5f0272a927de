"""RefCOCOg: REFER files, candidate boxes, IoU, targets, batches, restricted prediction, accuracy, CLI run."""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.data.features import FeatureError
from vlcli.errors import VlcliError
from vlcli.metrics.base import MetricsInputError
from vlcli.metrics.refcoco import box_iou, refcoco_accuracy, xywh_to_xyxy
from vlcli.tasks import SubmissionError, TaskDataError, get_task
from vlcli.tasks.base import IGNORE_INDEX
from vlcli.train.scoring import score

FEAT = 16
IMG = 100  # every fixture image is 100 x 100 pixels

# Candidate pixel boxes (x1, y1, x2, y2) per file and image id.
TRAIN_GT = {
    # ref box [10, 10, 50, 50]: box 0 is it (IoU 1), box 1 lies inside it (IoU 960 / 1600 = 0.6), box 2 is disjoint
    "101": [[10, 10, 50, 50], [10, 10, 50, 34], [60, 60, 80, 80]],
    # ref box [0, 0, 20, 20] is box 0; ref 3's tiny box [90, 90, 95, 95] matches no candidate
    "102": [[0, 0, 20, 20], [30, 30, 60, 60], [0, 50, 40, 90], [50, 0, 90, 40], [70, 60, 90, 80]],
}
VAL_DETECTED = {"202": [[21, 21, 49, 51], [0, 0, 10, 10], [60, 60, 90, 90], [20, 20, 35, 35]]}
VAL_GT = {"202": [[20, 20, 50, 50], [0, 0, 10, 10]]}
TEST_DETECTED = {"303": [[5, 5, 25, 25], [40, 40, 95, 95]]}
TEST_GT = {"303": [[40, 40, 90, 90], [5, 5, 25, 25], [0, 0, 100, 100]]}


def _feats(image_id: str, n: int, salt: int) -> np.ndarray:
    return np.random.default_rng(int(image_id) * 10 + salt).standard_normal((n, FEAT)).astype(np.float32)


def write_boxes(path: Path, images: dict[str, list[list[float]]], salt: int) -> None:
    """A BUTD-layout h5 as the original's given-box extraction writes it (pixel corners, image size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for image_id, boxes in images.items():
            g = f.create_group(image_id)
            g["features"] = _feats(image_id, len(boxes), salt)
            g["boxes"] = np.asarray(boxes, np.float32)
            g["img_h"], g["img_w"] = IMG, IMG
            g["num_objects"] = len(boxes)


REFS = [
    {"ref_id": 1, "ann_id": 11, "image_id": 101, "split": "train", "category_id": 1, "sent_ids": [1001, 1002],
     "sentences": [{"raw": "The red cube.", "sent": "the red cube", "sent_id": 1001, "tokens": ["the"]},
                   {"raw": "cube on the left", "sent": "cube on the left", "sent_id": 1002, "tokens": ["cube"]}]},
    {"ref_id": 2, "ann_id": 21, "image_id": 102, "split": "train", "category_id": 1, "sent_ids": [1003],
     "sentences": [{"raw": "the small ball", "sent": "the small ball", "sent_id": 1003}]},
    {"ref_id": 3, "ann_id": 29, "image_id": 102, "split": "train", "category_id": 2, "sent_ids": [1004],
     "sentences": [{"raw": "the tiny dot", "sent": "the tiny dot", "sent_id": 1004}]},
    {"ref_id": 4, "ann_id": 31, "image_id": 202, "split": "val", "category_id": 1, "sent_ids": [2001, 2002],
     "sentences": [{"raw": "a blue box", "sent": "a blue box", "sent_id": 2001},
                   {"raw": "the box", "sent": "the box", "sent_id": 2002}]},
    {"ref_id": 5, "ann_id": 41, "image_id": 303, "split": "test", "category_id": 1, "sent_ids": [3001],
     "sentences": [{"raw": "the big sphere", "sent": "the big sphere", "sent_id": 3001}]},
]
ANNOTATIONS = [
    {"id": 11, "image_id": 101, "bbox": [10, 10, 40, 40], "category_id": 1},
    {"id": 21, "image_id": 102, "bbox": [0, 0, 20, 20], "category_id": 1},
    {"id": 29, "image_id": 102, "bbox": [90, 90, 5, 5], "category_id": 2},
    {"id": 31, "image_id": 202, "bbox": [20, 20, 30, 30], "category_id": 1},
    {"id": 41, "image_id": 303, "bbox": [40, 40, 50, 50], "category_id": 1},
]


def make_refcoco_root(root: Path) -> Path:
    """``RefCOCO/refcocog`` in the original layout: refs(umd).p, instances.json and the five box files."""
    base = root / "RefCOCO" / "refcocog"
    base.mkdir(parents=True, exist_ok=True)
    (base / "refs(umd).p").write_bytes(pickle.dumps(REFS, protocol=2))
    (base / "instances.json").write_text(json.dumps({"images": [], "annotations": ANNOTATIONS, "categories": []}))
    feats = base / "features"
    write_boxes(feats / "train_boxes_GT.h5", TRAIN_GT, 0)
    write_boxes(feats / "val_boxes_mattnet.h5", VAL_DETECTED, 1)
    write_boxes(feats / "val_boxes_GT.h5", VAL_GT, 2)
    write_boxes(feats / "test_boxes_mattnet.h5", TEST_DETECTED, 3)
    write_boxes(feats / "test_boxes_GT.h5", TEST_GT, 4)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_refcoco_root(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("backbones")
    return {fam: make_backbone_dir(base / fam, fam) for fam in ("t5", "bart")}


def settings_for(backbone: Path, data_root: Path, **kw):
    return api.load_settings(task="refcoco", backbone=str(backbone), feat_dim=FEAT, data_root=str(data_root), **kw)


@pytest.fixture(scope="module", params=["t5", "bart"])
def family(request, backbones, root):
    s = settings_for(backbones[request.param], root)
    tok = api.build_tokenizer(s)
    torch.manual_seed(0)
    return s, tok, api.build_model(s, tokenizer=tok).eval()


@pytest.fixture(scope="module")
def t5(backbones, root):
    s = settings_for(backbones["t5"], root)
    tok = api.build_tokenizer(s)
    torch.manual_seed(0)
    return s, tok, api.build_model(s, tokenizer=tok).eval()


def dataset(settings, tok, split: str, train: bool, **kw):
    task = get_task("refcoco")
    return task.build_dataset(settings, split, tok, task.open_store(settings, split, train=train), train=train, **kw)


# ----------------------------------------------------------------------------------------- IoU


def test_iou_on_hand_computed_boxes():
    ref = [0, 0, 10, 10]
    cases = {
        "identical": ([0, 0, 10, 10], 1.0),
        "disjoint": ([20, 20, 30, 30], 0.0),
        "touching edge": ([10, 0, 20, 10], 0.0),
        "touching corner": ([10, 10, 20, 20], 0.0),
        "contained": ([2, 2, 7, 7], 25 / 100),
        "containing": ([-5, -5, 15, 15], 100 / 400),
        "partial": ([5, 5, 15, 15], 25 / 175),
        "half": ([0, 0, 10, 5], 0.5),
    }
    got = box_iou([box for box, _ in cases.values()], ref)
    for (name, (_, want)), value in zip(cases.items(), got, strict=True):
        assert value == pytest.approx(want, abs=1e-12), name
    assert box_iou([[3, 3, 3, 3]], [3, 3, 3, 3])[0] == 0.0  # no area, no union: 0, not NaN
    # continuous convention: x2 = x + w (no -1), area = w * h (no +1)
    assert xywh_to_xyxy([10, 20, 30, 40]) == [10.0, 20.0, 40.0, 60.0]
    assert box_iou([xywh_to_xyxy([10, 10, 40, 40])], [10, 10, 50, 34])[0] == pytest.approx(0.6)


def test_accuracy_on_hand_made_predictions(t5):
    s, _, _ = t5
    refs = {1: {"box": [0, 0, 10, 10]}, 2: {"box": [10, 10, 50, 50]}, 3: {"box": [0, 0, 10, 10]},
            4: {"box": [0, 0, 10, 10]}}
    preds = {1: {"box": [0, 0, 10, 10], "box_index": 0},  # IoU 1
             2: {"box": [10, 10, 50, 34]},  # IoU 0.6
             3: [0, 0, 10, 5],  # IoU 0.5 exactly: correct (>=)
             4: {"box": [5, 5, 15, 15]}}  # IoU 1/7
    assert refcoco_accuracy(preds, refs) == {"accuracy": 75.0, "correct": 3, "total": 4}
    assert score("refcoco", preds, refs, s) == {"accuracy": 75.0, "correct": 3, "total": 4}
    assert get_task("refcoco").primary_metric == "accuracy"
    with pytest.raises(MetricsInputError, match="have no prediction: 4"):
        refcoco_accuracy({k: v for k, v in preds.items() if k != 4}, refs)
    with pytest.raises(MetricsInputError, match="is not a box"):
        refcoco_accuracy({**preds, 4: {"box": [1, 2]}}, refs)


# ------------------------------------------------------------------------------------ examples


def test_examples_ids_text_splits_and_references(t5, backbones, root):
    s, tok, _ = t5
    task = get_task("refcoco")
    assert task.splits == {"train": "train", "valid": "val", "test": "test", "submit": "test"}
    train = dataset(s, tok, "train", True)
    assert train.ids == [1001, 1002, 1003, 1004]
    assert [e.image_ids for e in train.examples] == [("101",), ("101",), ("102",), ("102",)]
    assert train.examples[0].text == "visual grounding: The red cube."
    assert train.references[1001] == {"box": [10.0, 10.0, 50.0, 50.0], "ref_id": 1, "image_id": 101}
    assert dataset(s, tok, "val", False).ids == [2001, 2002]
    assert dataset(s, tok, "test", False).ids == [3001]
    assert dataset(s, tok, "train,val", False).ids == [1001, 1002, 1003, 1004, 2001, 2002]
    # the prefix is hard-coded (as the original): --prompt / --post_prompt do not change it
    odd = settings_for(backbones["t5"], root, prompt="vqa: ", post_prompt=" ?")
    item = dataset(odd, tok, "val", False)[0]
    assert item["input_ids"] == tok.encode("visual grounding: a blue box", 30)
    # max_text_length: 30 by default (spec §7), an explicit value wins
    short = settings_for(backbones["t5"], root, max_text_length=5)
    assert len(dataset(short, tok, "val", False)[0]["input_ids"]) == 5
    # train_topk / valid_topk through the base class (the original crashed on them)
    topk = settings_for(backbones["t5"], root, train_topk=2, valid_topk=1)
    assert dataset(topk, tok, "train", True).ids == [1001, 1002]
    val = dataset(topk, tok, "val", False)
    assert val.ids == [2001] and set(val.references) == {2001}


def test_candidate_files_refcoco_gt_switch_and_n_boxes(t5, backbones, root):
    s, tok, _ = t5
    task = get_task("refcoco")
    assert task.open_store(s, "train").path.name == "train_boxes_GT.h5"
    assert task.open_store(s, "val").path.name == "val_boxes_mattnet.h5"
    item = dataset(s, tok, "val", False)[0]
    np.testing.assert_array_equal(item["pixel_boxes"], VAL_DETECTED["202"])
    np.testing.assert_allclose(item["boxes"], np.asarray(VAL_DETECTED["202"]) / IMG, rtol=1e-6)
    np.testing.assert_array_equal(item["feats"], _feats("202", 4, 1))
    gt = settings_for(backbones["t5"], root, RefCOCO_GT=True)
    assert task.open_store(gt, "test").path.name == "test_boxes_GT.h5"
    assert task.open_store(gt, "train").path.name == "train_boxes_GT.h5"
    item = dataset(gt, tok, "val", False)[0]
    np.testing.assert_array_equal(item["pixel_boxes"], VAL_GT["202"])
    np.testing.assert_allclose(item["ious"], [1.0, 0.0])
    # the first n_boxes candidates; images with fewer keep all of theirs
    two = settings_for(backbones["t5"], root, n_boxes=2)
    ds = dataset(two, tok, "train", True)
    assert [len(ds[i]["feats"]) for i in range(4)] == [2, 2, 2, 2]
    np.testing.assert_array_equal(ds[2]["feats"], _feats("102", 5, 0)[:2])
    two_gt = settings_for(backbones["t5"], root, n_boxes=2, RefCOCO_GT=True)
    np.testing.assert_array_equal(dataset(two_gt, tok, "test", False)[0]["pixel_boxes"], TEST_GT["303"][:2])
    assert len(dataset(s, tok, "train", True)[2]["feats"]) == 5
    with pytest.raises(VlcliError, match=r"--n_boxes 101: .*use 1\.\.100"):
        dataset(settings_for(backbones["t5"], root, n_boxes=101), tok, "val", False)


# ------------------------------------------------------------------------------------- targets


def test_targets_drawn_in_proportion_to_iou_among_correct_boxes(t5):
    s, tok, _ = t5
    ds = dataset(s, tok, "train", True, rng=np.random.default_rng(3))
    draws = [ds[0]["target"] for _ in range(600)]
    freq = Counter(draws)
    assert set(freq) == {0, 1}  # box 2 (IoU 0) never, box 1 (IoU 0.6) as well as box 0 (IoU 1)
    assert freq[0] / 600 == pytest.approx(1 / 1.6, abs=0.06)
    item = ds[0]
    assert item["target_ids"] == tok.encode(f"<vis_extra_id_{item['target']}>")
    np.testing.assert_allclose(item["ious"], [1.0, 0.6, 0.0])
    # many more draws straight from the sampler: frequencies ∝ IoU
    many = Counter(ds.draw_target(np.array([1.0, 0.6, 0.0, 0.49])) for _ in range(8000))
    assert set(many) == {0, 1} and many[1] / 8000 == pytest.approx(0.6 / 1.6, abs=0.02)
    # no candidate with IoU >= 0.5: no target, weight 0
    none = ds[3]
    assert none["target"] is None and none["weight"] == 0.0 and max(none["ious"]) < 0.5
    # evaluation items have no target at all
    assert dataset(s, tok, "val", False)[0]["target_ids"] is None


def test_shuffle_boxes_permutes_candidates_and_the_target_follows_its_box(t5, backbones, root):
    s = settings_for(backbones["t5"], root, shuffle_boxes=True)
    _, tok, _ = t5
    ds = dataset(s, tok, "train", True, rng=np.random.default_rng(0))
    ref_box = [0.0, 0.0, 20.0, 20.0]
    original = _feats("102", 5, 0)
    orders = set()
    for _ in range(30):
        item = ds[2]
        k = item["target"]
        orders.add(tuple(item["pixel_boxes"][:, 0]))
        assert item["pixel_boxes"][k].tolist() == ref_box and item["ious"][k] == 1.0
        np.testing.assert_array_equal(item["feats"][k], original[0])  # features move with their box
        np.testing.assert_allclose(item["boxes"][k], np.asarray(ref_box) / IMG)
        assert item["target_ids"] == tok.encode(f"<vis_extra_id_{k}>")
    assert len(orders) > 5
    # evaluation never shuffles
    val = dataset(s, tok, "val", False)
    np.testing.assert_array_equal(val[0]["pixel_boxes"], VAL_DETECTED["202"])


# ------------------------------------------------------------------------------------- batches


def test_collate_masks_padding_and_ignores_rows_without_target(family):
    s, tok, _ = family
    ds = dataset(s, tok, "train", True, rng=np.random.default_rng(0))
    items = [ds[0], ds[3]]  # 3 boxes with a target, 5 boxes without
    batch = ds.collate(items)
    assert batch["vis_feats"].shape == (2, 5, FEAT) and batch["vis_pos"].shape == (2, 5, 4)
    assert batch["vis_attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert torch.count_nonzero(batch["vis_feats"][0, 3:]) == 0
    assert batch["ious"][0].tolist() == pytest.approx([1.0, 0.6, 0.0, 0.0, 0.0])
    first = items[0]["target_ids"]
    assert batch["labels"][0, : len(first)].tolist() == first
    assert (batch["labels"][1] == IGNORE_INDEX).all()
    assert batch["loss_weights"].tolist() == [2.0, 0.0]
    assert batch["box_token_ids"][1].tolist() == [tok.vis_token_id(k) for k in range(5)]
    # same box counts: the mask is still there (all ones)
    same = ds.collate([ds[2], ds[3]])
    assert same["vis_attention_mask"].tolist() == [[1] * 5, [1] * 5]
    assert set(get_task("refcoco").model_inputs(batch)) >= {"vis_attention_mask", "labels", "loss_weights"}


def test_loss_is_the_mean_over_examples_with_a_target(family):
    s, tok, model = family
    task = get_task("refcoco")
    ds = dataset(s, tok, "train", True, rng=np.random.default_rng(1))
    batch = ds.collate([ds[0], ds[3], ds[2]])  # the middle row has no correct candidate
    with torch.no_grad():
        out = model(**task.model_inputs(batch))
    per_example = out.example_loss
    assert per_example[1] == 0.0
    assert out.loss.item() == pytest.approx(((per_example[0] + per_example[2]) / 2).item(), rel=1e-5)
    assert out.loss.item() != pytest.approx(per_example.mean().item(), rel=1e-3)  # not the plain batch mean
    nothing = ds.collate([ds[3]])
    with torch.no_grad():
        assert model(**task.model_inputs(nothing)).loss.item() == 0.0


# ---------------------------------------------------------------------------------- prediction


@pytest.fixture
def forced_logits(family):
    """Add fixed amounts to chosen vocabulary columns of the model's output logits."""
    _, _, model = family
    bonus: dict[int, float] = {}

    def hook(module, inputs, output):
        out = output.clone()
        for token, value in bonus.items():
            out[..., token] += value
        return out

    handle = model.lm.get_output_embeddings().register_forward_hook(hook)
    yield bonus
    handle.remove()


def test_prediction_is_restricted_to_the_real_boxes_visual_tokens(family, forced_logits):
    s, tok, model = family
    task = get_task("refcoco")
    ds = dataset(s, tok, "train", False)
    batch = ds.collate([ds[0], ds[2]])  # 3 and 5 boxes
    word = tok.encode("red")[-2]  # an ordinary word piece
    forced_logits.update({word: 1e4, tok.vis_token_id(4): 1e3, tok.vis_token_id(1): 50.0})
    preds = task.predict(model, batch, s, tok)
    # row 0: the word and the padded box 4 would win an argmax over the vocabulary; box 1 is its best real box
    assert preds[1001]["box_index"] == 1 and preds[1001]["box"] == [10.0, 10.0, 50.0, 34.0]
    assert preds[1003]["box_index"] == 4 and preds[1003]["box"] == [70.0, 60.0, 90.0, 80.0]
    assert preds[1001]["ref_id"] == 1 and preds[1003]["image_id"] == 102
    json.dumps(preds)  # JSON-ready
    # the same restriction in the teacher-forced training accuracy: box 1 of row 0 has IoU 0.6 -> correct;
    # row 1 (ref 2, box 0 is right) picks box 4 -> wrong
    train = dataset(s, tok, "train", True, rng=np.random.default_rng(0))
    tbatch = train.collate([train[0], train[2]])
    with torch.no_grad():
        logits = model(**task.model_inputs(tbatch)).logits
    assert task.train_accuracy(logits, tbatch) == (1, 2)


def test_train_accuracy_counts_rows_without_a_target_as_wrong(t5):
    s, tok, _ = t5
    task = get_task("refcoco")
    ds = dataset(s, tok, "train", True, rng=np.random.default_rng(0))
    batch = ds.collate([ds[0], ds[3]])
    logits = torch.zeros(2, batch["labels"].shape[1], len(tok))
    logits[0, 0, tok.vis_token_id(0)] = 5.0  # row 0 picks box 0 (IoU 1)
    logits[1, 0, tok.vis_token_id(0)] = 5.0  # row 1 picks box 0 of its image: IoU 0 with the tiny ref box
    assert task.train_accuracy(logits, batch) == (1, 2)
    logits[0, 0, tok.vis_token_id(2)] = 9.0  # now box 2 (IoU 0): wrong
    assert task.train_accuracy(logits, batch) == (0, 2)
    logits[0, 0, tok.vis_token_id(4)] = 99.0  # a padded box of row 0 is never chosen
    assert task.train_accuracy(logits, batch) == (0, 2)


# ---------------------------------------------------------------------------------- submission


def test_submission_rows_and_coverage(t5, tmp_path):
    s, tok, model = t5
    task = get_task("refcoco")
    ds = dataset(s, tok, "test", False)
    preds = task.predict(model, ds.collate([ds[0]]), s, tok)
    path = tmp_path / "refcoco_predictions.json"
    assert task.write_submission(preds, ds, path) == 1
    rows = json.loads(path.read_text())
    assert rows == [{"sent_id": 3001, "ref_id": 5, "image_id": 303, "box": preds[3001]["box"]}]
    assert rows[0]["box"] in TEST_DETECTED["303"]
    with pytest.raises(SubmissionError, match="1 missing"):
        task.write_submission({}, ds, tmp_path / "none.json")
    with pytest.raises(SubmissionError, match="lacks box, ref_id or image_id"):
        task.write_submission({3001: [0, 0, 1, 1]}, ds, tmp_path / "bare.json")
    assert not (tmp_path / "none.json").exists() and not (tmp_path / "bare.json").exists()


# --------------------------------------------------------------------------------------- errors


def test_missing_and_garbled_files_name_the_file(t5, backbones, tmp_path):
    _, tok, _ = t5
    root = make_refcoco_root(tmp_path / "data")
    base = root / "RefCOCO" / "refcocog"
    s = settings_for(backbones["t5"], root)

    def build(split="train"):
        return dataset(s, tok, split, False)

    with pytest.raises(TaskDataError, match=r"no refs of split 'dev'.*train, val and test"):
        build("dev")
    (base / "instances.json").write_text('{"annotations": [')
    with pytest.raises(TaskDataError, match=r"instances\.json: cannot read RefCOCOg instances file"):
        build()
    (base / "instances.json").write_text(json.dumps({"annotations": ANNOTATIONS[1:]}))
    with pytest.raises(TaskDataError, match=r"ref 1 refers to annotation 11, which instances\.json lacks"):
        build()
    (base / "instances.json").write_text(json.dumps({"annotations": ANNOTATIONS}))
    refs = base / "refs(umd).p"
    refs.write_bytes(b"\x80\x02garbage")
    with pytest.raises(TaskDataError, match=r"refs\(umd\)\.p: cannot read the RefCOCOg refs pickle"):
        build()
    refs.write_bytes(pickle.dumps([{"ref_id": 1}]))
    with pytest.raises(TaskDataError, match=r"refs\(umd\)\.p: entry 0 has no 'ann_id'"):
        build()
    refs.write_bytes(pickle.dumps([{**REFS[0], "ann_id": [11]}]))
    with pytest.raises(TaskDataError, match=r"refs\(umd\)\.p: ref 0: 'ann_id' must be an integer or string id"):
        build()
    refs.write_bytes(pickle.dumps([{**REFS[0], "sent_ids": [{"x": 1}, 1002]}]))
    with pytest.raises(TaskDataError, match=r"ref 0, sentence 0: 'sent_id' must be an integer or string id"):
        build()
    refs.unlink()
    with pytest.raises(TaskDataError, match=r"refs\(umd\)\.p: RefCOCOg refs file not found"):
        build()
    (base / "features" / "val_boxes_mattnet.h5").unlink()
    refs.write_bytes(pickle.dumps(REFS))
    with pytest.raises(FeatureError, match=r"val_boxes_mattnet\.h5: feature file not found"):
        build("val")[0]


class _Exploit:
    """A pickle that would run a shell command when loaded by a plain unpickler."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_refs_pickle_cannot_run_code(t5, backbones, tmp_path):
    _, tok, _ = t5
    root = make_refcoco_root(tmp_path / "data")
    marker = tmp_path / "pwned"
    (root / "RefCOCO/refcocog/refs(umd).p").write_bytes(pickle.dumps([_Exploit(marker)]))
    s = settings_for(backbones["t5"], root)
    with pytest.raises(TaskDataError, match=r"refs\(umd\)\.p: .*(posix|os|nt)\.system; only plain"):
        dataset(s, tok, "train", False)
    assert not marker.exists()


# ---------------------------------------------------------------------------------- end to end


def test_finetune_refcoco_from_the_cli(cli, backbones, root, tmp_path):
    run = tmp_path / "run"
    res = cli("finetune", "refcoco", "--backbone", str(backbones["t5"]), "--data_root", str(root),
              "--feat_dim", str(FEAT), "--batch_size", "2", "--epochs", "1", "--num_workers", "0",
              "--log_train_accuracy", "--submit", "--output", str(run))
    assert res.code == 0, res.err
    assert {"BEST.safetensors", "LAST.safetensors", "metrics.jsonl", "test_metrics.json",
            "refcoco_predictions.json"} <= {p.name for p in run.iterdir()}
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    valid = record["valid/refcoco"]
    assert valid["total"] == 2 and 0.0 <= valid["accuracy"] <= 100.0
    assert valid["accuracy"] == pytest.approx(100.0 * valid["correct"] / 2)
    assert 0.0 <= record["train_accuracy"] <= 100.0
    test = json.loads((run / "test_metrics.json").read_text())["test/refcoco"]
    assert test["total"] == 1
    rows = json.loads((run / "refcoco_predictions.json").read_text())
    assert [r["sent_id"] for r in rows] == [3001] and rows[0]["box"] in TEST_DETECTED["303"]
