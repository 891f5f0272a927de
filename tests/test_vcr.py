"""VCR: annotations in the original jsonl format, the 36-region merge, inputs/targets, loss, prediction,
Q→A / QA→R / Q→AR, the 21-column leaderboard CSV and one finetune + submit run through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.data.features import FeatureError
from vlcli.metrics.base import MetricsInputError
from vlcli.metrics.vcr import vcr_metrics
from vlcli.tasks import SubmissionError, TaskDataError, get_task
from vlcli.tasks.vcr import CSV_HEADER, VCRStore, answer_prefix, first_token_ids, flatten

FEAT = 16
V = "<vis_extra_id_{}>".format

# Objects of each image in the GT file (the names of the `captions` dataset); detections fill up to 36.
GT_NAMES = {
    "train-0": ["person", "dog"],
    "train-1": [f"obj{k}" for k in range(40)],  # more than 36 GT boxes: no detection is used
    "val-0": [],  # no GT box: 36 detections
    "val-1": ["person", "person", "car"],
    "test-0": ["person", "cup"],
    "test-1": ["bottle"],
}
SIZE = {
    "train-0": (480, 640),
    "train-1": (300, 200),
    "val-0": (100, 100),
    "val-1": (200, 400),
    "test-0": (360, 480),
    "test-1": (240, 320),
}  # (img_h, img_w)

QUESTION = ["What", "is", [0], "doing", "?"]
ANSWERS = [
    [[0], "is", "walking", [1], "."],
    ["He", "is", "sleeping", ",", "obviously", "!"],
    [[0, 1], "are", "friends", "."],
    ["Nothing", "."],
]
RATIONALES = [
    ["The", "leash", "is", "in", [0], "'s", "hand", "."],
    [[1], "is", "running", "."],
    ["It", "is", "night", "."],
    ["Because", "of", [0, 1, 0], "."],
]


def record(annot_id: str, img_id: str, labels: tuple[int, int] | None, **extra) -> dict:
    rec = {
        "movie": "1054_Harry_Potter",
        "objects": GT_NAMES[img_id],
        "img_fn": f"lsmdc/{img_id}.jpg",
        "metadata_fn": f"lsmdc/{img_id}.json",
        "question_number": 0,
        "annot_id": annot_id,
        "img_id": img_id,
        "question": QUESTION,
        "answer_choices": ANSWERS,
        "rationale_choices": RATIONALES,
    }
    if labels is not None:
        rec["answer_label"], rec["rationale_label"] = labels
    rec.update(extra)
    return rec


RECORDS = {
    "train": [
        record("train-0", "train-0", (0, 0)),
        record("train-1", "train-1", (2, 1)),
        record("train-2", "train-0", (3, 2)),
    ],
    "val": [
        record("val-0", "val-1", (2, 3)),
        record(
            "val-1",
            "val-0",
            (1, 0),
            question=["Is", "it", "late", "?"],
            answer_choices=[["yes"], ["no"], ["maybe"], ["never"]],
            rationale_choices=[["dark"], ["light"], ["moon"], ["sun"]],
        ),
    ],
    "test": [
        record("test-0", "test-0", None),
        record(
            "test-1",
            "test-1",
            None,
            question=["Where", "is", [0], "?"],
            answer_choices=[["here"], ["there"], ["home"], ["away"]],
            rationale_choices=[RATIONALES[0], ["a"], ["b"], ["c"]],
        ),
    ],
}
SPLIT_IMAGES = {"train": ["train-0", "train-1"], "val": ["val-0", "val-1"], "test": ["test-0", "test-1"]}


def gt_feats(img_id: str) -> np.ndarray:
    seed = sum(map(ord, img_id))
    return np.random.default_rng(seed).standard_normal((len(GT_NAMES[img_id]), FEAT)).astype(np.float32)


def det_feats(img_id: str, n: int = 36) -> np.ndarray:
    return np.random.default_rng(sum(map(ord, img_id)) + 1000).standard_normal((n, FEAT)).astype(np.float32)


def pixel_boxes(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
    return np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1).astype(
        np.float32
    )


def write_features(root: Path, split: str, n_detected: int = 36) -> None:
    """``{split}_boxes_GT.h5`` (with ``captions``) and ``{split}_boxes36.h5`` keyed by img_id, as released."""
    folder = root / "VCR" / "features"
    folder.mkdir(parents=True, exist_ok=True)
    with (
        h5py.File(folder / f"{split}_boxes_GT.h5", "w") as gt,
        h5py.File(folder / f"{split}_boxes36.h5", "w") as det,
    ):
        for img_id in SPLIT_IMAGES[split]:
            h, w = SIZE[img_id]
            n = len(GT_NAMES[img_id])
            g = gt.create_group(img_id)
            g["features"], g["boxes"] = gt_feats(img_id), pixel_boxes(n, h, w, 1)
            g["img_h"], g["img_w"], g["num_objects"] = h, w, n
            g.create_dataset(
                "captions", data=np.array(GT_NAMES[img_id], dtype=object), dtype=h5py.string_dtype()
            )
            d = det.create_group(img_id)
            d["features"], d["boxes"] = det_feats(img_id, n_detected), pixel_boxes(n_detected, h, w, 2)
            d["img_h"], d["img_w"] = h, w
            d["obj_id"] = np.arange(n_detected)


def write_annotations(root: Path, split: str, records: list[dict]) -> Path:
    path = root / "VCR" / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    for split, records in RECORDS.items():
        write_annotations(root, split, records)
        write_features(root, split)
    return root


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {fam: make_backbone_dir(root / fam, fam) for fam in ("t5", "bart")}


def settings_for(backbone: Path, root: Path, **kw):
    return api.load_settings(task="vcr", backbone=str(backbone), feat_dim=FEAT, data_root=str(root), **kw)


# The tiny BART has 128 positions, which VLModel looks up for the visual tokens too: 80 text + 36 regions fit.
TEXT_LENGTH = 80


@pytest.fixture(scope="module", params=["t5", "bart"])
def family(request, backbones, data_root):
    s = settings_for(backbones[request.param], data_root, max_text_length=TEXT_LENGTH)
    tok = api.build_tokenizer(s)
    model = api.build_model(s, tokenizer=tok).eval()
    return s, tok, model


def dataset(s, tok, split: str, train: bool):
    task = get_task("vcr")
    return task.build_dataset(s, split, tok, task.open_store(s, split, train=train), train=train)


# ------------------------------------------------------------------------------------------- text


def test_flatten_replaces_object_lists_and_tightens_punctuation():
    names = ["person", "dog"]
    assert flatten(QUESTION, names) == f"What is person {V(0)} doing?"
    assert flatten(ANSWERS[0], names) == f"person {V(0)} is walking dog {V(1)}."
    assert flatten(ANSWERS[1], names) == "He is sleeping, obviously!"
    assert flatten(ANSWERS[2], names) == f"person {V(0)} and dog {V(1)} are friends."
    assert flatten(RATIONALES[0], names) == f"The leash is in person {V(0)}'s hand."
    assert flatten(RATIONALES[3], names) == f"Because of person {V(0)} and dog {V(1)} and person {V(0)}."
    assert flatten(["Is", "it", "  ", "ok", "?", "?"], names) == "Is it ok??"


def test_train_inputs_and_true_false_targets(family):
    s, tok, model = family
    ds = dataset(s, tok, "train", train=True)
    assert ds.ids == ["train-0", "train-1", "train-2"]
    assert ds.references["train-1"] == {"answer_label": 2, "rationale_label": 1}
    item = ds[0]  # answer 0, rationale 0
    q = f"What is person {V(0)} doing?"
    a = [
        f"person {V(0)} is walking dog {V(1)}.",
        "He is sleeping, obviously!",
        f"person {V(0)} and dog {V(1)} are friends.",
        "Nothing.",
    ]
    r = [
        f"The leash is in person {V(0)}'s hand.",
        f"dog {V(1)} is running.",
        "It is night.",
        f"Because of person {V(0)} and dog {V(1)} and person {V(0)}.",
    ]
    texts = [f"vcr qa question: {q} answer: {x}" for x in a]
    texts += [f"vcr qar question: {q} answer: {a[0]} rationale: {x}" for x in r]
    assert item["input_ids"] == [tok.encode(t, TEXT_LENGTH) for t in texts]
    assert tok.vis_token_id(1) in item["input_ids"][0]  # the sentinel is one token
    true_id, false_id = first_token_ids(tok, ("true", "false"))
    answer_tok = [row[-1] for row in item["labels"]]
    assert answer_tok == [true_id, false_id, false_id, false_id, true_id, false_id, false_id, false_id]
    prefix = model.answer_prefix()
    assert answer_prefix(tok) == prefix  # the dataset's decoder input is the one prediction uses
    assert all(row == prefix for row in item["decoder_input_ids"])
    assert all(row[:-1] == [-100] * (len(prefix) - 1) for row in item["labels"])  # BART: no loss on <s>
    # the QA→R inputs pair the gold answer (here answer 3) with each rationale
    third = ds[2]
    assert third["input_ids"][4] == tok.encode(
        f"vcr qar question: {q} answer: Nothing. rationale: {r[0]}", TEXT_LENGTH
    )
    assert [row[-1] for row in third["labels"]][3] == true_id and [row[-1] for row in third["labels"]][
        6
    ] == true_id


def test_inputs_are_truncated_to_the_task_length(backbones, data_root):
    assert (
        get_task("vcr").input_length(settings_for(backbones["t5"], data_root)) == 100
    )  # derive's VCR length
    s = settings_for(backbones["t5"], data_root, max_text_length=12)
    tok = api.build_tokenizer(s)
    item = dataset(s, tok, "train", train=True)[0]
    assert max(len(x) for x in item["input_ids"]) == 12
    assert all(x[-1] == tok.eos_token_id for x in item["input_ids"])


def test_test_split_builds_every_answers_rationale_inputs(family):
    s, tok, _ = family
    ds = dataset(s, tok, "test", train=False)
    assert ds.references == {}
    item = ds[1]  # test-1: one GT object, a bottle
    assert len(item["input_ids"]) == 20 and item["labels"] is None
    q = f"Where is bottle {V(0)}?"
    r0 = f"The leash is in bottle {V(0)}'s hand."  # object 0 of test-1 is the bottle
    assert item["input_ids"][2] == tok.encode(f"vcr qa question: {q} answer: home", TEXT_LENGTH)
    # input 4 + 4i + j: answer i with rationale j
    assert item["input_ids"][4 + 4 * 2 + 0] == tok.encode(
        f"vcr qar question: {q} answer: home rationale: {r0}", TEXT_LENGTH
    )
    # a labelled validation question gets only the gold answer's 4 QA→R inputs
    assert len(dataset(s, tok, "val", train=False)[0]["input_ids"]) == 8


def test_the_submission_split_gets_16_rationale_inputs_even_with_labels(backbones, data_root, tmp_path):
    root = tmp_path / "datasets"
    shutil.copytree(data_root, root)
    write_annotations(root, "test", [record("test-0", "test-0", (1, 2))])
    s = settings_for(backbones["t5"], root)
    tok = api.build_tokenizer(s)
    ds = dataset(s, tok, "test", train=False)
    assert len(ds[0]["input_ids"]) == 20 and ds.references == {
        "test-0": {"answer_label": 1, "rationale_label": 2}
    }


def test_topk_and_the_files_a_split_reads(backbones, data_root):
    s = settings_for(backbones["t5"], data_root, train_topk=2, valid_topk=1)
    tok = api.build_tokenizer(s)
    assert dataset(s, tok, "train", train=True).ids == ["train-0", "train-1"]  # the original crashed here
    val = dataset(s, tok, "val", train=False)
    assert val.ids == ["val-0"] and list(val.references) == ["val-0"]
    paths = get_task("vcr").required_paths(s, "train,val")
    assert [(p.name, p.path.relative_to(data_root).as_posix(), p.kind) for p in paths] == [
        ("vcr.annotations", "VCR/train.jsonl", "annotation"),
        ("vcr.boxes.gt", "VCR/features/train_boxes_GT.h5", "butd"),
        ("vcr.boxes.detected", "VCR/features/train_boxes36.h5", "butd"),
        ("vcr.annotations", "VCR/val.jsonl", "annotation"),
        ("vcr.boxes.gt", "VCR/features/val_boxes_GT.h5", "butd"),
        ("vcr.boxes.detected", "VCR/features/val_boxes36.h5", "butd"),
    ]


# ---------------------------------------------------------------------------------------- regions


def test_36_regions_gt_first_then_detections(backbones, data_root):
    s = settings_for(backbones["t5"], data_root)
    store = get_task("vcr").open_store(s, "train,val")
    assert isinstance(store, VCRStore) and store.feat_dim == FEAT
    # 2 GT boxes + 34 detections
    feats, boxes, names = store.visual("train-0")
    assert feats.shape == (36, FEAT) and boxes.shape == (36, 4) and names == ["person", "dog"]
    np.testing.assert_array_equal(feats[:2], gt_feats("train-0"))
    np.testing.assert_array_equal(feats[2:], det_feats("train-0")[:34])
    h, w = SIZE["train-0"]
    scale = np.array([w, h, w, h], np.float32)
    np.testing.assert_allclose(boxes[:2], pixel_boxes(2, h, w, 1) / scale, rtol=1e-6)
    np.testing.assert_allclose(boxes[2:], pixel_boxes(36, h, w, 2)[:34] / scale, rtol=1e-6)
    assert boxes.min() >= 0 and boxes.max() <= 1
    # 40 GT boxes: the first 36, no detection; every name stays available for the text
    feats, _, names = store.visual("train-1")
    np.testing.assert_array_equal(feats, gt_feats("train-1")[:36])
    assert len(names) == 40
    # no GT box: 36 detections (this image is read from the second split's files)
    feats, _, names = store.visual("val-0")
    np.testing.assert_array_equal(feats, det_feats("val-0"))
    assert names == []
    assert store.get("val-1")[0].shape == (36, FEAT) and "val-1" in store and "nope" not in store


def test_too_few_detections_is_an_error_naming_the_file(backbones, tmp_path):
    write_features(tmp_path, "val", n_detected=20)  # val-1 has 3 GT boxes: 33 detections are needed
    s = settings_for(backbones["t5"], tmp_path)
    store = get_task("vcr").open_store(s, "val")
    with pytest.raises(
        FeatureError, match=r"val_boxes36\.h5: image 'val-1' has 20 detected boxes but 33 are needed"
    ):
        store.get("val-1")
    with pytest.raises(FeatureError, match=r"image 'val-0' has 20 detected boxes but 36 are needed"):
        store.get("val-0")


def test_missing_feature_file_names_it(backbones, data_root, tmp_path):
    root = tmp_path / "datasets"
    shutil.copytree(data_root, root)
    (root / "VCR" / "features" / "val_boxes_GT.h5").unlink()
    s = settings_for(backbones["t5"], root)
    store = get_task("vcr").open_store(s, "val")
    with pytest.raises(FeatureError, match=r"val_boxes_GT\.h5: feature file not found.*vcr\.boxes\.gt"):
        store.get("val-0")


# ------------------------------------------------------------------------------------ batches, loss


def test_collate_flattens_the_inputs_and_keeps_one_visual_copy_per_question(family):
    s, tok, _ = family
    task = get_task("vcr")
    train = dataset(s, tok, "train", train=True)
    batch = train.collate([train[0], train[1]])
    assert batch["ids"] == ["train-0", "train-1"]
    assert batch["input_ids"].shape[0] == 16 and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["vis_feats"].shape == (2, 36, FEAT) and batch["vis_pos"].shape == (2, 36, 4)
    width = len(answer_prefix(tok))
    assert batch["labels"].shape == (16, width) and batch["decoder_input_ids"].shape == (16, width)
    assert batch["n_sequences"].tolist() == [8, 8] and batch["answer_label"].tolist() == [0, 2]
    assert torch.equal(batch["loss_weights"], torch.full((16,), 2.0))
    inputs = task.model_inputs(batch)
    assert inputs["vis_feats"].shape == (16, 36, FEAT)
    assert torch.equal(inputs["vis_feats"][7], batch["vis_feats"][0])
    assert torch.equal(inputs["vis_feats"][8], batch["vis_feats"][1])
    assert torch.equal(inputs["vis_pos"][15], batch["vis_pos"][1])
    test = dataset(s, tok, "test", train=False)
    batch = test.collate([test[0], test[1]])
    assert batch["input_ids"].shape[0] == 40 and "labels" not in batch
    assert task.model_inputs(batch)["vis_feats"].shape == (40, 36, FEAT)


def test_loss_is_the_qa_loss_plus_the_qar_loss(family):
    s, tok, model = family
    task = get_task("vcr")
    train = dataset(s, tok, "train", train=True)
    batch = train.collate([train[0], train[1], train[2]])
    inputs = task.model_inputs(batch)
    with torch.no_grad():
        total = model(**inputs).loss
        parts = []
        for kind in (0, 1):  # QA rows are 0-3 of each question, QA→R rows 4-7
            rows = torch.tensor([q * 8 + 4 * kind + k for q in range(3) for k in range(4)])
            parts.append(
                model(
                    inputs["input_ids"][rows],
                    inputs["attention_mask"][rows],
                    inputs["vis_feats"][rows],
                    inputs["vis_pos"][rows],
                    labels=inputs["labels"][rows],
                    task="vcr",
                    decoder_input_ids=inputs["decoder_input_ids"][rows],
                ).loss
            )
    assert total.item() == pytest.approx((parts[0] + parts[1]).item(), rel=1e-5)
    assert parts[0].item() > 0 and parts[1].item() > 0


def test_train_accuracy_counts_questions_with_answer_and_rationale_right():
    task = get_task("vcr")
    vocab, true_id, false_id = 10, 3, 4
    logits = torch.zeros(16, 1, vocab)
    picks = [(1, 2), (0, 3)]  # (answer, rationale) scored highest for questions 0 and 1
    for q, (a, r) in enumerate(picks):
        logits[q * 8 + a, 0, true_id] = 5.0
        logits[q * 8 + 4 + r, 0, true_id] = 5.0
    logits[:, 0, false_id] = 1.0
    batch = {
        "candidate_ids": torch.tensor([true_id, false_id]),
        "answer_label": torch.tensor([1, 0]),
        "rationale_label": torch.tensor([2, 1]),
    }
    assert task.train_accuracy(logits, batch) == (1, 2)


# ------------------------------------------------------------------------------------- prediction


def test_prediction_gives_normalised_probabilities_from_the_first_answer_step(family):
    s, tok, model = family
    task = get_task("vcr")
    test = dataset(s, tok, "test", train=False)
    batch = test.collate([test[0], test[1]])
    preds = task.predict(model, batch, s, tok)
    assert list(preds) == ["test-0", "test-1"]
    for pred in preds.values():
        assert len(pred["answer_probs"]) == 4 and sum(pred["answer_probs"]) == pytest.approx(1.0)
        assert all(0 <= p <= 1 for p in pred["answer_probs"])
        assert len(pred["rationale_probs"]) == 4 and all(
            sum(row) == pytest.approx(1.0) for row in pred["rationale_probs"]
        )
        assert pred["answer"] == int(np.argmax(pred["answer_probs"]))
        assert pred["rationale"] == int(np.argmax(pred["rationale_probs"][pred["answer"]]))
        json.dumps(pred)
    # the same numbers from a direct forward of test-1's inputs for answer 3 (rows 4 + 12 .. 4 + 15)
    inputs = task.model_inputs(batch)
    rows = torch.arange(20 + 16, 20 + 20)
    cand = first_token_ids(tok, ("true", "false"))
    with torch.no_grad():
        logits = model.score_candidates(
            inputs["input_ids"][rows],
            cand,
            inputs["attention_mask"][rows],
            inputs["vis_feats"][rows],
            inputs["vis_pos"][rows],
            task="vcr",
        )
    p = logits.softmax(-1)[:, 0]
    assert preds["test-1"]["rationale_probs"][3] == pytest.approx((p / p.sum()).tolist(), rel=1e-5)
    # a labelled question: 4 rationale probabilities, conditioned on the gold answer
    val = dataset(s, tok, "val", train=False)
    pred = task.predict(model, val.collate([val[0]]), s, tok)["val-0"]
    assert len(pred["rationale_probs"]) == 4 and not isinstance(pred["rationale_probs"][0], list)
    assert sum(pred["rationale_probs"]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- metrics


def test_metrics_on_hand_made_predictions():
    refs = {
        "a": {"answer_label": 0, "rationale_label": 1},
        "b": {"answer_label": 2, "rationale_label": 3},
        "c": {"answer_label": 1, "rationale_label": 0},
        "d": {"answer_label": 3, "rationale_label": 2},
    }
    preds = {
        "a": {"answer_probs": [0.7, 0.1, 0.1, 0.1], "rationale_probs": [0.1, 0.6, 0.2, 0.1]},  # both right
        "b": {
            "answer_probs": [0.4, 0.1, 0.3, 0.2],
            "rationale_probs": [0.1, 0.1, 0.1, 0.7],
        },  # rationale only
        # 4×4: the gold answer's row (1) counts, not the chosen answer's (0)
        "c": {
            "answer_probs": [0.5, 0.2, 0.2, 0.1],
            "rationale_probs": [[0.1, 0.7, 0.1, 0.1], [0.9, 0.0, 0.05, 0.05], [0.25] * 4, [0.25] * 4],
        },
        "d": {"answer": 3, "rationale": 0},  # indices stand in for probabilities
    }
    result = vcr_metrics(preds, refs)
    assert result == {"q_a": 50.0, "qa_r": 75.0, "q_ar": 25.0, "examples": 4}
    assert get_task("vcr").score(preds, refs, None) == {"q_a": 50.0, "qa_r": 75.0, "q_ar": 25.0}
    assert get_task("vcr").primary_metric == "q_ar"
    with pytest.raises(MetricsInputError, match="1 VCR question"):
        vcr_metrics({k: v for k, v in preds.items() if k != "b"}, refs)
    with pytest.raises(MetricsInputError, match="'a'.*answer_probs must be 4 numbers"):
        vcr_metrics({**preds, "a": {"answer_probs": [1, 0], "rationale": 1}}, refs)


# ------------------------------------------------------------------------------------- submission


def test_leaderboard_csv_has_21_columns_of_normalised_probabilities(tmp_path):
    task = get_task("vcr")
    matrix = [[1, 1, 1, 1], [0, 0, 0, 2], [0.2, 0.2, 0.2, 0.4], [3, 1, 0, 0]]
    preds = {
        "test-1": {"answer_probs": [0.25, 0.25, 0.5, 0.0], "rationale_probs": [[0.25] * 4] * 4},
        "test-0": {"answer_probs": [1, 1, 2, 0], "rationale_probs": matrix},
    }
    path = tmp_path / "vcr_test_submit.csv"
    assert task.write_submission(preds, ["test-0", "test-1"], path) == 2
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == CSV_HEADER and len(rows[0]) == 21
    assert rows[0][:6] == [
        "annot_id",
        "answer_0",
        "answer_1",
        "answer_2",
        "answer_3",
        "rationale_conditioned_on_a0_0",
    ]
    assert rows[0][-1] == "rationale_conditioned_on_a3_3"
    assert [r[0] for r in rows[1:]] == ["test-0", "test-1"]
    values = [float(v) for v in rows[1][1:]]
    assert values[:4] == [0.25, 0.25, 0.5, 0.0]
    assert values[4:8] == [0.25] * 4 and values[8:12] == [0, 0, 0, 1.0]
    assert values[12:16] == pytest.approx([0.2, 0.2, 0.2, 0.4]) and values[16:20] == [0.75, 0.25, 0, 0]
    # coverage and shape problems leave no file
    path.unlink()
    with pytest.raises(SubmissionError, match="1 missing.*'test-1'"):
        task.write_submission({"test-0": preds["test-0"]}, ["test-0", "test-1"], path)
    gold_only = {**preds, "test-1": {"answer_probs": [1, 0, 0, 0], "rationale_probs": [0.1, 0.2, 0.3, 0.4]}}
    with pytest.raises(SubmissionError, match="'test-1' has rationale probabilities for one answer only"):
        task.write_submission(gold_only, ["test-0", "test-1"], path)
    bad = {**preds, "test-1": {"answer_probs": [0, 0, 0, 0], "rationale_probs": matrix}}
    with pytest.raises(SubmissionError, match="'test-1': answer_probs must be 4 non-negative"):
        task.write_submission(bad, ["test-0", "test-1"], path)
    assert not path.exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- errors


def test_garbled_or_incomplete_annotations_name_the_file_and_line(backbones, tmp_path):
    s = settings_for(backbones["t5"], tmp_path)
    task = get_task("vcr")
    path = tmp_path / "VCR" / "val.jsonl"
    with pytest.raises(TaskDataError, match=r"val\.jsonl: VCR annotations of split 'val' not found"):
        task.load_examples(s, "val", train=False)
    good = json.dumps(record("val-0", "val-1", (2, 3)))
    cases = {
        '{"annot_id": "val-9", "img_id": ': r"val\.jsonl:3: not a JSON object",
        json.dumps(
            {k: v for k, v in record("val-9", "val-1", (0, 0)).items() if k != "question"}
        ): r"val\.jsonl:3: no 'question'",
        json.dumps(
            record("val-9", "val-1", (0, 0), answer_choices=ANSWERS[:3])
        ): r"val\.jsonl:3: 'answer_choices' must be a list of 4",
        json.dumps(
            record("val-9", "val-1", (4, 0))
        ): r"val\.jsonl:3: 'answer_label' must be an index 0-3, got 4",
        json.dumps(
            record("val-9", "val-1", (0, 0), question=["a", ["b"]])
        ): r"val\.jsonl:3: 'question' must be",
        "[1, 2]": r"val\.jsonl:3: a list, not a JSON object",
        good: r"val\.jsonl:3: annot_id 'val-0' occurs twice",
    }
    path.parent.mkdir()
    for line, message in cases.items():
        path.write_text(f"{good}\n\n{line}\n")  # the blank line 2 is skipped but counted
        with pytest.raises(TaskDataError, match=message):
            task.load_examples(s, "val", train=False)
    write_annotations(tmp_path, "test", [record("test-0", "test-0", None)])
    with pytest.raises(
        TaskDataError, match=r"test\.jsonl:1: no answer_label / rationale_label; training needs"
    ):
        task.load_examples(s, "test", train=True)


def test_an_object_index_beyond_the_image_names_the_annotation_line(backbones, data_root, tmp_path):
    root = tmp_path / "datasets"
    shutil.copytree(data_root, root)
    write_annotations(
        root, "val", [RECORDS["val"][0], record("val-1", "val-0", (0, 0))]
    )  # val-0 has no objects
    s = settings_for(backbones["t5"], root)
    tok = api.build_tokenizer(s)
    ds = dataset(s, tok, "val", train=False)
    assert len(ds[0]["input_ids"]) == 8
    with pytest.raises(
        TaskDataError, match=r"val\.jsonl:2: object index 0, but image 'val-0' has 0 GT objects"
    ):
        ds[1]


# ------------------------------------------------------------------------------------- end to end


def test_finetune_then_submit_through_the_cli(cli, backbones, data_root, tmp_path):
    run = tmp_path / "run"
    common = f"--backbone {backbones['t5']} --data_root {data_root} --feat_dim {FEAT} --num_workers 0".split()
    train = "--batch_size 2 --epochs 1 --log_train_accuracy".split()
    res = cli("finetune", "vcr", *common, *train, "--output", str(run))
    assert res.code == 0, res.err
    record0 = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert set(record0["valid/vcr"]) == {"q_a", "qa_r", "q_ar"} and 0 <= record0["valid/vcr"]["q_ar"] <= 100
    assert record0["score"] == record0["valid/vcr"]["q_ar"] and 0 <= record0["train_accuracy"] <= 100
    assert (run / "BEST.safetensors").is_file() and (run / "LAST.safetensors").is_file()
    preds = json.loads((run / "vcr_test_predictions.json").read_text())
    assert [p["id"] for p in preds] == ["test-0", "test-1"]
    assert all(len(p["prediction"]["rationale_probs"]) == 4 for p in preds)  # 4×4: no labels on test
    # `submit --load RUN` predicts the test split again and writes the leaderboard CSV
    res = cli("submit", "--load", str(run))
    assert res.code == 0, res.err
    [written] = list((run / "submit").glob("*/vcr_test_submit.csv"))  # a new folder: the run stays as it was
    with written.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == CSV_HEADER and [r[0] for r in rows[1:]] == ["test-0", "test-1"]
    for row in rows[1:]:
        values = np.array([float(v) for v in row[1:]]).reshape(5, 4)
        np.testing.assert_allclose(values.sum(1), 1.0, rtol=1e-6)
    # ... with the run's own inputs and weights: the predictions written by finetune give the same CSV
    pred_file = tmp_path / "preds.json"
    pred_file.write_text(json.dumps(preds))
    again = tmp_path / "again.csv"
    res = cli("submit", "vcr", "--data_root", str(data_root), "--predictions", str(pred_file),
              "--submission", str(again))
    assert res.code == 0, res.err
    with again.open(newline="") as fh:
        expected = np.array([[float(v) for v in r[1:]] for r in list(csv.reader(fh))[1:]])
    got = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(got, expected, atol=1e-6, err_msg="submit --load rebuilt other inputs")
