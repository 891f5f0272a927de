"""`vlcli convert`: official downloads -> the original's training files."""

from __future__ import annotations

import json

import pytest

from vlcli.data.convert import (
    ConvertError,
    convert_caption,
    convert_gqa,
    convert_nlvr,
    nlvr_image_ids,
    soft_scores,
)


def dump(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def human(*answers):
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


@pytest.fixture
def vqa_official(tmp_path):
    root = tmp_path / "official"
    dump(
        root / "v2_OpenEnded_mscoco_train2014_questions.json",
        {
            "questions": [
                {"question_id": 1, "image_id": 9, "question": "How many dogs?"},
                {"question_id": 2, "image_id": 9, "question": "Is it sunny?"},
            ]
        },
    )
    dump(
        root / "v2_mscoco_train2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": 1,
                    "image_id": 9,
                    "multiple_choice_answer": "two",
                    "answer_type": "number",
                    "question_type": "how many",
                    "answers": human("Two", "2", "two", "2 ", "three", "3", "2", "two", "2", "4"),
                },
                {
                    "question_id": 2,
                    "image_id": 9,
                    "multiple_choice_answer": "yes",
                    "answer_type": "yes/no",
                    "question_type": "is it",
                    "answers": human("yes", "yes", "no", "yes.", "yes", "yes", "yes", "yes", "yes", "yes"),
                },
            ]
        },
    )
    dump(
        root / "v2_OpenEnded_mscoco_val2014_questions.json",
        {"questions": [{"question_id": 3, "image_id": 42, "question": "What color?"}]},
    )
    dump(
        root / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {
                    "question_id": 3,
                    "image_id": 42,
                    "multiple_choice_answer": "red",
                    "answer_type": "other",
                    "question_type": "what color",
                    "answers": human(*(["red"] * 2 + ["blue"] * 8)),
                }
            ]
        },
    )
    dump(
        root / "v2_OpenEnded_mscoco_test2015_questions.json",
        {"questions": [{"question_id": 4, "image_id": 7, "question": "Why?"}]},
    )
    dump(
        tmp_path / "dataset_coco.json",
        {
            "images": [
                {"filename": "COCO_train2014_000000000009.jpg", "split": "restval", "sentences": []},
                {"filename": "COCO_val2014_000000000042.jpg", "split": "test", "sentences": []},
            ]
        },
    )
    return root


def test_vqa_conversion_soft_scores_and_karpathy_splits(cli, vqa_official, tmp_path):
    out = tmp_path / "vqa"
    res = cli(
        "convert",
        "vqa",
        "--data",
        str(vqa_official),
        "--out",
        str(out),
        "--karpathy",
        str(tmp_path / "dataset_coco.json"),
        "--min_answer_count",
        "1",
    )
    assert res.code == 0, res.err
    train = json.loads((out / "train.json").read_text())
    first = train[0]
    assert first["img_id"] == "COCO_train2014_000000000009" and first["sent"] == "How many dogs?"
    # normalised answers: "two"/"Two" -> "2": seven annotators said 2 -> 1.0; "three"/"3" -> "3": two -> 0.6;
    # "4" once -> 0.3, but only answers of the table (multiple_choice_answer "2", "yes", "red") are kept
    assert first["label"] == {"2": 1.0}
    assert train[1]["label"] == {"yes": 1.0}  # "yes." is normalised to "yes": 9 of 10
    # the table holds multiple_choice_answers only: "red" (2 annotators -> 0.6) is in it, "blue" (8) is not
    assert json.loads((out / "val.json").read_text())[0]["label"] == {"red": 0.6}
    assert "label" not in json.loads((out / "test.json").read_text())[0]
    assert json.loads((out / "trainval_label2ans.json").read_text()) == ["2", "red", "yes"]
    assert [r["question_id"] for r in json.loads((out / "karpathy_train.json").read_text())] == [1, 2]
    assert [r["question_id"] for r in json.loads((out / "karpathy_test.json").read_text())] == [3]
    assert (out / "v2_mscoco_val2014_annotations.json").is_file()


def test_soft_scores_follow_the_annotator_count():
    assert soft_scores(["a", "a", "b", "c", "c", "c", "d", "d", "d", "d"], None) == {
        "a": 0.6,
        "b": 0.3,
        "c": 0.9,
        "d": 1.0,
    }
    assert soft_scores(["a", "b"], {"a": 0}) == {"a": 0.3}


def test_gqa_conversion(tmp_path):
    root = tmp_path / "official"
    dump(
        root / "train_balanced_questions.json",
        {"07333408": {"imageId": "2354786", "question": "Is the sky blue?", "answer": "yes"}},
    )
    dump(root / "submission_all_questions.json", {"201": {"imageId": "n1", "question": "What is it?"}})
    written = convert_gqa(root, tmp_path / "GQA")
    assert {p.name for p, _ in written} >= {"train.json", "submit.json", "trainval_ans2label.json"}
    train = json.loads((tmp_path / "GQA" / "train.json").read_text())
    assert train == [
        {"img_id": "2354786", "sent": "Is the sky blue?", "question_id": "07333408", "label": {"yes": 1.0}}
    ]
    assert "label" not in json.loads((tmp_path / "GQA" / "submit.json").read_text())[0]


def test_nlvr_conversion(tmp_path):
    root = tmp_path / "official"
    root.mkdir()
    (root / "train.json").write_text(
        json.dumps({"identifier": "train-10171-0-0", "sentence": "Two dogs.", "label": "True"})
        + "\n"
        + json.dumps({"identifier": "train-10171-0-1", "sentence": "No dogs.", "label": "False"})
        + "\n"
    )
    convert_nlvr(root, tmp_path / "nlvr")
    records = json.loads((tmp_path / "nlvr" / "train.json").read_text())
    assert records[0] == {
        "identifier": "train-10171-0-0",
        "img0": "train-10171-0-img0",
        "img1": "train-10171-0-img1",
        "label": 1,
        "sent": "Two dogs.",
        "uid": "nlvr2_train_0",
    }
    assert records[1]["label"] == 0
    assert nlvr_image_ids("dev-850-3-2") == ("dev-850-3-img0", "dev-850-3-img1")
    (root / "train.json").write_text(
        json.dumps({"identifier": "x-1-0-0", "sentence": "s", "label": "maybe"}) + "\n"
    )
    with pytest.raises(ConvertError, match="expected True or False"):
        convert_nlvr(root, tmp_path / "nlvr")


def test_caption_conversion_from_official_captions(tmp_path):
    root = tmp_path / "official"
    dump(
        root / "captions_train2014.json",
        {
            "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg"}],
            "annotations": [{"image_id": 9, "caption": "A dog.", "id": 1}],
        },
    )
    dump(
        root / "captions_val2014.json",
        {
            "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
            "annotations": [
                {"image_id": 42, "caption": "A cat.", "id": 2},
                {"image_id": 42, "caption": "A kitten.", "id": 3},
            ],
        },
    )
    dump(tmp_path / "splits.json", {"train": [9], "test": [42]})
    convert_caption(root, tmp_path / "COCO", tmp_path / "splits.json")
    data = json.loads((tmp_path / "COCO" / "dataset_coco.json").read_text())
    by_id = {img["cocoid"]: img for img in data["images"]}
    assert by_id[42]["split"] == "test" and [s["raw"] for s in by_id[42]["sentences"]] == [
        "A cat.",
        "A kitten.",
    ]
    assert by_id[9]["filename"] == "COCO_train2014_000000000009.jpg"
    dump(tmp_path / "bad.json", {"train": [9, 77]})
    with pytest.raises(ConvertError, match="1 COCO ids"):
        convert_caption(root, tmp_path / "COCO", tmp_path / "bad.json")


def test_missing_official_file_is_a_clear_error(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    res = cli("convert", "vqa", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert res.code == 2 and "v2_mscoco_train2014_annotations.json: no such file" in res.err
    res = cli("convert", "coco", "--data", str(tmp_path / "empty"))
    assert res.code == 2 and "expected one of vqa, gqa, nlvr, caption" in res.err
