"""A small data root in the original layout for the four paper tasks (tests of the engine and CLI).

Annotations in the original formats (VQA karpathy files, LXMERT-format GQA, NLVR2 json, Karpathy
``dataset_coco.json``) and CLIP-style per-image feature files (``data_clip_RN50_att/{id}.h5`` with a
``features`` dataset of 4 x 2048). The answer of every question is a function of its image's
features, so a model can learn it.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

FEATURE_TYPE = "RN50"
FEAT_DIM = 2048  # CLIP RN50 grid features
TOKENS = 4  # a 2x2 grid keeps the files small
COLORS = ["red", "blue", "green"]


def _features(rng: np.random.Generator, color: int) -> np.ndarray:
    x = rng.normal(0, 0.1, (TOKENS, FEAT_DIM)).astype(np.float16)
    x[:, color * 8 : color * 8 + 8] += 2.0  # the image's colour is visible in its features
    return x


def _write_clip(folder: Path, image_id: str, feats: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{image_id}.h5", "w") as f:
        f.create_dataset("features", data=feats)


def make_world(root: Path, n_train: int = 12, n_eval: int = 4, seed: int = 0) -> Path:
    """Write the data root under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    clip = f"data_clip_{FEATURE_TYPE}_att"

    def image(kind: str, set_name: str, k: int, color: int) -> str:
        image_id = {"coco": f"COCO_{set_name}_{k:012d}", "vg": f"{set_name}{k}", "nlvr": f"{set_name}-{k}"}[kind]
        folder = {"coco": root / "COCO/clip_features" / clip, "vg": root / f"{set_name}/clip_features" / clip,
                  "nlvr": root / "nlvr/clip_features" / clip}[kind]
        _write_clip(folder, image_id, _features(rng, color))
        return image_id

    # VQA
    (root / "vqa").mkdir(parents=True, exist_ok=True)
    splits = {"karpathy_train": ("train2014", n_train, 0), "karpathy_val": ("val2014", n_eval, 1000),
              "karpathy_test": ("val2014", n_eval, 2000), "test": ("test2015", n_eval, 3000)}
    for split, (set_name, n, base) in splits.items():
        records = []
        for k in range(n):
            color = k % len(COLORS)
            rec = {"img_id": image("coco", set_name, base + k, color), "sent": "what color is the object?",
                   "question_id": base + k}
            if split != "test":
                answer = COLORS[color]
                rec.update(label={answer: 1.0}, answers=[{"answer": answer, "answer_id": i + 1} for i in range(10)],
                           answer_type="other", question_type="what color")
            records.append(rec)
        (root / "vqa" / f"{split}.json").write_text(json.dumps(records))
    for name in ("v2_mscoco_train2014_annotations.json", "v2_mscoco_val2014_annotations.json"):
        (root / "vqa" / name).write_text(json.dumps({"annotations": []}))
    # GQA: train/valid images in VG, testdev/submit in GQA
    (root / "GQA").mkdir(parents=True, exist_ok=True)
    for split, (folder, n, base) in {"train": ("VG", n_train, 0), "valid": ("VG", n_eval, 500),
                                     "testdev": ("GQA", n_eval, 700), "submit": ("GQA", n_eval, 900)}.items():
        records = []
        for k in range(n):
            color = k % len(COLORS)
            rec = {"img_id": image("vg", folder, base + k, color), "sent": "which color?", "question_id": f"{base + k:08d}"}
            if split != "submit":
                rec["label"] = {COLORS[color]: 1.0}
            records.append(rec)
        (root / "GQA" / f"{split}.json").write_text(json.dumps(records))
    # NLVR2: "the same colour" is true iff both images share it
    (root / "nlvr").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        records = []
        for k in range(n):
            c0, c1 = k % 3, (k // 2) % 3
            stem = f"{split}-{k}-0"
            img0, img1 = image("nlvr", stem, 0, c0), image("nlvr", stem, 1, c1)
            records.append({"identifier": f"{stem}-0", "img0": img0, "img1": img1, "label": int(c0 == c1),
                            "sent": "both objects have the same color", "uid": f"nlvr2_{split}_{k}"})
        (root / "nlvr" / f"{split}.json").write_text(json.dumps(records))
    # COCO captions (Karpathy format)
    images = []
    for split, n, base in (("train", n_train, 5000), ("val", n_eval, 6000), ("test", n_eval, 7000)):
        for k in range(n):
            color = k % len(COLORS)
            stem = image("coco", "val2014", base + k, color)
            images.append({"filename": f"{stem}.jpg", "split": split, "cocoid": base + k,
                           "sentences": [{"raw": f"a {COLORS[color]} object", "sentid": (base + k) * 10 + j}
                                         for j in range(2)]})
    (root / "COCO" / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


def write_raw_images(root: Path, size: int = 64) -> int:
    """A PNG per image id of the world (a square of the id's colour on grey) in the raw-image folders
    the ``raw_*`` feature types read (COCO/images/<set>, VG/VG_100K, GQA/images, nlvr/images)."""
    from PIL import Image

    root = Path(root)
    palette = [(220, 30, 30), (30, 30, 220), (30, 180, 30)]  # COLORS
    n = 0
    for h5 in sorted(root.glob("**/clip_features/*/*.h5")):
        image_id = h5.stem
        with h5py.File(h5, "r") as f:
            color = int(np.argmax(np.asarray(f["features"])[0, : 8 * len(COLORS)]) // 8)
        if image_id.startswith("COCO_"):
            folder = root / "COCO/images" / image_id.split("_")[1]
        elif h5.parts[-4] == "nlvr":
            folder = root / "nlvr/images"
        else:
            folder = root / h5.parts[-4] / ("VG_100K" if h5.parts[-4] == "VG" else "images")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (size, size), (90, 90, 90))
        image.paste(palette[color], (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
        image.save(folder / f"{image_id}.png")
        n += 1
    return n
