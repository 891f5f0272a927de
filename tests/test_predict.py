"""`vlcli predict` / `api.Predictor`: a trained run answers questions about image files."""

from __future__ import annotations

import json

import pytest

from vlcli import api
from vlcli.cli.main import main
from vlcli.demo.world import make_world


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A LoRA run on a small demo world (CLIP RN50 features through the real extractor, standardised)."""
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    make_world(data, n_images={"train": 40, "val": 12, "test": 12})
    out = root / "run"
    code = main(["finetune", "vqa", "--adapter", "lora", "--unfreeze_language_model", "--profile", "demo", "--data_root", str(data), "--backbone",
                 str(data / "backbones/t5-demo"), "--from_scratch", "--epochs", "3", "--lr", "3e-3", "--submit", "false",
                 "--output", str(out)])
    assert code == 0
    return {"data": data, "run": out}


def test_answers_equal_what_eval_predicted_for_the_same_images(run):
    predictor = api.Predictor(run["run"])
    questions = json.loads((run["data"] / "vqa/karpathy_test.json").read_text())
    predicted = {r["id"]: r["prediction"]
                 for r in json.loads((run["run"] / "vqa_karpathy_test_predictions.json").read_text())}
    items = [{"image": str(run["data"] / f"COCO/images/val2014/{q['img_id']}.jpg"), "question": q["sent"]}
             for q in questions]
    answers = [r["answer"] for r in predictor.predict(items)]
    assert answers == [predicted[q["question_id"]] for q in questions] and all(answers)
    ranked = predictor.answer(items[0]["image"], items[0]["question"], topk=3)
    assert len(ranked) == len({a for a, _ in ranked}) >= 2
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and 0 < probs[-1] and sum(probs) <= 1 + 1e-6


def test_cli_one_image_and_a_jsonl_file(cli, run, tmp_path):
    questions = json.loads((run["data"] / "vqa/karpathy_test.json").read_text())[:3]
    image = run["data"] / f"COCO/images/val2014/{questions[0]['img_id']}.jpg"
    res = cli("predict", "--load", str(run["run"]), "--image", str(image), "--question", questions[0]["sent"])
    assert res.code == 0, res.err
    expected = api.Predictor(run["run"]).answer(image, questions[0]["sent"])
    assert res.out.strip() == expected
    lines = tmp_path / "items.jsonl"
    lines.write_text("".join(json.dumps({"image": str(run["data"] / f"COCO/images/val2014/{q['img_id']}.jpg"),
                                         "question": q["sent"]}) + "\n" for q in questions))
    out = tmp_path / "predictions.jsonl"
    res = cli("predict", "--load", str(run["run"]), "--input", str(lines), "--output", str(out))
    assert res.code == 0, res.err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["answer"] == expected and rows[1]["question"] == questions[1]["sent"]
    res = cli("predict", "--load", str(run["run"]), "--input", str(lines), "--output", str(out))
    assert res.code == 2 and "--overwrite" in res.err
    res = cli("predict", "--load", str(run["run"]), "--image", str(image), "--question", "how many?", "--topk", "2")
    assert res.code == 0 and "probability" in res.out


@pytest.mark.parametrize("case", ["no image", "not an image", "no run", "other task", "no question", "bad jsonl",
                                  "butd"])
def test_bad_input_is_one_line_and_exit_2(cli, run, tmp_path, case):
    image = next((run["data"] / "COCO/images/val2014").glob("*.jpg"))
    args = ["predict", "--load", str(run["run"]), "--image", str(image), "--question", "what color is the circle?"]
    needle = {"no image": "no such file", "not an image": "not a readable image", "no run": "no config.json",
              "other task": "the run was trained for vqa", "no question": "give one", "bad jsonl": "line 2: not JSON",
              "butd": "--features"}[case]
    if case == "no image":
        args[4] = str(tmp_path / "missing.jpg")
    elif case == "not an image":
        (tmp_path / "text.jpg").write_text("not a picture")
        args[4] = str(tmp_path / "text.jpg")
    elif case == "no run":
        args[2] = str(tmp_path)
    elif case == "other task":
        args += ["--task", "gqa"]
    elif case == "no question":
        args = args[:5]
    elif case == "bad jsonl":
        (tmp_path / "in.jsonl").write_text(json.dumps({"image": str(image), "question": "q?"}) + "\n{oops\n")
        args = ["predict", "--load", str(run["run"]), "--input", str(tmp_path / "in.jsonl")]
    elif case == "butd":
        fake = tmp_path / "butd"
        fake.mkdir()
        config = json.loads((run["run"] / "config.json").read_text())
        config.update(feature_type="butd", demo_world=False)
        (fake / "config.json").write_text(json.dumps(config))
        args[2] = str(fake)
    res = cli(*args)
    assert res.code == 2, res.err
    assert needle in res.err and "Traceback" not in res.err
