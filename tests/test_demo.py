"""The built-in demo: `vlcli finetune vqa --adapter lora --profile demo` end to end (a few minutes): the
accuracy targets of docs/demo.md, and `vlcli predict` on held-out demo questions."""

from __future__ import annotations

import json

from vlcli.demo.setup import demo_baselines
from vlcli.predict import Predictor


def test_demo_pretrains_warm_starts_and_reads_the_image(cli, tmp_path):
    """The README's main job on a fresh data root: world, standardised features, VL pretraining (cached),
    warm start, LoRA. The accuracy must clear what a model that ignores the image can reach."""
    root = tmp_path / "demo-data"
    run = tmp_path / "run"
    res = cli("finetune", "vqa", "--adapter", "lora", "--profile", "demo", "--data_root", str(root),
              "--backbone", str(root / "backbones/t5-demo"), "--output", str(run))
    assert res.code == 0, res.err
    assert "VL-pretraining the demo backbone once" in res.err and "Warm start from" in res.err
    pretrained = root / "pretrained/t5-demo-RN50/BEST.safetensors"
    init = json.loads((run / "config.json").read_text())["_run"]["init"]
    assert init["path"] == str(pretrained) and init["fresh_groups"] == ["LoRA"]
    manifest = json.loads((root / "COCO/clip_features/data_clip_RN50_att/manifest.json").read_text())
    assert manifest["standardize"]["file"] == "standardize.safetensors"
    assert not (root / "nlvr/clip_features").exists()  # only the folders vqa and pretraining read
    baselines = demo_baselines(root)["vqa"]
    majority, prior = baselines["majority answer"], baselines["question-type prior"]
    assert "question-type prior" in res.out and f"{prior:.2f}" in res.out and "trainable" in res.out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max((r["valid/vqa"] for r in records), key=lambda v: v["accuracy"])
    # the targets (docs/demo.md): BEST >= 70, yes/no >= 75, colour / shape ("other", needs the image) >= 70
    assert best["accuracy"] >= 70 and best["accuracy/yes/no"] >= 75 and best["accuracy/other"] >= 70, best
    assert best["accuracy"] >= prior + 20 > majority + 20, (best, prior, majority)
    # `vlcli predict` (the Python API) answers >= 80 % of 50 held-out questions (Karpathy test images)
    held_out = json.loads((root / "vqa/karpathy_test.json").read_text())[:50]
    items = [{"image": str(root / "COCO/images/val2014" / f"{r['img_id']}.jpg"), "question": r["sent"]} for r in held_out]
    answers = [item["answer"] for item in Predictor(run).predict(items)]
    correct = sum(answer in r["label"] for answer, r in zip(answers, held_out, strict=True))
    assert correct >= 40, (correct, answers)
    assert len(json.loads((run / "vqa_submit.json").read_text())) == 300
    # later runs reuse the pretrained backbone
    res = cli("finetune", "vqa", "--adapter", "lora", "--profile", "demo", "--data_root", str(root), "--epochs", "1",
              "--backbone", str(root / "backbones/t5-demo"), "--submit", "false", "--test", "none",
              "--output", str(tmp_path / "again"))
    assert res.code == 0, res.err
    assert "VL-pretraining" not in res.err and "Warm start from" in res.err
    # the same world serves raw images (classification from tiny-imagenet-200/{split}, nothing extracted)
    run = tmp_path / "cls"
    res = cli("finetune", "cls", "--profile", "demo", "--feature_type", "raw_RN50", "--clip_random_init",
              "--image_size", "64,64", "--epochs", "1", "--submit", "false", "--data_root", str(root),
              "--backbone", str(root / "backbones/t5-demo"), "--output", str(run))
    assert res.code == 0, res.err
    assert "accuracy" in json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["valid/cls"]
    assert not (root / "tiny-imagenet-200/clip_features").exists()
    res = cli("finetune", "vqa", "--profile", "demo", "--feature_type", "butd", "--data_root", str(root))
    assert res.code == 2 and "--demo_world provides images and CLIP grid features only" in res.err
