"""The demo shapes world (vlcli.demo): layout, answer correctness, determinism, baseline, backbones."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from vlcli.data.layout import task_layout
from vlcli.demo import DEMO_SIZES, DemoWorldError, load_scenes, make_backbones, make_world, world_corpus
from vlcli.demo.world import COLORS, SHAPES, TRAIN_QUESTIONS, make_scene, nlvr_truth

SIZES = {"train": 24, "val": 8, "test": 8}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, make_world(root, seed=3, n_images=SIZES)


@pytest.fixture(scope="module")
def backbones(world: tuple[Path, dict]) -> dict[str, Path]:
    root, _ = world
    return make_backbones(root, world_corpus(root))


def _load(root: Path, rel: str):
    return json.loads((root / rel).read_text(encoding="utf-8"))


SPLITS = {
    "vqa": ("karpathy_train", "karpathy_val", "karpathy_test", "test"),
    "gqa": ("train", "valid", "testdev", "submit"),
    "nlvr": ("train", "valid", "test"),
    "caption": ("karpathy_train", "karpathy_val", "karpathy_test"),
}


@pytest.mark.parametrize("task", sorted(SPLITS))
def test_annotation_and_image_paths_resolve_through_the_layout(world, task):
    root, _ = world
    for split in SPLITS[task]:
        layout = task_layout(task, split, "raw_RN50", data_root=root)
        for item in layout.paths():
            if task == "gqa" and split == "submit" and item.kind == "images":
                continue  # raw submit reads VG (spec §1.2); the world puts submit images under GQA/images
            assert item.path.exists(), f"{task}/{split}: {item.name} -> {item.path}"


def _image_files(root: Path) -> dict[str, Path]:
    exts = {".jpg", ".png", ".JPEG"}
    return {p.stem: p for p in root.rglob("*") if p.suffix in exts}


def test_every_referenced_image_exists(world):
    root, _ = world
    files = _image_files(root)
    for split in SPLITS["vqa"]:
        for r in _load(root, f"vqa/{split}.json"):
            set_name = r["img_id"].split("_")[1]
            assert files[r["img_id"]] == root / "COCO/images" / set_name / f"{r['img_id']}.jpg"
    for split in SPLITS["gqa"]:
        folder = "VG/VG_100K" if split in ("train", "valid") else "GQA/images"
        for r in _load(root, f"GQA/{split}.json"):
            assert files[r["img_id"]] == root / folder / f"{r['img_id']}.jpg"
    for split in SPLITS["nlvr"]:
        for r in _load(root, f"nlvr/{split}.json"):
            for key in ("img0", "img1"):
                assert files[r[key]] == root / "nlvr/images" / f"{r[key]}.png"
    for img in _load(root, "COCO/dataset_coco.json")["images"]:
        assert (root / "COCO/images" / img["filepath"] / img["filename"]).is_file()
        assert len(img["sentences"]) == 5
    for img in _load(root, "RefCOCO/refcocog/instances.json")["images"]:
        assert (root / "COCO/images/train2014" / img["file_name"]).is_file()
    for line in (root / "tiny-imagenet-200/train_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")
        assert (root / "tiny-imagenet-200/train" / wnid / "images" / name).is_file()
        assert name.split("_")[0] == wnid  # the class is the stem's part before "_" (spec §1.7)


def _answer(question: str, scene: list[dict]) -> str:
    """An answerer written independently of the generator: reads the scene, parses the question."""
    by_shape = {o["shape"]: o for o in scene}
    by_color = {o["color"]: o for o in scene}
    if m := re.fullmatch(r"what color is the (\w+)\?|which color does the (\w+) have\?", question):
        return by_shape[m.group(1) or m.group(2)]["color"]
    if m := re.fullmatch(r"what shape is the (\w+) object\?|what is the shape of the (\w+) thing\?", question):
        return by_color[m.group(1) or m.group(2)]["shape"]
    if question == "how many shapes are there?":
        return str(len(scene))
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if m.group(1) in by_color and by_color[m.group(1)]["shape"] == m.group(2) else "no"
    if m := re.fullmatch(r"is the (\w+) to the (left|right) of the (\w+)\?", question):
        a, b = by_shape[m.group(1)]["x"], by_shape[m.group(3)]["x"]
        return "yes" if (a < b if m.group(2) == "left" else a > b) else "no"
    if m := re.fullmatch(r"what color is the (leftmost|rightmost) shape\?", question):
        xs = sorted(scene, key=lambda o: o["x"])
        return (xs[0] if m.group(1) == "leftmost" else xs[-1])["color"]
    raise AssertionError(f"unexpected question {question!r}")


def test_answers_follow_from_the_drawn_scenes(world):
    root, _ = world
    scenes = load_scenes(root)
    n = 0
    for rel in ("vqa/karpathy_train.json", "vqa/karpathy_val.json", "GQA/train.json", "GQA/testdev.json"):
        for r in _load(root, rel):
            (answer,) = r["label"]
            assert _answer(r["sent"], scenes[r["img_id"]]) == answer, r
            n += 1
    assert n > 100
    for r in _load(root, "nlvr/train.json"):
        assert nlvr_truth(r["sent"], scenes[r["img0"]], scenes[r["img1"]]) == bool(r["label"]), r
    # The stored scene is the one the generator derives from (seed, image id).
    some = _load(root, "vqa/karpathy_val.json")[0]["img_id"]
    assert scenes[some] == make_scene(3, some)


def test_drawn_pixels_show_the_scene(world):
    from PIL import Image

    root, _ = world
    scenes = load_scenes(root)
    img_id = _load(root, "vqa/karpathy_train.json")[0]["img_id"]
    img = Image.open(root / "COCO/images/train2014" / f"{img_id}.jpg").convert("RGB")
    for obj in scenes[img_id]:
        # Near the shape's centre (a bit low: a triangle's apex is thin) the pixel is the object's colour.
        px = img.getpixel((int(obj["x"] * img.width), int((obj["y"] + obj["r"] / 3) * img.height)))
        assert max(abs(a - b) for a, b in zip(px, COLORS[obj["color"]], strict=True)) < 40, (obj, px)


def test_formats_and_balance(world):
    root, summary = world
    train = _load(root, "vqa/karpathy_train.json")
    assert {"img_id", "sent", "question_id", "label", "answers", "answer_type", "question_type"} <= set(train[0])
    assert len(train[0]["answers"]) == 10 and all(set(r["label"].values()) == {1.0} for r in train)
    assert all("label" not in r for r in _load(root, "vqa/test.json"))
    assert all("label" not in r for r in _load(root, "GQA/submit.json"))
    official = _load(root, "vqa/v2_mscoco_val2014_annotations.json")["annotations"]
    val = {r["question_id"]: r for r in _load(root, "vqa/karpathy_val.json") + _load(root, "vqa/karpathy_test.json")}
    assert {a["question_id"] for a in official} == set(val)
    ans2label = _load(root, "vqa/trainval_ans2label.json")
    assert _load(root, "vqa/trainval_label2ans.json") == sorted(ans2label, key=ans2label.get)
    assert set(ans2label) <= {*COLORS, *SHAPES, "1", "2", "3", "yes", "no"}
    qids = [r["question_id"] for s in SPLITS["vqa"] for r in _load(root, f"vqa/{s}.json")]
    assert len(qids) == len(set(qids))
    nlvr = _load(root, "nlvr/train.json")
    assert Counter(r["label"] for r in nlvr) == {0: len(nlvr) // 2, 1: len(nlvr) // 2}
    assert {"identifier", "img0", "img1", "label", "sent", "uid"} == set(nlvr[0])
    refs = pickle.loads((root / "RefCOCO/refcocog/refs(umd).p").read_bytes())
    assert refs and {"ref_id", "ann_id", "image_id", "split", "sentences"} <= set(refs[0])
    pre = _load(root, "lxmert/mscoco_resplit_train.json")
    assert set(pre[0]["sentf"]) == {"mscoco", "vqa"} and len(pre[0]["labelf"]["vqa"]) == len(pre[0]["sentf"]["vqa"])
    # up to TRAIN_QUESTIONS per training image, each question text once per image; 2 per image elsewhere
    per_image = Counter(r["img_id"] for r in train)
    assert len(per_image) == SIZES["train"] and max(per_image.values()) <= TRAIN_QUESTIONS
    assert all(len({r["sent"] for r in train if r["img_id"] == i}) == n for i, n in per_image.items())
    assert summary["counts"]["vqa/karpathy_train.json"] == len(train) > 4 * SIZES["train"]
    assert len(_load(root, "vqa/karpathy_val.json")) == 2 * SIZES["val"]
    assert json.loads((root / "demo/world.json").read_text()) == summary


def test_majority_baseline(world):
    root, summary = world
    top = Counter(next(iter(r["label"])) for r in _load(root, "vqa/karpathy_train.json"))
    best = max(top.values())
    assert summary["majority_answer"] == min(a for a, c in top.items() if c == best)
    val = _load(root, "vqa/karpathy_val.json")
    hits = sum(next(iter(r["label"])) == summary["majority_answer"] for r in val)
    assert summary["majority_baseline"] == pytest.approx(hits / len(val), abs=1e-6)
    assert summary["majority_baseline"] < 0.35  # balanced answers: far from a one-answer world


def test_default_world_is_balanced(tmp_path):
    # Scenes and questions only (no drawing needed): the answer distribution of a default-size train split.
    from vlcli.demo.world import VQA_TYPES, _rng, vqa_question

    answers = Counter()
    for i in range(600):
        img_id = f"COCO_train2014_{i + 1:012d}"
        scene, rng = make_scene(0, img_id), _rng(0, "vqa", img_id)
        for k in range(2):
            answers[vqa_question(scene, VQA_TYPES[(2 * i + k) % 4], rng)[1]] += 1
    assert max(answers.values()) / sum(answers.values()) < 0.15


def _hashes(root: Path) -> dict[str, str]:
    kinds = {".json", ".p", ".txt"}
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.suffix in kinds and "backbones" not in p.parts
    }


def test_same_seed_gives_identical_files(tmp_path):
    small = {"train": 6, "val": 4, "test": 4}
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_world(a, seed=7, n_images=small)
    make_world(b, seed=7, n_images=small)
    make_world(c, seed=8, n_images=small)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert len(ha) > 20 and ha == hb
    assert ha["vqa/karpathy_train.json"] != hc["vqa/karpathy_train.json"]
    assert sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png")) == sorted(
        p.relative_to(b).as_posix() for p in b.rglob("*.png")
    )


def test_bad_sizes_are_clear_errors(tmp_path):
    with pytest.raises(DemoWorldError, match="unknown demo size"):
        make_world(tmp_path, n_images={"training": 5})
    with pytest.raises(DemoWorldError, match="at least 2"):
        make_world(tmp_path, n_images={"val": 0})


def test_corpus_covers_the_world(world):
    root, _ = world
    corpus = world_corpus(root)
    text = " ".join(corpus)
    for word in (*COLORS, *SHAPES, "yes", "no", "how many", "true", "false", "left image"):
        assert word in text
    assert corpus == world_corpus(root)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_backbones_load_through_the_api_and_train(backbones, family):
    from vlcli import api

    path = backbones[family]
    assert path.name == f"{family}-demo"
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == family and config["d_model"] == DEMO_SIZES[family]["d_model"]
    s = api.load_settings(task="vqa", backbone=str(path), feat_dim=2048)
    tok = api.build_tokenizer(s)
    m = api.build_model(s, tokenizer=tok)
    # Whole words of the world are single tokens for BART and few pieces for T5.
    assert len(tok.encode("what color is the circle?")) <= 12
    enc = tok.batch_encode(["vqa: what color is the circle?"])
    labels = torch.tensor([tok.encode("red")])
    torch.manual_seed(0)
    out = m(enc["input_ids"], enc["attention_mask"], torch.randn(1, 4, 2048), torch.zeros(1, 4, 4), labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
