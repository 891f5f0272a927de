"""The built-in demo: `vlcli finetune vqa --adapter lora --profile demo` end to end (about a minute)."""

from __future__ import annotations

import json


def test_demo_beats_the_majority_baseline(cli, tmp_path):
    root = tmp_path / "demo-data"
    res = cli("demo-data", str(root))  # world, tiny backbones, features through the real extraction path
    assert res.code == 0, res.err
    assert (root / "COCO/clip_features/data_clip_RN50_att").is_dir() and (root / "backbones/t5-demo").is_dir()
    baseline = 100 * json.loads((root / "demo/world.json").read_text())["majority_baseline"]
    run = tmp_path / "run"
    res = cli("finetune", "vqa", "--adapter", "lora", "--profile", "demo", "--data_root", str(root),
              "--backbone", str(root / "backbones/t5-demo"), "--output", str(run))
    assert res.code == 0, res.err
    assert "baseline" in res.out and "trainable" in res.out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(r["valid/vqa"]["accuracy"] for r in records)
    assert best >= baseline + 15, (best, baseline)  # a clear margin over always answering the majority answer
    assert len(json.loads((run / "vqa_submit.json").read_text())) == 300
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
