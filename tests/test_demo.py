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
