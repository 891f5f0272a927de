"""The demo "shapes" world: a deterministic synthetic data root in the original layout (docs/demo.md).

Every image shows 1–3 coloured shapes (circle / square / triangle, 6 colours, distinct shapes and
distinct colours within an image, each in its own horizontal slot of the middle row) on a light background. Questions,
statements, captions and referring expressions are computed from that scene, so every answer can be
read off the image. A scene depends only on ``(seed, image id)``; annotation files are written with
a fixed key order, so the same seed gives byte-identical files.

Nothing here imports torch; PIL draws the images.
"""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vlcli.errors import VlcliError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 220),
    "green": (30, 160, 50),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 135, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SLOTS: tuple[str, ...] = ("left", "middle", "right")
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}

DEFAULT_SIZES: dict[str, int] = {"train": 600, "val": 150, "test": 150}
"""Images per split of each task family (see docs/demo.md for what each split becomes)."""

WORLD_VERSION = 3
OBJECT_RADIUS = 0.15
"""Half-size of every object (fraction of the image side). One size for all: the amount of colour then tells the
shapes apart (square > circle > triangle), which the random-init feature extractor sees well."""
TRAIN_QUESTIONS = 8
"""VQA questions per karpathy_train image (2 per image in the other splits): 4,800 training questions over 600
images, enough for the tiny model to learn to read the shapes (version 1 had 2 and stayed near the priors)."""
TRAIN_STATEMENTS = 8
"""NLVR2 statements per train image pair (half true, half false, duplicates dropped; 2 per pair in valid / test):
with 2, the 600 training statements left NLVR2 near chance in the multitask demo."""
IMAGE_SIZE = 96
"""Default image side in pixels: a 3x3 grid of CLIP ResNet features (32 px cells), the objects in the middle row so
that each sits in one cell (version 2 drew 64 px images, a 2x2 grid, at any height: each cell mixed two objects and
the tiny model could not read shapes, ~50 % on "what shape is the red object?")."""
MANIFEST = "demo/world.json"
SCENES = "demo/scenes.json"

Progress = Callable[[str], None] | None


class DemoWorldError(VlcliError):
    """Bad arguments for the demo world (unknown size key, non-positive size)."""


# --------------------------------------------------------------------------------------------------
# Scenes and images
# --------------------------------------------------------------------------------------------------


def _rng(seed: int, *parts: object) -> random.Random:
    # random.Random(str) hashes the string with SHA-512: stable across runs and PYTHONHASHSEED values.
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def make_scene(seed: int, image_id: str, n_objects: int | None = None) -> list[dict[str, Any]]:
    """The objects of image ``image_id``: ``[{shape, color, slot, x, y, r}]`` sorted left to right.

    ``x, y, r`` are centre and half-size as fractions of the image side. Shapes are distinct and
    colours are distinct within an image, so "the circle" / "the red object" are unambiguous.
    """
    rng = _rng(seed, "scene", image_id)
    n = n_objects if n_objects is not None else rng.randint(1, 3)
    shapes = rng.sample(SHAPES, n)
    colors = rng.sample(list(COLORS), n)
    slots = sorted(rng.sample(range(3), n))
    objects = []
    for shape, color, slot in zip(shapes, colors, slots, strict=True):
        rng.uniform(0.11, 0.15)  # version 1 drew the size here; the draw is kept so positions stay the same
        r = OBJECT_RADIUS
        x = (slot + 0.5) / 3 + rng.uniform(-0.03, 0.03)
        y = 0.5 + rng.uniform(-0.02, 0.02)  # the middle row: one object per cell of the 3x3 feature grid
        objects.append({"shape": shape, "color": color, "slot": SLOTS[slot], "x": round(x, 4), "y": round(y, 4),
                        "r": round(r, 4)})
    return objects


def box_of(obj: Mapping[str, Any], size: int) -> list[float]:
    """COCO ``[x, y, w, h]`` pixel box of ``obj`` in a ``size`` x ``size`` image."""
    x0, y0 = (obj["x"] - obj["r"]) * size, (obj["y"] - obj["r"]) * size
    side = 2 * obj["r"] * size
    return [round(x0, 2), round(y0, 2), round(side, 2), round(side, 2)]


def draw_scene(objects: Iterable[Mapping[str, Any]], size: int, seed: int, image_id: str):
    """A PIL RGB image of the scene on a light, slightly tinted background."""
    from PIL import Image, ImageDraw

    rng = _rng(seed, "background", image_id)
    bg = tuple(rng.randint(205, 240) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        cx, cy, r = obj["x"] * size, obj["y"] * size, obj["r"] * size
        fill = COLORS[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


# --------------------------------------------------------------------------------------------------
# Questions, statements, captions (pure functions of a scene)
# --------------------------------------------------------------------------------------------------

VQA_TYPES: tuple[str, ...] = ("color", "shape", "count", "exist")
GQA_TYPES: tuple[str, ...] = ("color", "shape", "relation", "leftmost")


def _exist_question(scene: list[dict[str, Any]], rng: random.Random, want: bool) -> tuple[str, str]:
    if want:
        obj = rng.choice(scene)
        color, shape = obj["color"], obj["shape"]
    else:
        present = {(o["color"], o["shape"]) for o in scene}
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = rng.choice(absent)
    return f"is there {_a(color)} {shape}?", "yes" if want else "no"


def vqa_question(scene: list[dict[str, Any]], qtype: str, rng: random.Random) -> tuple[str, str, str, str]:
    """``(question, answer, question_type, answer_type)`` of kind ``qtype`` about ``scene``."""
    if qtype == "color":
        obj = rng.choice(scene)
        return f"what color is the {obj['shape']}?", obj["color"], "what color is the", "other"
    if qtype == "shape":
        obj = rng.choice(scene)
        return f"what shape is the {obj['color']} object?", obj["shape"], "what shape is the", "other"
    if qtype == "count":
        return "how many shapes are there?", str(len(scene)), "how many", "number"
    if qtype == "exist":
        q, a = _exist_question(scene, rng, rng.random() < 0.5)
        return q, a, "is there a", "yes/no"
    raise DemoWorldError(f"unknown demo question type {qtype!r}")


def gqa_question(scene: list[dict[str, Any]], qtype: str, rng: random.Random) -> tuple[str, str]:
    """``(question, answer)`` of GQA kind ``qtype``; relational kinds fall back on one-object scenes."""
    if qtype == "relation" and len(scene) >= 2:
        a, b = rng.sample(scene, 2)
        side = rng.choice(("left", "right"))
        truth = a["x"] < b["x"] if side == "left" else a["x"] > b["x"]
        return f"is the {a['shape']} to the {side} of the {b['shape']}?", "yes" if truth else "no"
    if qtype == "relation":
        return _exist_question(scene, rng, rng.random() < 0.5)
    if qtype == "leftmost":
        obj = scene[0] if rng.random() < 0.5 else scene[-1]
        which = "leftmost" if obj is scene[0] else "rightmost"
        return f"what color is the {which} shape?", obj["color"]
    if qtype == "color":
        obj = rng.choice(scene)
        return f"which color does the {obj['shape']} have?", obj["color"]
    obj = rng.choice(scene)
    return f"what is the shape of the {obj['color']} thing?", obj["shape"]


def _a(word: str) -> str:
    """``word`` with its indefinite article ("an orange", "a red")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _phrase(obj: Mapping[str, Any]) -> str:
    return f"{_a(obj['color'])} {obj['shape']}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def captions(scene: list[dict[str, Any]], rng: random.Random) -> list[str]:
    """Five template captions of ``scene``, objects named left to right."""
    n = len(scene)
    things = _join([_phrase(o) for o in scene])
    count = f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}"
    out = [f"{things}.", f"an image with {count}: {things}.", f"{count} on a plain background."]
    if n == 1:
        out.append(f"{_phrase(scene[0])} in the {scene[0]['slot']} of the image.")
        out.append(f"a single {scene[0]['color']} {scene[0]['shape']}.")
    else:
        a, b = scene[0], scene[1]
        out.append(f"{_phrase(a)} to the left of {_phrase(b)}.")
        out.append(f"{_phrase(scene[-1])} on the right and {_phrase(scene[0])} on the left.")
    rng.shuffle(out)
    return out


def nlvr_statement(left: list[dict[str, Any]], right: list[dict[str, Any]], rng: random.Random,
                   want: bool) -> str:
    """A statement about the pair (img0 = left image, img1 = right image) whose truth is ``want``."""
    for _ in range(200):
        kind = rng.randrange(4)
        if kind == 0:
            side, scene = rng.choice((("left", left), ("right", right)))
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            if want and rng.random() < 0.7:
                obj = rng.choice(scene)
                color, shape = obj["color"], obj["shape"]
            text = f"the {side} image contains {_a(color)} {shape}."
            truth = any(o["color"] == color and o["shape"] == shape for o in scene)
        elif kind == 1:
            side, scene = rng.choice((("left", left), ("right", right)))
            n = rng.randint(1, 3)
            text = f"the {side} image has exactly {NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}."
            truth = len(scene) == n
        elif kind == 2:
            shape = rng.choice(SHAPES)
            text = f"both images contain a {shape}."
            truth = any(o["shape"] == shape for o in left) and any(o["shape"] == shape for o in right)
        else:
            text = "there are more shapes in the left image than in the right image."
            truth = len(left) > len(right)
        if truth == want:
            return text
    raise DemoWorldError("could not build an NLVR statement")  # pragma: no cover - 200 tries always suffice


def _statement_pairs(left: list[dict[str, Any]], right: list[dict[str, Any]], rng: random.Random, first: bool,
                     pairs: int) -> list[tuple[bool, str]]:
    """Up to ``pairs`` distinct (``first``, ``not first``) statement pairs about an image pair, interleaved: as many
    true as false statements (a pair with few distinct true statements gets fewer pairs)."""
    found: dict[bool, list[str]] = {first: [], not first: []}
    for truth in found:
        for _ in range(4 * pairs):
            sent = nlvr_statement(left, right, rng, truth)
            if sent not in found[truth]:
                found[truth].append(sent)
            if len(found[truth]) == pairs:
                break
    return [(t, found[t][k]) for k in range(min(map(len, found.values()))) for t in (first, not first)]


def nlvr_truth(statement: str, left: list[dict[str, Any]], right: list[dict[str, Any]]) -> bool:
    """Re-derive the truth of a statement built by :func:`nlvr_statement` (used by the tests)."""
    words = statement.rstrip(".").split()
    if statement.startswith("both images"):
        shape = words[-1]
        return any(o["shape"] == shape for o in left) and any(o["shape"] == shape for o in right)
    if statement.startswith("there are more"):
        return len(left) > len(right)
    scene = left if words[1] == "left" else right
    if "exactly" in words:
        return len(scene) == {v: k for k, v in NUMBER_WORDS.items()}[words[5]]
    color, shape = words[-2], words[-1]
    return any(o["color"] == color and o["shape"] == shape for o in scene)


# --------------------------------------------------------------------------------------------------
# The data root
# --------------------------------------------------------------------------------------------------


def coco_id(set_name: str, k: int) -> str:
    return f"COCO_{set_name}_{k:012d}"


def _dump(path: Path, obj: Any, counts: dict[str, int], n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    counts[path.as_posix()] = n


def _sizes(n_images: Mapping[str, int] | None) -> dict[str, int]:
    sizes = dict(DEFAULT_SIZES)
    for key, value in (n_images or {}).items():
        if key not in DEFAULT_SIZES:
            raise DemoWorldError(f"unknown demo size {key!r}; fix: use {', '.join(DEFAULT_SIZES)}")
        if int(value) < 2:
            raise DemoWorldError(f"demo size {key}={value}: needs at least 2 images")
        sizes[key] = int(value)
    return sizes


class _Writer:
    """Draws and saves images once each, remembering every scene."""

    def __init__(self, root: Path, seed: int, size: int, progress: Progress):
        self.root, self.seed, self.size, self.progress = root, seed, size, progress
        self.scenes: dict[str, list[dict[str, Any]]] = {}
        self.n_written = 0

    def image(self, folder: str, image_id: str, ext: str, n_objects: int | None = None) -> list[dict[str, Any]]:
        if image_id in self.scenes:
            return self.scenes[image_id]
        scene = make_scene(self.seed, image_id, n_objects)
        self.scenes[image_id] = scene
        path = self.root / folder / f"{image_id}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img = draw_scene(scene, self.size, self.seed, image_id)
        if ext == "png":
            img.save(path, format="PNG")
        else:
            img.save(path, format="JPEG", quality=95)
        self.n_written += 1
        if self.progress is not None and self.n_written % 500 == 0:
            self.progress(f"{self.n_written} images drawn")
        return scene


def make_world(
    root: Path,
    *,
    seed: int = 0,
    n_images: dict[str, int] | None = None,
    image_size: int = IMAGE_SIZE,
    progress: Progress = None,
) -> dict[str, Any]:
    """Write the demo data root under ``root`` and return a summary (also saved as ``demo/world.json``).

    ``n_images`` overrides the images per split (keys ``train``, ``val``, ``test``). The summary has
    ``counts`` (records per written file, relative path -> n), ``majority_answer`` (of the VQA
    training split) and ``majority_baseline`` (its VQA accuracy on ``karpathy_val``), plus the same
    for GQA (on ``testdev``).
    """
    root = Path(root)
    sizes = _sizes(n_images)
    n_train, n_val, n_test = sizes["train"], sizes["val"], sizes["test"]
    w = _Writer(root, seed, int(image_size), progress)
    counts: dict[str, int] = {}

    # ---- VQA on COCO images: karpathy_train <- train2014, karpathy_val/test <- val2014, test <- test2015
    vqa_splits = {
        "karpathy_train": [coco_id("train2014", k + 1) for k in range(n_train)],
        "karpathy_val": [coco_id("val2014", k + 1) for k in range(n_val)],
        "karpathy_test": [coco_id("val2014", n_val + k + 1) for k in range(n_test)],
        "test": [coco_id("test2015", k + 1) for k in range(n_test)],
    }
    official: dict[str, list[dict[str, Any]]] = {"train2014": [], "val2014": []}
    vqa_records: dict[str, list[dict[str, Any]]] = {}
    for split, ids in vqa_splits.items():
        records = []
        for i, img_id in enumerate(ids):
            set_name = img_id.split("_")[1]
            scene = w.image(f"COCO/images/{set_name}", img_id, "jpg")
            rng = _rng(seed, "vqa", img_id)
            numeric = int(img_id.rsplit("_", 1)[1])
            per_image = TRAIN_QUESTIONS if split == "karpathy_train" else 2
            asked: set[str] = set()
            for k in range(per_image):
                qtype = VQA_TYPES[(per_image * i + k) % len(VQA_TYPES)]
                q, a, question_type, answer_type = vqa_question(scene, qtype, rng)
                if q in asked:  # "how many shapes are there?" twice: once is enough
                    continue
                asked.add(q)
                qid = numeric * 1000 + k + (0 if set_name == "train2014" else 100 if set_name == "val2014" else 200)
                rec: dict[str, Any] = {"img_id": img_id, "sent": q, "question_id": qid}
                if split != "test":
                    answers = [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
                    rec.update(label={a: 1.0}, answers=answers, answer_type=answer_type,
                               question_type=question_type, is_topk_optimal=True)
                    official[set_name].append({
                        "question_id": qid, "image_id": numeric, "question_type": question_type,
                        "answer_type": answer_type, "multiple_choice_answer": a, "answers": answers,
                    })
                records.append(rec)
        vqa_records[split] = records
        _dump(root / f"vqa/{split}.json", records, counts, len(records))
    for set_name, anns in official.items():
        doc = {"info": {"description": "vlcli demo shapes world"}, "license": {}, "data_subtype": set_name,
               "data_type": "mscoco", "annotations": anns}
        _dump(root / f"vqa/v2_mscoco_{set_name}_annotations.json", doc, counts, len(anns))
    vqa_answers = sorted({a for recs in vqa_records.values() for r in recs for a in r.get("label", {})})
    _dump(root / "vqa/trainval_ans2label.json", {a: i for i, a in enumerate(vqa_answers)}, counts, len(vqa_answers))
    _dump(root / "vqa/trainval_label2ans.json", vqa_answers, counts, len(vqa_answers))

    # ---- GQA: train/valid <- VG images, testdev/submit <- GQA images
    gqa_splits = {
        "train": ("VG/VG_100K", [str(1_000_000 + k) for k in range(n_train)]),
        "valid": ("VG/VG_100K", [str(2_000_000 + k) for k in range(n_val)]),
        "testdev": ("GQA/images", [f"n{3_000_000 + k}" for k in range(n_test)]),
        "submit": ("GQA/images", [f"n{4_000_000 + k}" for k in range(n_test)]),
    }
    gqa_records: dict[str, list[dict[str, Any]]] = {}
    qid = 0
    for split, (folder, ids) in gqa_splits.items():
        records = []
        for i, img_id in enumerate(ids):
            scene = w.image(folder, img_id, "jpg")
            rng = _rng(seed, "gqa", img_id)
            for k in range(2):
                q, a = gqa_question(scene, GQA_TYPES[(2 * i + k) % len(GQA_TYPES)], rng)
                qid += 1
                rec = {"img_id": img_id, "sent": q, "question_id": f"{qid:08d}"}
                if split != "submit":
                    rec["label"] = {a: 1.0}
                records.append(rec)
        gqa_records[split] = records
        _dump(root / f"GQA/{split}.json", records, counts, len(records))
    gqa_answers = sorted({a for recs in gqa_records.values() for r in recs for a in r.get("label", {})})
    _dump(root / "GQA/trainval_ans2label.json", {a: i for i, a in enumerate(gqa_answers)}, counts, len(gqa_answers))
    _dump(root / "GQA/trainval_label2ans.json", gqa_answers, counts, len(gqa_answers))

    # ---- NLVR2: pairs of images, statements alternately true and false (TRAIN_STATEMENTS per train pair, 2 otherwise)
    for split, n in (("train", n_train), ("valid", n_val), ("test", n_test)):
        records = []
        per_pair = TRAIN_STATEMENTS if split == "train" else 2
        for p in range(max(1, n // 2)):
            ident = f"{split}-{p}-0"
            img0, img1 = f"{ident}-img0", f"{ident}-img1"
            left, right = w.image("nlvr/images", img0, "png"), w.image("nlvr/images", img1, "png")
            rng = _rng(seed, "nlvr", ident)
            first = rng.random() < 0.5
            for s, (truth, sent) in enumerate(_statement_pairs(left, right, rng, first, per_pair // 2)):
                records.append({"identifier": f"{ident}-{s}", "img0": img0, "img1": img1, "label": int(truth),
                                "sent": sent, "uid": f"nlvr2_{split}_{len(records)}"})
        _dump(root / f"nlvr/{split}.json", records, counts, len(records))

    # ---- COCO Karpathy captions: train2014 -> train, karpathy_val/test images -> val/test
    images, sentid = [], 0
    karpathy = (("train", vqa_splits["karpathy_train"]), ("val", vqa_splits["karpathy_val"]),
                ("test", vqa_splits["karpathy_test"]))
    for imgid, (split, img_id) in enumerate((s, i) for s, ids in karpathy for i in ids):
        caps = captions(w.scenes[img_id], _rng(seed, "caption", img_id))
        sents = []
        for c in caps:
            sents.append({"tokens": c.rstrip(".").replace(":", "").replace(",", "").split(), "raw": c,
                          "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({"filepath": img_id.split("_")[1], "sentids": [s["sentid"] for s in sents],
                       "filename": f"{img_id}.jpg", "imgid": imgid, "split": split, "sentences": sents,
                       "cocoid": int(img_id.rsplit("_", 1)[1])})
    _dump(root / "COCO/dataset_coco.json", {"images": images, "dataset": "coco"}, counts, len(images))

    _refcocog(root, w, vqa_splits["karpathy_train"], counts)
    _classification(root, w, sizes, counts)
    _pretraining(root, w, vqa_records, gqa_records, vqa_splits, gqa_splits, counts)

    # ---- scenes (ground truth for tests and the curious) and the summary
    scenes = {k: w.scenes[k] for k in sorted(w.scenes)}
    _dump(root / SCENES, scenes, counts, len(scenes))
    summary = {
        "version": WORLD_VERSION,
        "seed": seed,
        "image_size": int(image_size),
        "n_images": sizes,
        "images_written": w.n_written,
        "counts": dict(sorted((str(Path(k).relative_to(root).as_posix()), v) for k, v in counts.items())),
        **_baselines(vqa_records["karpathy_train"], vqa_records["karpathy_val"], "vqa"),
        **_baselines(gqa_records["train"], gqa_records["testdev"], "gqa"),
    }
    summary["counts"][MANIFEST] = 1
    (root / MANIFEST).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def majority_answer(records: Iterable[Mapping[str, Any]]) -> str:
    """The most frequent top answer of the records' ``label`` dicts (ties: alphabetically first)."""
    counter = Counter(max(r["label"], key=lambda a: (r["label"][a], a)) for r in records if r.get("label"))
    return min(counter, key=lambda a: (-counter[a], a))


def vqa_accuracy(answer: str, record: Mapping[str, Any]) -> float:
    """Official-style VQA accuracy of ``answer``: min(1, #humans who gave it / 3)."""
    humans = [h["answer"] for h in record.get("answers", [])]
    if not humans:
        return float(record.get("label", {}).get(answer, 0.0))
    return min(1.0, sum(h == answer for h in humans) / 3.0)


def _baselines(train: list[dict[str, Any]], val: list[dict[str, Any]], task: str) -> dict[str, Any]:
    answer = majority_answer(train)
    acc = sum(vqa_accuracy(answer, r) for r in val) / max(1, len(val))
    if task == "vqa":
        return {"majority_answer": answer, "majority_baseline": round(acc, 6)}
    return {"gqa_majority_answer": answer, "gqa_majority_baseline": round(acc, 6)}


def _refcocog(root: Path, w: _Writer, train_ids: list[str], counts: dict[str, int]) -> None:
    """RefCOCOg-style ``refs(umd).p`` + ``instances.json`` over COCO train2014 images (spec §1.5)."""
    cats = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    cat_id = {c["name"]: c["id"] for c in cats}
    n = len(train_ids)
    split_of = lambda k: "train" if k < n * 0.7 else "val" if k < n * 0.85 else "test"  # noqa: E731
    images, anns, refs = [], [], []
    ann_id = ref_id = sent_id = 0
    for k, img_id in enumerate(train_ids):
        scene = w.scenes[img_id]
        numeric = int(img_id.rsplit("_", 1)[1])
        images.append({"id": numeric, "file_name": f"{img_id}.jpg", "width": w.size, "height": w.size})
        rng = _rng(w.seed, "refcocog", img_id)
        for obj in scene:
            ann_id += 1
            bbox = box_of(obj, w.size)
            anns.append({"id": ann_id, "image_id": numeric, "category_id": cat_id[obj["shape"]], "bbox": bbox,
                         "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0, "segmentation": []})
            if len(scene) < 2:
                continue  # a referring expression needs a distractor
            texts = [f"the {obj['color']} {obj['shape']}", f"the {obj['shape']} in the {obj['slot']}"]
            rng.shuffle(texts)
            sents = []
            for t in texts:
                sent_id += 1
                sents.append({"raw": t + ".", "sent": t, "tokens": t.split(), "sent_id": sent_id})
            ref_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": numeric, "split": split_of(k),
                         "sentences": sents, "sent_ids": [s["sent_id"] for s in sents],
                         "category_id": cat_id[obj["shape"]], "file_name": f"{img_id}.jpg"})
    folder = root / "RefCOCO/refcocog"
    _dump(folder / "instances.json", {"images": images, "annotations": anns, "categories": cats}, counts, len(anns))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=4))
    counts[(folder / "refs(umd).p").as_posix()] = len(refs)


def _classification(root: Path, w: _Writer, sizes: dict[str, int], counts: dict[str, int]) -> None:
    """TinyImageNet-style classification: one shape per image, class = "<colour> <shape>" (spec §1.7)."""
    classes = [(c, s) for s in SHAPES for c in COLORS]
    wnids = [f"n{90_000_000 + i:08d}" for i in range(len(classes))]
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    lines = [f"{wnid}\t{c} {s}, {s}\n" for wnid, (c, s) in zip(wnids, classes, strict=True)]
    (base / "words.txt").write_text("".join(lines), encoding="utf-8")
    (base / "wnids.txt").write_text("".join(f"{x}\n" for x in wnids), encoding="utf-8")
    counts[(base / "words.txt").as_posix()] = len(lines)
    for split, n in (("train", max(1, sizes["train"] // 60)), ("val", max(1, sizes["val"] // 50))):
        listing = []
        for wnid, (color, shape) in zip(wnids, classes, strict=True):
            for k in range(n):
                img_id = f"{wnid}_{split}{k}"
                scene = make_scene(w.seed, img_id, 1)
                scene[0].update(color=color, shape=shape)  # the class decides what is drawn
                w.scenes[img_id] = scene
                path = base / split / wnid / "images" / f"{img_id}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                draw_scene(scene, w.size, w.seed, img_id).save(path, format="JPEG", quality=95)
                w.n_written += 1
                listing.append(f"{img_id}.JPEG\t{wnid}\n")
        (base / f"{split}_annotations.txt").write_text("".join(listing), encoding="utf-8")
        counts[(base / f"{split}_annotations.txt").as_posix()] = len(listing)


def _pretraining(root: Path, w: _Writer, vqa: dict[str, list[dict[str, Any]]], gqa: dict[str, list[dict[str, Any]]],
                 vqa_splits: dict[str, list[str]], gqa_splits: dict[str, Any], counts: dict[str, int]) -> None:
    """LXMERT-style pretraining files (spec §1.8): captions + QA per image, ``lxmert/all_ans.json``."""

    def by_image(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            out.setdefault(r["img_id"], []).append(r)
        return out

    def record(img_id: str, cap_source: str, qa_source: str, qas: list[dict[str, Any]]) -> dict[str, Any]:
        caps = captions(w.scenes[img_id], _rng(w.seed, "caption", img_id))
        return {"img_id": img_id, "sentf": {cap_source: caps, qa_source: [q["sent"] for q in qas]},
                "labelf": {qa_source: [q["label"] for q in qas]}}

    vqa_train, vqa_val = by_image(vqa["karpathy_train"]), by_image(vqa["karpathy_val"])
    gqa_train = by_image(gqa["train"])
    files = {
        "mscoco_resplit_train": [record(i, "mscoco", "vqa", vqa_train[i]) for i in vqa_splits["karpathy_train"]],
        "vgnococo": [record(i, "vg", "gqa", gqa_train[i]) for i in gqa_splits["train"][1]],
        "mscoco_resplit_val": [record(i, "mscoco", "vqa", vqa_val[i]) for i in vqa_splits["karpathy_val"]],
    }
    answers: set[str] = set()
    for name, recs in files.items():
        for r in recs:
            for labels in r["labelf"].values():
                for lab in labels:
                    answers.update(lab)
        _dump(root / f"lxmert/{name}.json", recs, counts, len(recs))
    _dump(root / "lxmert/all_ans.json", [{"ans": a, "ans_sources": ["demo"]} for a in sorted(answers)], counts,
          len(answers))


def load_scenes(root: Path) -> dict[str, list[dict[str, Any]]]:
    """The scene of every image of a demo world written by :func:`make_world`."""
    return json.loads((Path(root) / SCENES).read_text(encoding="utf-8"))


def world_corpus(root: Path) -> list[str]:
    """Every text of the world (questions, answers, captions, statements, referring expressions,
    class names) plus vlcli's task prompts, in a fixed order, for training the demo tokenizers."""
    root = Path(root)
    texts: list[str] = [
        "vqa:", "gqa:", "gpa:", "nlvr:", "caption:", "cls:", "visual grounding:", "span prediction:",
        "denoise text:", "image text match:", "caption region:", "true", "false",
    ]

    def read(rel_path: str) -> Any:
        path = root / rel_path
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    for split in ("karpathy_train", "karpathy_val", "karpathy_test", "test"):
        for r in read(f"vqa/{split}.json"):
            texts.append(r["sent"])
            texts.extend(r.get("label", {}))
    for split in ("train", "valid", "testdev", "submit"):
        for r in read(f"GQA/{split}.json"):
            texts.append(r["sent"])
            texts.extend(r.get("label", {}))
    for split in ("train", "valid", "test"):
        texts.extend(r["sent"] for r in read(f"nlvr/{split}.json"))
    coco = read("COCO/dataset_coco.json")
    for img in coco.get("images", []) if isinstance(coco, dict) else []:
        texts.extend(s["raw"] for s in img["sentences"])
    refs = root / "RefCOCO/refcocog/refs(umd).p"
    if refs.is_file():
        for ref in pickle.loads(refs.read_bytes()):
            texts.extend(s["sent"] for s in ref["sentences"])
    words = root / "tiny-imagenet-200/words.txt"
    if words.is_file():
        texts.extend(line.split("\t", 1)[1].split(",")[0].strip() for line in words.read_text().splitlines())
    return texts
