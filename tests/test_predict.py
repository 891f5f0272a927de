"""`vlcli predict` / `api.Predictor`: a trained run answers questions about image files.

Two real runs: a LoRA run on a small demo world whose RN50 grids were written by the real extractor
(random-init tower, standardised), and a raw_RN50 run whose model reads pixels. Predictions must equal
what the runs' own evaluation predicted for the same images and questions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.tiny import make_backbone_dir
from tests.world import make_world as make_test_world
from tests.world import write_raw_images
from vlcli import api
from vlcli.cli.main import main
from vlcli.data.layout import open_features
from vlcli.demo.world import make_world
from vlcli.predict import PredictError

QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A LoRA run on a small demo world (CLIP RN50 features through the real extractor, standardised)."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    make_world(data, n_images={"train": 40, "val": 12, "test": 12})
    out = root / "run"
    code = main(["finetune", "vqa", "--adapter", "lora", "--unfreeze_language_model", "--profile", "demo", "--data_root",
                 str(data), "--backbone", str(data / "backbones/t5-demo"), "--from_scratch", "--epochs", "3", "--lr",
                 "3e-3", "--submit", "false", "--output", str(out)])
    assert code == 0
    questions = json.loads((data / "vqa/karpathy_test.json").read_text())
    predicted = {r["id"]: r["prediction"] for r in json.loads((out / "vqa_karpathy_test_predictions.json").read_text())}
    return {"data": data, "run": out, "questions": questions, "predicted": predicted,
            "predictor": api.Predictor(out)}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A raw_RN50 VQA run (the model's own random-init CLIP encoder reads 64 px PNGs)."""
    root = tmp_path_factory.mktemp("predict_raw")
    data = make_test_world(root / "datasets", n_train=8, n_eval=4)
    write_raw_images(data, 64)
    out = root / "run"
    code = main(["finetune", "vqa", "--feature_type", "raw_RN50", "--image_size", "64,64", "--clip_random_init",
                 "--unfreeze_language_model", "--backbone", str(make_backbone_dir(root / "t5", "t5")), "--data_root",
                 str(data), "--batch_size", "4", "--epochs", "8", "--lr", "1e-2", "--num_workers", "0",
                 "--submit", "false", "--output", str(out)])
    assert code == 0
    return {"data": data, "run": out}


def image_of(run, question) -> Path:
    return run["data"] / f"COCO/images/val2014/{question['img_id']}.jpg"


def fake_run(source: Path, target: Path, checkpoint: bool = True, **config) -> Path:
    """A copy of ``source`` whose config.json differs by ``config`` (to reach the paths of other runs)."""
    target.mkdir()
    settings = json.loads((source / "config.json").read_text())
    settings.update(config)
    (target / "config.json").write_text(json.dumps(settings))
    if checkpoint:
        shutil.copy(source / "BEST.safetensors", target / "BEST.safetensors")
    return target


# ------------------------------------------------------------------------------- CLIP grid runs


def test_answers_equal_what_eval_predicted_for_the_same_images(run):
    items = [{"image": str(image_of(run, q)), "question": q["sent"]} for q in run["questions"]]
    answers = [r["answer"] for r in run["predictor"].predict(items, batch_size=5)]
    assert answers == [run["predicted"][q["question_id"]] for q in run["questions"]] and all(answers)


def test_features_equal_those_extract_features_stored(run):
    """The in-process extractor reproduces the stored fp16 grids (the same values up to a rare last-bit
    rounding flip: fp32 sums differ with the batch an image is extracted in)."""
    predictor = run["predictor"]
    stored = open_features(predictor.settings, "vqa", "karpathy_test")
    for q in run["questions"][:3]:
        ours = predictor.visual_input(image_of(run, q))
        theirs = stored.get(q["img_id"])[0]
        assert ours.shape == theirs.shape == (9, 2048)  # the demo world: 96 px, a 3x3 grid
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
        assert (ours == theirs).mean() > 0.97


def test_topk_gives_distinct_answers_with_descending_probabilities(run):
    q = run["questions"][0]
    predictor = run["predictor"]
    ranked = predictor.answer(image_of(run, q), q["sent"], topk=3)
    answers, probs = [a for a, _ in ranked], [p for _, p in ranked]
    assert len(ranked) == 3 and len(set(answers)) == 3 and all(isinstance(a, str) and a for a in answers)
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] and probs[0] <= 1 and sum(probs) <= 1 + 1e-6
    # a probability is the model's: P(answer) of one candidate, alone, is the same number
    batch_of_one = predictor.predict([{"image": str(image_of(run, q)), "question": q["sent"]}], topk=1)[0]["topk"]
    assert batch_of_one[0][0] == answers[0] and batch_of_one[0][1] == pytest.approx(probs[0], rel=1e-4)


def test_a_run_without_its_data_root_names_the_manifest_and_takes_it_with_features(run, tmp_path):
    moved = fake_run(run["run"], tmp_path / "moved", data_root=str(tmp_path / "elsewhere"))
    q = run["questions"][1]
    with pytest.raises(PredictError, match="no CLIP extraction manifest.*--features"):
        api.Predictor(moved)
    folder = run["data"] / "COCO/clip_features/data_clip_RN50_att"
    answer = api.Predictor(moved, features=folder).answer(image_of(run, q), q["sent"])
    assert answer == run["predicted"][q["question_id"]]


@pytest.fixture(scope="module")
def butd(run, tmp_path_factory):
    """The LoRA run as a BUTD run, with the stored grids of the test images as their regions in an h5
    (zero boxes, as grids have): its model sees exactly what eval gave the grid run."""
    root = tmp_path_factory.mktemp("predict_butd")
    stored = open_features(run["predictor"].settings, "vqa", "karpathy_test")
    h5 = root / "regions.h5"
    with h5py.File(h5, "w") as f:
        for image_id in dict.fromkeys(q["img_id"] for q in run["questions"]):
            g = f.create_group(image_id)
            features = stored.get(image_id)[0]
            g["features"], g["boxes"] = features, np.zeros((len(features), 4), np.float32)
            g["img_h"], g["img_w"] = 100, 100
    folder = fake_run(run["run"], root / "run", feature_type="butd", demo_world=False)
    return {"run": folder, "h5": h5, "predictor": api.Predictor(folder, features=h5)}


def test_butd_run_reads_a_precomputed_h5_by_file_stem_or_image_id(run, butd):
    q = run["questions"][2]
    expected = run["predicted"][q["question_id"]]
    assert butd["predictor"].answer(Path("elsewhere") / f"{q['img_id']}.jpg", q["sent"]) == expected  # not read
    item = {"image": "x.jpg", "image_id": q["img_id"], "question": q["sent"]}
    assert butd["predictor"].predict([item])[0]["answer"] == expected


def test_model_scores_from_in_process_features_equal_those_from_stored_features(run, butd):
    """The answers of this small run hardly depend on the image, so compare what does: the probabilities
    of the top answers. In-process extraction and the stored features give the same numbers (1e-4),
    while another image changes them by far more: the comparison can tell images apart."""
    sent = "how many shapes are there?"
    images = list(dict.fromkeys(q["img_id"] for q in run["questions"]))[:3]
    ours = [dict(run["predictor"].answer(image_of(run, {"img_id": i}), sent, topk=3)) for i in images]
    stored = [dict(butd["predictor"].answer(f"{i}.jpg", sent, topk=3)) for i in images]
    for a, b in zip(ours, stored, strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4) for k in a)
    shared = set(stored[0]) & set(stored[1]) & set(stored[2])
    assert shared and all(abs(stored[0][k] / stored[j][k] - 1) > 1e-3 for k in shared for j in (1, 2))


# ------------------------------------------------------------------------------------ raw runs


def test_raw_run_reads_pixels_like_its_image_store_and_answers_like_eval(raw):
    predictor = api.Predictor(raw["run"])
    questions = json.loads((raw["data"] / "vqa/karpathy_test.json").read_text())
    predicted = {r["id"]: r["prediction"] for r in json.loads((raw["run"] / "vqa_karpathy_test_predictions.json").read_text())}
    images = [raw["data"] / f"COCO/images/val2014/{q['img_id']}.png" for q in questions]
    store = open_features(predictor.settings, "vqa", "karpathy_test")
    pixels = predictor.visual_input(images[0])
    assert pixels.shape == (3, 64, 64)
    np.testing.assert_array_equal(pixels, store.get(questions[0]["img_id"])[0])
    answers = [r["answer"] for r in predictor.predict([{"image": str(i), "question": q["sent"]}
                                                        for i, q in zip(images, questions, strict=True)])]
    assert answers == [predicted[q["question_id"]] for q in questions] and all(answers)


def test_caption_task_captions_without_a_question(cli, raw, tmp_path):
    """A run of the caption task (here the raw run's weights under a caption config) captions the image."""
    captioner = fake_run(raw["run"], tmp_path / "cap", tasks="caption")
    image = next((raw["data"] / "COCO/images/val2014").glob("*.png"))
    caption = api.Predictor(captioner).caption(image)
    assert isinstance(caption, str) and caption
    res = cli("predict", "--load", str(captioner), "--image", str(image), "--task", "caption", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == {"image": str(image), "answer": caption}
    res = cli("predict", "--load", str(captioner), "--image", str(image), "--question", "what?")
    assert res.code == 2 and "--question" in res.err and "takes no question" in res.err


# ------------------------------------------------------------------------------------------ CLI


def test_cli_one_image_topk_table_and_json(cli, run):
    q = run["questions"][0]
    image, expected = image_of(run, q), run["predicted"][q["question_id"]]
    res = cli("predict", "--load", str(run["run"]), "--image", str(image), "--question", q["sent"])
    assert res.code == 0, res.err
    assert res.out.strip() == expected
    res = cli("predict", "--load", str(run["run"] / "BEST"), "--image", str(image), "--question", q["sent"], "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == {"image": str(image), "question": q["sent"], "answer": expected}
    res = cli("predict", "--load", str(run["run"]), "--image", str(image), "--question", q["sent"], "--topk", "3",
              "--json")
    ranked = json.loads(res.out)["topk"]
    assert [r["answer"] for r in ranked] == [a for a, _ in run["predictor"].answer(image, q["sent"], topk=3)]
    res = cli("predict", "--load", str(run["run"]), "--image", str(image), "--question", q["sent"], "--topk", "3")
    assert res.code == 0 and "probability" in res.out and all(r["answer"] in res.out for r in ranked)


def test_cli_jsonl_in_and_out(cli, run, tmp_path):
    questions = run["questions"][:3]
    for q in questions:  # relative image paths are taken from the input file's folder
        shutil.copy(image_of(run, q), tmp_path / f"{q['img_id']}.jpg")
    lines = tmp_path / "items.jsonl"
    lines.write_text("".join(json.dumps({"image": f"{q['img_id']}.jpg", "question": q["sent"], "qid": q["question_id"]})
                             + "\n" for q in questions) + "\n")
    out = tmp_path / "predictions.jsonl"
    res = cli("predict", "--load", str(run["run"]), "--input", str(lines), "--output", str(out))
    assert res.code == 0, res.err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["answer"] for r in rows] == [run["predicted"][q["question_id"]] for q in questions]
    assert [r["qid"] for r in rows] == [q["question_id"] for q in questions]
    assert rows[0]["image"] == str(tmp_path / f"{questions[0]['img_id']}.jpg")
    res = cli("predict", "--load", str(run["run"]), "--input", str(lines), "--output", str(out))
    assert res.code == 2 and "--overwrite" in res.err
    res = cli("predict", "--load", str(run["run"]), "--input", str(lines), "--output", str(out), "--overwrite",
              "--topk", "2", "--json")
    assert res.code == 0 and json.loads(res.out) == {"output": str(out), "predictions": 3}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(len(r["topk"]) == 2 and r["topk"][0]["probability"] >= r["topk"][1]["probability"] for r in rows)


# ----------------------------------------------------------------------------------------- errors

ERRORS = {
    "no image": "--image {tmp}/missing.jpg: no such file",
    "not an image": "--image {tmp}/text.jpg: not a readable image",
    "no run": "--load {tmp}: no config.json",
    "no checkpoint": "--checkpoint BEST: {tmp}/nockpt/BEST.safetensors does not exist",
    "other task": "--task caption: the run was trained for vqa",
    "several tasks": "the run trained vqa, caption; choose one with --task",
    "no question": "--question: a vqa run answers a question",
    "bad jsonl": "--input {tmp}/in.jsonl line 2: not JSON",
    "jsonl missing image": "--input {tmp}/in.jsonl line 1: image {tmp}/gone.jpg: no such file",
    "butd": "BUTD region features, which need a Faster R-CNN detector",
    "id not in features": "no image 'other' in the file",
    "question with input": "--question: with --input each line carries its own",
    "output without input": "--output writes the predictions of --input",
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_is_one_line_and_exit_2(cli, run, tmp_path, case):
    image = image_of(run, run["questions"][0])
    args = ["predict", "--load", str(run["run"]), "--image", str(image), "--question", QUESTION]
    if case == "no image":
        args[4] = str(tmp_path / "missing.jpg")
    elif case == "not an image":
        (tmp_path / "text.jpg").write_text("not a picture")
        args[4] = str(tmp_path / "text.jpg")
    elif case == "no run":
        args[2] = str(tmp_path)
    elif case == "no checkpoint":
        args[2] = str(fake_run(run["run"], tmp_path / "nockpt", checkpoint=False))
    elif case == "other task":
        args += ["--task", "caption"]
    elif case == "several tasks":
        args[2] = str(fake_run(run["run"], tmp_path / "multi", tasks="vqa,caption"))
    elif case == "no question":
        args = args[:5]
    elif case in ("bad jsonl", "jsonl missing image"):
        first = {"image": str(image if case == "bad jsonl" else tmp_path / "gone.jpg"), "question": "q?"}
        (tmp_path / "in.jsonl").write_text(json.dumps(first) + "\n" + ("{oops\n" if case == "bad jsonl" else ""))
        args = ["predict", "--load", str(run["run"]), "--input", str(tmp_path / "in.jsonl")]
    elif case in ("butd", "id not in features"):
        args[2] = str(fake_run(run["run"], tmp_path / "butd", feature_type="butd", demo_world=False))
        if case == "id not in features":
            with h5py.File(tmp_path / "regions.h5", "w") as f:
                f.create_group("photo")["features"] = np.zeros((4, 2048), np.float32)
            args += ["--features", str(tmp_path / "regions.h5"), "--image_id", "other"]
    elif case == "question with input":
        args += ["--input", "x.jsonl"]
        del args[3:5]
    elif case == "output without input":
        args += ["--output", str(tmp_path / "o.jsonl")]
    res = cli(*args)
    assert res.code == 2, res.err
    message = " ".join(res.err.split())  # rich wraps long lines
    assert ERRORS[case].format(tmp=tmp_path) in message and "Traceback" not in res.err
