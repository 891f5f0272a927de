"""Make the demo world ready for a run: world + tiny backbones + CLIP features, each only if missing.

Used by ``vlcli finetune ... --profile demo`` (the ``demo_world`` setting) and ``vlcli demo-data``.
Features come from the real extraction path (:mod:`vlcli.features`) with a small, fixed backbone: a
randomly initialised CLIP ResNet of the run's ``feature_type`` (seed 0) at the world's image size, i.e.
a 2x2 grid of 2048-d features for RN50 at 64 px. Random convolutional features keep the colour and
layout information of the shapes, which is all the demo questions need; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlcli.features.clip import ClipExtraction, extract_clip, resolve_weights
from vlcli.features.common import Progress

WORLD_MARKER = "demo/world.json"
EXTRACTION_SEED = 0
# image folder -> feature folder (relative to the data root; the layout vlcli reads, vlcli/data/layout.py)
IMAGE_FOLDERS = {
    "COCO/images/train2014": "COCO/clip_features",
    "COCO/images/val2014": "COCO/clip_features",
    "COCO/images/test2015": "COCO/clip_features",
    "VG/VG_100K": "VG/clip_features",
    "GQA/images": "GQA/clip_features",
    "nlvr/images": "nlvr/clip_features",
}


def world_summary(root: Path) -> dict[str, Any] | None:
    """The summary ``make_world`` saved (majority baselines, counts), or None when there is no world."""
    path = Path(root) / WORLD_MARKER
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def ensure_world(root: Path, feature_type: str = "RN50", image_size: int | None = None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Create what is missing under ``root``; return the world summary.

    ``feature_type`` ``raw_*``: the images are the input, no features are extracted.
    """
    from vlcli.demo.backbone import make_backbones
    from vlcli.demo.world import make_world, world_corpus

    root = Path(root)
    summary = world_summary(root)
    if summary is None:
        make_world(root)
        summary = world_summary(root) or {}
    if not all((root / "backbones" / name / "config.json").is_file() for name in ("t5-demo", "bart-demo")):
        make_backbones(root, world_corpus(root))
    if feature_type.startswith("raw_"):
        return summary
    size = int(image_size or summary.get("image_size", 64))
    weights = resolve_weights(feature_type, None, random_init=True, seed=EXTRACTION_SEED)
    for images, out in IMAGE_FOLDERS.items():
        folder = root / images
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []
        if files:
            job = ClipExtraction(feature_type=feature_type, images=files, out=root / out, weights=weights,
                                 image_size=size, source=f"demo world ({images})")
            extract_clip(job, progress)
    return summary
