"""`vlcli eval TASK --predictions FILE`: official file formats, JSON output, one-line errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_metrics import VQA_EXPECTED, vqa_annotations, vqa_predictions
from vlcli.metrics.caption import java_available


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def vqa_files(tmp_path):
    ann = write(tmp_path / "A.json", {"annotations": vqa_annotations()})
    qs = write(tmp_path / "Q.json", {"questions": [
        {"question_id": a["question_id"], "image_id": a["image_id"], "question": "?"} for a in vqa_annotations()]})
    res = write(tmp_path / "results.json", [{"question_id": q, "answer": a} for q, a in vqa_predictions().items()])
    return res, qs, ann


@pytest.mark.parametrize("mode", ["vlt5", "official"])
def test_eval_vqa_json(cli, vqa_files, mode):
    res, qs, ann = vqa_files
    r = cli("eval", "vqa", "--predictions", str(res), "--questions", str(qs), "--annotations", str(ann),
            "--vqa_eval_mode", mode, "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["task"] == "vqa" and data["mode"] == mode and data["questions"] == 7
    for key in ("overall", "perAnswerType", "perQuestionType"):
        assert data[key] == VQA_EXPECTED[mode][key]


def test_eval_vqa_defaults_to_vlt5_and_table(cli, vqa_files):
    res, _, ann = vqa_files
    r = cli("eval", "vqa", "--predictions", str(res), "--annotations", str(ann))  # questions = every annotation
    assert r.code == 0, r.err
    assert "VQA accuracy" in r.out and "72.86" in r.out and "vlt5 evaluator" in r.out and "96.67" in r.out
    r = cli("eval", "vqa", "--predictions", str(res), "--annotations", str(ann), "--vqa-eval-mode=official", "--json")
    assert json.loads(r.out)["overall"] == 61.43


def test_eval_vqa_question_subset(cli, vqa_files, tmp_path):
    _, _, ann = vqa_files
    qs = write(tmp_path / "Q2.json", {"questions": [{"question_id": 1}, {"question_id": 7}]})
    res = write(tmp_path / "r2.json", [{"question_id": 1, "answer": "yes"}, {"question_id": 7, "answer": "netting"}])
    r = cli("eval", "vqa", "--predictions", str(res), "--questions", str(qs), "--annotations", str(ann), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["overall"] == 65.0  # (1.0 + 0.3) / 2


def one_error(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    lines = [line for line in r.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.err
    text = " ".join(r.err.split())
    for needle in needles:
        assert needle in text, (needle, r.err)


def test_eval_vqa_bad_files(cli, vqa_files, tmp_path):
    res, qs, ann = vqa_files
    base = ("eval", "vqa", "--annotations", str(ann))
    one_error(cli(*base, "--predictions", str(tmp_path / "none.json")), "none.json", "no such file")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    one_error(cli(*base, "--predictions", str(bad)), "bad.json", "not valid JSON")
    wrong = write(tmp_path / "wrong.json", {"question_id": 1, "answer": "yes"})
    one_error(cli(*base, "--predictions", str(wrong)), "wrong.json", "expected a JSON list")
    lacking = write(tmp_path / "lacking.json", [{"question_id": 1}])
    one_error(cli(*base, "--predictions", str(lacking)), "lacking.json", "lacks 'answer'")
    unknown = write(tmp_path / "unknown.json", [{"question_id": q, "answer": "x"} for q in range(1, 9)])
    one_error(cli(*base, "--predictions", str(unknown)), "unknown.json", "question ids not in", "(8)")
    partial = write(tmp_path / "partial.json", [{"question_id": 1, "answer": "yes"}])
    one_error(cli(*base, "--predictions", str(partial)), "partial.json", "6 question(s)", "no prediction")
    dup = write(tmp_path / "dup.json", [{"question_id": 1, "answer": "yes"}] * 2)
    one_error(cli(*base, "--predictions", str(dup)), "dup.json", "more than once")
    not_ann = write(tmp_path / "ann_bad.json", [{"question_id": 1}])
    one_error(cli("eval", "vqa", "--predictions", str(res), "--annotations", str(not_ann)), "ann_bad.json",
              '"annotations" list')
    extra_q = write(tmp_path / "Qx.json", {"questions": [{"question_id": 1}, {"question_id": 42}]})
    one_error(cli(*base, "--predictions", str(res), "--questions", str(extra_q)), "--annotations", "42")
    one_error(cli("eval", "vqa", "--predictions", str(res)), "needs --annotations")
    one_error(cli(*base, "--predictions", str(res), "--vqa_eval_mode", "v3"), "--vqa_eval_mode v3", "vlt5")
    one_error(cli("eval", "gqa", "--predictions", str(res), "--annotations", str(ann)), "vqa or caption")


def test_eval_without_predictions_needs_a_checkpoint(cli):
    r = cli("eval", "vqa")
    assert r.code == 2 and "needs --load" in r.err
    r = cli("eval", "vqa", "--vqa_eval_mode", "official")
    assert r.code == 2
    r = cli("eval", "vqa", "--test_only")
    assert r.code == 2 and "[R33]" in r.err


def coco_files(tmp_path: Path) -> tuple[Path, Path]:
    ann = write(tmp_path / "captions.json", {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 1, "id": 10, "caption": "A dog runs on the grass."},
            {"image_id": 1, "id": 11, "caption": "a dog is running"},
            {"image_id": 2, "id": 12, "caption": "a black cat sits on a mat"},
            {"image_id": 2, "id": 13, "caption": "a cat"},
        ],
    })
    res = write(tmp_path / "caps.json", [{"image_id": 1, "caption": "a dog runs on the grass"},
                                         {"image_id": 2, "caption": "A cat sits on the sofa."}])
    return res, ann


@pytest.mark.skipif(not java_available(), reason="no `java` on PATH (PTB tokenizer, METEOR)")
def test_eval_caption_json(cli, tmp_path):
    import math

    res, ann = coco_files(tmp_path)
    r = cli("eval", "caption", "--predictions", str(res), "--annotations", str(ann), "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["task"] == "caption" and data["images"] == 2
    # same hand computation as tests/test_metrics.py: 10/12 clipped unigrams, brevity penalty exp(1 - 13/12)
    assert data["Bleu_1"] == pytest.approx(10 / 12 * math.exp(1 - 13 / 12), rel=1e-6)
    assert {"METEOR", "ROUGE_L", "CIDEr", "Bleu_4"} <= set(data)


def test_eval_caption_bad_files(cli, tmp_path, monkeypatch):
    res, ann = coco_files(tmp_path)
    unknown = write(tmp_path / "u.json", [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"},
                                          {"image_id": 3, "caption": "z"}])
    one_error(cli("eval", "caption", "--predictions", str(unknown), "--annotations", str(ann)), "u.json",
              "image ids not in")
    partial = write(tmp_path / "p.json", [{"image_id": 1, "caption": "x"}])
    one_error(cli("eval", "caption", "--predictions", str(partial), "--annotations", str(ann)), "p.json",
              "have no caption")
    no_caps = write(tmp_path / "c.json", {"images": [{"id": 1}], "annotations": []})
    one_error(cli("eval", "caption", "--predictions", str(res), "--annotations", str(no_caps)), "c.json",
              "no caption")
    monkeypatch.setattr("vlcli.metrics.caption.shutil.which", lambda name: None)
    one_error(cli("eval", "caption", "--predictions", str(res), "--annotations", str(ann)), "needs Java")
