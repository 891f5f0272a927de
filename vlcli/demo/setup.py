"""Make the demo world ready for a run: world + tiny backbones + CLIP features, each only if missing.

Used by ``vlcli finetune ... --profile demo`` (the ``demo_world`` setting) and ``vlcli demo-data``.
Features come from the real extraction path (:mod:`vlcli.features`) with a small, fixed backbone: a
randomly initialised CLIP ResNet of the run's ``feature_type`` (seed 0) at the world's image size, i.e.
a 3x3 grid of 2048-d features for RN50 at the world's 96 px (one object per middle-row cell). Random convolutional features keep the colour and
layout of the shapes, but as a small variation (~8 %) around a large vector every image shares, which
the model's layer norm cannot tell apart; so the features are **standardised** per channel (mean and std
of the COCO train2014 images, :data:`STATS_FILE`), recorded in each feature folder's manifest (and reused
by ``vlcli predict``). Only the feature folders a run's tasks read are extracted; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlcli.errors import VlcliError
from vlcli.features.clip import (
    ClipExtraction,
    ClipGridEncoder,
    build_tower,
    extract_clip,
    resolve_weights,
    save_standardization,
    standardization_stats,
)
from vlcli.features.common import Progress

WORLD_MARKER = "demo/world.json"
EXTRACTION_SEED = 0
EXTRACTION_BATCH = 64  # 96 px images: larger batches than the 224 px CPU default of 8 (faster here)
STATS_FILE = "demo/standardize_{type}.safetensors"
STATS_IMAGES = 256  # COCO train2014 images the per-channel mean / std are computed from
# image folder -> feature folder (relative to the data root; the layout vlcli reads, vlcli/data/layout.py)
IMAGE_FOLDERS = {
    "COCO/images/train2014": "COCO/clip_features",
    "COCO/images/val2014": "COCO/clip_features",
    "COCO/images/test2015": "COCO/clip_features",
    "VG/VG_100K": "VG/clip_features",
    "GQA/images": "GQA/clip_features",
    "nlvr/images": "nlvr/clip_features",
}
TASK_FOLDERS = {
    "vqa": ("COCO/",), "caption": ("COCO/",), "refcoco": ("COCO/",), "gqa": ("VG/", "GQA/"), "nlvr": ("nlvr/",),
    "pretrain": ("COCO/", "VG/"),
}
"""Image folders (by prefix) each task reads; tasks not listed (cls) read images or their own features."""


PRETRAIN_RECIPE: dict[str, Any] = {
    "losses": "lm,qa", "unfreeze_language_model": True, "epochs": 4, "batch_size": 64, "valid_batch_size": 150,
    "lr": 1e-3, "warmup_ratio": 0.05, "clip_grad_norm": 5, "downsample": False, "oneddownsample": False,
    "num_beams": 1, "gen_max_length": 8, "num_workers": 0, "dropout": 0.0,
}
"""`vlcli pretrain` settings of the demo's VL pretraining (full model, span prediction + QA; see docs/demo.md)."""


class DemoFeaturesError(VlcliError):
    """Demo features made by an older vlcli (not standardised) are in the way."""


def world_summary(root: Path) -> dict[str, Any] | None:
    """The summary ``make_world`` saved (majority baselines, counts), or None when there is no world."""
    path = Path(root) / WORLD_MARKER
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def ensure_world(root: Path, feature_type: str = "RN50", image_size: int | None = None,
                 progress: Progress | None = None, tasks: Iterable[str] | None = None) -> dict[str, Any]:
    """Create what is missing under ``root``; return the world summary.

    ``feature_type`` ``raw_*``: the images are the input, no features are extracted. ``tasks``: extract
    only the folders those tasks read (all folders when None).
    """
    from vlcli.demo.backbone import make_backbones
    from vlcli.demo.world import IMAGE_SIZE, WORLD_VERSION, make_world, world_corpus

    root = Path(root)
    summary = world_summary(root)
    if summary is None:
        make_world(root)
        summary = world_summary(root) or {}
    if summary.get("version") != WORLD_VERSION:
        raise DemoFeaturesError(f"{root}: a demo world of version {summary.get('version')} (this vlcli makes version "
                                f"{WORLD_VERSION}); fix: delete {root} and run again to rebuild it")
    if not all((root / "backbones" / name / "config.json").is_file() for name in ("t5-demo", "bart-demo")):
        make_backbones(root, world_corpus(root))
    if feature_type.startswith("raw_"):
        return summary
    size = int(image_size or summary.get("image_size", IMAGE_SIZE))
    prefixes = None if tasks is None else tuple(p for t in tasks for p in TASK_FOLDERS.get(t, ()))
    folders = [f for f in IMAGE_FOLDERS if prefixes is None or f.startswith(prefixes)]
    extract_features(root, feature_type, size, folders, progress)
    return summary


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if folder.is_dir() else []


def extract_features(root: Path, feature_type: str, size: int, folders: list[str], progress: Progress | None) -> None:
    """Standardised CLIP grid features of ``folders`` (skipping images already extracted)."""
    weights = resolve_weights(feature_type, None, random_init=True, seed=EXTRACTION_SEED)
    encoder: ClipGridEncoder | None = None
    stats = root / STATS_FILE.format(type=feature_type)
    for images in folders:
        files = _images(root / images)
        if not files:
            continue
        job = ClipExtraction(feature_type=feature_type, images=files, out=root / IMAGE_FOLDERS[images],
                             weights=weights, image_size=size, batch_size=EXTRACTION_BATCH,
                             source=f"demo world ({images})", standardize=stats)
        _refuse_unstandardised(job)
        if all((job.att_target / f"{p.stem}.h5").is_file() for p in files):
            continue
        if encoder is None:
            tower, info = build_tower(feature_type, weights)
            encoder = ClipGridEncoder(tower, size).eval()
            if not stats.is_file():
                calibration = _images(root / "COCO/images/train2014")[:STATS_IMAGES]
                save_standardization(stats, *standardization_stats(encoder, calibration, size, EXTRACTION_BATCH,
                                                                   mean_std=(info["mean"], info["std"])))
        extract_clip(job, progress, encoder=encoder)


def _refuse_unstandardised(job: ClipExtraction) -> None:
    if not job.manifest_path.is_file():
        return
    try:
        manifest = json.loads(job.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not manifest.get("standardize"):
        raise DemoFeaturesError(f"{job.att_target}: demo features of an older vlcli (not standardised); fix: delete "
                                f"{job.out} (or the whole demo data root) and run again to rebuild them")


def _question_type(record: dict[str, Any]) -> str:
    """The record's ``question_type`` (VQA) or, without one (GQA questions, NLVR2 statements), its first three words."""
    return str(record.get("question_type") or " ".join(str(record.get("sent", "")).split()[:3]))


def prior_baseline(train: list[dict[str, Any]], val: list[dict[str, Any]]) -> float:
    """Accuracy on ``val`` of answering every question with the most frequent training answer of its question
    type ("what color is the" -> the commonest colour): what a model that ignores the image can reach."""
    from vlcli.demo.world import majority_answer, vqa_accuracy

    by_type: dict[str, list[dict[str, Any]]] = {}
    for record in train:
        by_type.setdefault(_question_type(record), []).append(record)
    overall = majority_answer(train)
    prior = {qtype: majority_answer(records) for qtype, records in by_type.items()}
    scores = [vqa_accuracy(prior.get(_question_type(r), overall), r) for r in val]
    return sum(scores) / max(1, len(scores))


BASELINE_FILES = {"vqa": ("vqa/karpathy_train.json", "vqa/karpathy_val.json"), "gqa": ("GQA/train.json", "GQA/valid.json"),
                  "nlvr": ("nlvr/train.json", "nlvr/valid.json")}
"""Train / validation files of the demo's question-answering tasks (the validation split BEST is selected on)."""


def demo_baselines(root: Path, tasks: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """What a model that ignores the image reaches on the demo's validation splits, per task (all when ``tasks`` is
    None): VQA / GQA / NLVR2 accuracy in % of the majority answer and of the question-type prior (NLVR2: the
    majority label of the statement's first three words); captioning: CIDEr of the commonest training caption
    given to every image. ``{task: {baseline name: value}}``."""
    from vlcli.demo.world import majority_answer, vqa_accuracy

    out: dict[str, dict[str, float]] = {}
    for task, (train_file, val_file) in BASELINE_FILES.items():
        if tasks is not None and task not in tasks:
            continue
        try:
            train = _labelled(json.loads((Path(root) / train_file).read_text(encoding="utf-8")))
            val = _labelled(json.loads((Path(root) / val_file).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        majority = majority_answer(train)
        prior = "statement-type prior" if task == "nlvr" else "question-type prior"
        out[task] = {"majority answer": 100 * sum(vqa_accuracy(majority, r) for r in val) / max(1, len(val)),
                     prior: 100 * prior_baseline(train, val)}
    if tasks is None or "caption" in tasks:
        caption = _caption_baseline(Path(root))
        if caption is not None:
            out["caption"] = {"commonest caption for every image": caption}
    return out


def _labelled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NLVR2's 0/1 labels as the answers the model generates (``true`` / ``false``); VQA / GQA records unchanged."""
    return [{**r, "label": {"true" if r["label"] else "false": 1.0}} if isinstance(r.get("label"), int) else r
            for r in records]


def _caption_baseline(root: Path) -> float | None:
    """CIDEr on Karpathy val of the most frequent training caption (simple tokenisation: the demo captions are plain
    lower-case words, which the PTB tokeniser the task scores with splits the same way; no Java start)."""
    from collections import Counter

    from vlcli.metrics.caption import caption_metrics

    try:
        images = json.loads((root / "COCO/dataset_coco.json").read_text(encoding="utf-8"))["images"]
    except (OSError, ValueError, KeyError):
        return None
    counts = Counter(s["raw"] for im in images if im["split"] == "train" for s in im["sentences"])
    refs = {im["filename"]: [s["raw"] for s in im["sentences"]] for im in images if im["split"] == "val"}
    if not counts or not refs:
        return None
    common = min(counts, key=lambda c: (-counts[c], c))
    return caption_metrics({i: common for i in refs}, refs, tokenizer="simple")["CIDEr"]
