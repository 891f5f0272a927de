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


def _butd_group(f: h5py.File, key: str, rng: np.random.Generator, boxes: list[list[float]], size: int = 100,
                names: list[str] | None = None) -> None:
    """One BUTD-layout image group (pixel corner boxes, image size; object names for VCR's GT file)."""
    g = f.create_group(key)
    g["features"] = rng.normal(0, 1, (len(boxes), FEAT_DIM)).astype(np.float32)
    g["boxes"] = np.asarray(boxes, np.float32)
    g["img_h"], g["img_w"] = size, size
    g["num_objects"] = len(boxes)
    if names is not None:
        g.create_dataset("captions", data=np.array(names, dtype=object), dtype=h5py.string_dtype())


def add_region_and_cls_tasks(root: Path, seed: int = 1) -> Path:
    """RefCOCOg, VCR (BUTD region files, 2048-d like the world's RN50 grids) and TinyImageNet (RN50 grids)
    in the original layouts, beside :func:`make_world`'s tasks: the seven-task multitask mix."""
    import pickle

    rng = np.random.default_rng(seed)
    root = Path(root)
    # RefCOCOg: one ref per split, candidates from GT (train) or detections (val/test)
    base = root / "RefCOCO/refcocog"
    (base / "features").mkdir(parents=True, exist_ok=True)
    refs, annotations = [], []
    for k, (split, image_id) in enumerate((("train", 101), ("train", 102), ("val", 201), ("test", 301))):
        refs.append({"ref_id": k, "ann_id": 1000 + k, "image_id": image_id, "split": split, "category_id": 1,
                     "sent_ids": [10 * k], "sentences": [{"raw": f"the {COLORS[k % 3]} box", "sent_id": 10 * k}]})
        annotations.append({"id": 1000 + k, "image_id": image_id, "bbox": [10, 10, 40, 40], "category_id": 1})
    (base / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
    (base / "instances.json").write_text(json.dumps({"images": [], "annotations": annotations, "categories": []}))
    candidates = [[10, 10, 50, 50], [0, 0, 20, 20], [60, 60, 90, 90]]
    for name, ids in (("train_boxes_GT", ("101", "102")), ("val_boxes_mattnet", ("201",)),
                      ("test_boxes_mattnet", ("301",))):
        with h5py.File(base / "features" / f"{name}.h5", "w") as f:
            for image_id in ids:
                _butd_group(f, image_id, rng, candidates)
    # VCR: question / answers / rationales with object references, GT + detected boxes
    vcr = root / "VCR"
    (vcr / "features").mkdir(parents=True, exist_ok=True)
    answers = [["a", [0], "waits"], ["nobody"], ["a", "dog"], ["the", [1]]]
    rationales = [[[0], "is", "standing"], ["it", "is", "late"], ["no", "one"], ["look"]]
    for split, labels in (("train", [(0, 0), (3, 1)]), ("val", [(0, 0)]), ("test", [None])):
        lines = []
        for k, label in enumerate(labels):
            img_id = f"{split}-{k}"
            rec = {"annot_id": f"{split}-{k}", "img_id": img_id, "img_fn": f"lsmdc/{img_id}.jpg",
                   "metadata_fn": f"lsmdc/{img_id}.json", "question_number": 0, "objects": ["person", "dog"],
                   "question": ["What", "is", [0], "doing", "?"], "answer_choices": answers,
                   "rationale_choices": rationales}
            if label is not None:
                rec["answer_label"], rec["rationale_label"] = label
            lines.append(json.dumps(rec) + "\n")
        (vcr / f"{split}.jsonl").write_text("".join(lines))
        with h5py.File(vcr / "features" / f"{split}_boxes_GT.h5", "w") as gt, \
                h5py.File(vcr / "features" / f"{split}_boxes36.h5", "w") as det:
            for k in range(len(labels)):
                _butd_group(gt, f"{split}-{k}", rng, [[5, 5, 40, 60], [50, 20, 90, 80]], names=["person", "dog"])
                _butd_group(det, f"{split}-{k}", rng, [[i, i, i + 10, i + 10] for i in range(36)])
    # TinyImageNet: class names and RN50 grids per split (val/test images named val_N / test_N)
    tiny = root / "tiny-imagenet-200"
    wnids = {"n00000001": "red thing", "n00000002": "blue thing"}
    tiny.mkdir(parents=True, exist_ok=True)
    (tiny / "words.txt").write_text("".join(f"{w}\t{name}, object\n" for w, name in wnids.items()))
    listing = []
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        folder = tiny / "clip_features" / split / f"data_clip_{FEATURE_TYPE}_att"
        for k in range(n):
            wnid = list(wnids)[k % 2]
            image_id = f"{wnid}_{k}" if split == "train" else f"{split}_{k}"
            if split == "val":
                listing.append(f"{image_id}.JPEG\t{wnid}\t0\t0\t10\t10\n")
            _write_clip(folder, image_id, _features(rng, k % 2))
    (tiny / "val").mkdir(exist_ok=True)
    (tiny / "val" / "val_annotations.txt").write_text("".join(listing))
    return root
