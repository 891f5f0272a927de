"""The built-in demo: `vlcli finetune vqa --adapter lora --profile demo` end to end (about a minute)."""

from __future__ import annotations

import json

from vlcli.demo.setup import demo_baselines


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
    majority, prior = demo_baselines(root)["vqa"]
    assert "question-type prior" in res.out and f"{prior:.2f}" in res.out and "trainable" in res.out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = max(r["valid/vqa"]["accuracy"] for r in records)
    assert best >= prior + 20 > majority + 20, (best, prior, majority)
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
