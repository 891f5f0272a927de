"""`vlcli extract-features`: CLIP grids through open_clip (random-initialised towers), BUTD TSV conversion."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from vlcli.data.features import BUTDStore, CLIPStore, ConsolidatedStore
from vlcli.features import clip as clip_mod
from vlcli.features.butd import FIELDNAMES, convert_butd_tsv
from vlcli.features.clip import ClipGridEncoder, Weights, build_tower, interpolate_pos_embed
from vlcli.features.common import ExtractionError
from vlcli.features.images import Preprocess, list_images

SEED = 9595  # the settings' default seed: what `--random_init` uses


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def towers() -> dict[str, tuple[torch.nn.Module, dict]]:
    """Random towers, built once per module and handed to every CLI run through ``build_tower``."""
    return {}


@pytest.fixture
def cached_towers(monkeypatch, towers):
    original = clip_mod.build_tower

    def cached(feature_type: str, weights: Weights):
        if weights.kind != "random":
            return original(feature_type, weights)
        key = f"{feature_type}/{weights.seed}"
        if key not in towers:
            towers[key] = original(feature_type, weights)
        tower, info = towers[key]
        return copy.deepcopy(tower), dict(info)  # extraction moves its tower (to a GPU, to fp16): keep ours

    monkeypatch.setattr(clip_mod, "build_tower", cached)
    return cached


def make_images(folder: Path, n: int = 3, seed: int = 0) -> list[Path]:
    """PNG images of different sizes and modes (RGB, grayscale, RGBA)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = 60 + 17 * i, 90 - 11 * i
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i % 3 == 1:
            image = image.convert("L")
        elif i % 3 == 2:
            image = image.convert("RGBA")
        path = folder / f"img_{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def extract(cli, images: Path, out: Path, *extra: str, feature_type: str = "RN50"):
    return cli("extract-features", "--feature_type", feature_type, "--images", str(images), "--out", str(out),
               "--random_init", *extra)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------ RN50 grid


def test_rn50_per_image_readable_by_clipstore(cli, cached_towers, tmp_path):
    paths = make_images(tmp_path / "images", 3)
    r = extract(cli, tmp_path / "images", tmp_path / "out")
    assert r.code == 0, r.err
    assert "extracted 3 images with RN50" in r.out and "224 px" in r.out
    folder = tmp_path / "out" / "data_clip_RN50_att"
    assert sorted(p.name for p in folder.glob("*.h5")) == ["img_000.h5", "img_001.h5", "img_002.h5"]
    with h5py.File(folder / "img_000.h5", "r") as f:  # the original layout: group {stem}, dataset features
        assert f["img_000/features"].shape == (49, 2048) and f["img_000/features"].dtype == np.float16

    store = CLIPStore(folder, feat_dim=2048)
    assert store.ids() == ["img_000", "img_001", "img_002"]
    tower, _ = cached_towers("RN50", Weights("random", seed=SEED))
    encoder = ClipGridEncoder(tower, 224)
    for p in paths:
        feats, boxes = store.get(p.stem)
        assert feats.shape == (49, 2048) and boxes.shape == (49, 4) and not boxes.any()
        assert np.abs(feats).max() > 0
    expected, _ = encoder(Preprocess(224)(Image.open(paths[2])).unsqueeze(0))  # the RGBA one
    want = expected[0].numpy().astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(store.get(paths[2].stem)[0], want, rtol=2e-3, atol=2e-3 * float(np.abs(want).max()))

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["image_size"] == 224 and manifest["tokens"] == 49
    assert manifest["dtype"] == "float16" and manifest["feat_dim"] == 2048
    assert manifest["weights"] == {"source": "random", "seed": SEED}
    assert manifest["preprocessing"]["mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert manifest["backbone"] == "open_clip RN50" and manifest["vlcli_version"]

    # a second run skips every image and rewrites nothing (not even the manifest)
    before = mtimes(folder)
    r = extract(cli, tmp_path / "images", tmp_path / "out")
    assert r.code == 0, r.err
    assert "skipped 3 images already extracted" in r.out and "extracted 3" not in r.out
    assert mtimes(folder) == before
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]


def test_truncated_image_reported_and_skipped(cli, cached_towers, tmp_path):
    paths = make_images(tmp_path / "images", 2)
    truncate(paths[1])
    r = extract(cli, tmp_path / "images", tmp_path / "out")
    assert r.code == 0, r.err
    assert "extracted 1 images" in r.out
    assert "skipped 1 unreadable image" in r.err and "img_001.png" in r.err and "truncated" in r.err
    folder = tmp_path / "out" / "data_clip_RN50_att"
    assert sorted(p.stem for p in folder.glob("*.h5")) == ["img_000"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == 1 and manifest["last_run"]["unreadable"][0][0].endswith("img_001.png")


def test_list_file_input_with_missing_entry(cli, cached_towers, tmp_path):
    make_images(tmp_path / "images", 2)
    listing = tmp_path / "images.txt"
    listing.write_text("# one image and one that is missing\nimages/img_001.png\n\nimages/gone.jpg\n")
    assert [p.name for p in list_images(listing)] == ["img_001.png", "gone.jpg"]
    r = extract(cli, listing, tmp_path / "out", "--image_size", "64")
    assert r.code == 0, r.err
    assert "extracted 1 images" in r.out and "gone.jpg (file not found)" in r.err


def test_consolidated_layout_matches_per_image(cli, cached_towers, tmp_path):
    make_images(tmp_path / "images", 2)
    small = ("--image_size", "64")  # a 2x2 grid: the layout, not the model, is under test here
    assert extract(cli, tmp_path / "images", tmp_path / "a", *small).code == 0
    r = extract(cli, tmp_path / "images", tmp_path / "b", "--layout", "consolidated", *small)
    assert r.code == 0, r.err
    target = tmp_path / "b" / "data_clip_RN50_att.h5"
    store = ConsolidatedStore(target, feat_dim=2048)
    per_image = CLIPStore(tmp_path / "a" / "data_clip_RN50_att")
    assert sorted(store.ids()) == ["img_000", "img_001"]
    for image_id in store.ids():
        feats, boxes = store.get(image_id)
        assert feats.shape == (4, 2048) and not boxes.any()
        assert np.array_equal(feats, per_image.get(image_id)[0])
    manifest = json.loads((tmp_path / "b" / "data_clip_RN50_att.manifest.json").read_text())
    assert manifest["layout"] == "consolidated" and manifest["count"] == 2

    # resuming a consolidated file: old images kept byte for byte, only the new one extracted
    make_images(tmp_path / "images", 3)
    r = extract(cli, tmp_path / "images", tmp_path / "b", "--layout", "consolidated", *small)
    assert r.code == 0 and "extracted 1 images" in r.out and "skipped 2 images" in r.out
    store = ConsolidatedStore(target, feat_dim=2048)
    assert sorted(store.ids()) == ["img_000", "img_001", "img_002"]
    assert np.array_equal(store.get("img_001")[0], per_image.get("img_001")[0])


def test_pooled_output_matches_open_clip_attention_pool(cli, cached_towers, tmp_path):
    paths = make_images(tmp_path / "images", 1)
    r = extract(cli, tmp_path / "images", tmp_path / "out", "--pooled", "--dtype", "float32")
    assert r.code == 0, r.err
    fc = CLIPStore(tmp_path / "out" / "data_clip_RN50_fc")
    tower, _ = cached_towers("RN50", Weights("random", seed=SEED))
    with torch.no_grad():
        reference = tower(torch.stack([Preprocess(224)(Image.open(p)) for p in paths]))  # open_clip's own forward
    for i, p in enumerate(paths):
        pooled, _ = fc.get(p.stem)
        assert pooled.shape == (1, 1024)
        np.testing.assert_allclose(pooled[0], reference[i].numpy(), rtol=1e-4, atol=1e-4)


def test_rn50_grid_size_follows_image_size(cached_towers):
    tower, _ = cached_towers("RN50", Weights("random", seed=SEED))
    encoder = ClipGridEncoder(tower, 96, pooled=True)
    grid, pooled = encoder(torch.zeros(1, 3, 96, 96))
    assert grid.shape == (1, 9, 2048) and pooled.shape == (1, 1024)


# ------------------------------------------------------------------------------------------ ViT


def test_vit_patch_tokens_grid_and_positional_embedding(cli, cached_towers, tmp_path):
    tower, _ = cached_towers("ViT", Weights("random", seed=SEED))
    x = torch.randn(1, 3, 224, 224)
    ours, _ = ClipGridEncoder(tower, 224)(x)
    assert ours.shape == (1, 49, 768)
    tower.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = tower(x)  # open_clip: ln_post(patch tokens) with the real positional embedding
    finally:
        tower.output_tokens = False
    with torch.no_grad():
        np.testing.assert_allclose(tower.ln_post(ours).numpy(), tokens.numpy(), rtol=1e-4, atol=1e-4)

    big = ClipGridEncoder(tower, 448)  # 14x14 at 448 px (the original assumed 14x14 at 224)
    assert big.grid == (14, 14) and big.pos.shape == (197, 768)

    make_images(tmp_path / "images", 1)
    r = extract(cli, tmp_path / "images", tmp_path / "out", "--image_size", "96", feature_type="ViT")
    assert r.code == 0, r.err
    assert "warning" not in r.err  # image_size is used here, not "ignored"
    feats, _ = CLIPStore(tmp_path / "out" / "data_clip_ViT_att", feat_dim=768).get("img_000")
    assert feats.shape == (9, 768)  # 3x3 patches at 96 px
    assert json.loads((tmp_path / "out" / "data_clip_ViT_att" / "manifest.json").read_text())["grid"] == [3, 3]


def test_interpolate_pos_embed():
    pos = torch.randn(50, 8)
    assert interpolate_pos_embed(pos, (7, 7)) is pos
    flat = torch.cat([torch.randn(1, 8), torch.ones(49, 8) * 3.0])
    resized = interpolate_pos_embed(flat, (5, 5))
    assert resized.shape == (26, 8)
    assert torch.equal(resized[0], flat[0]) and torch.allclose(resized[1:], torch.full((25, 8), 3.0))


# ------------------------------------------------------------------------------------------ weights


def test_local_weight_file_loads_into_the_tower(cli, cached_towers, tmp_path):
    tower, _ = cached_towers("RN50", Weights("random", seed=SEED))
    weights = tmp_path / "RN50.pt"
    torch.save({"state_dict": {f"module.visual.{k}": v for k, v in tower.state_dict().items()}}, weights)
    loaded, _ = build_tower("RN50", Weights("file", str(weights)))
    for key, value in tower.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    bad = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ExtractionError, match=r"other\.pt: does not fit the RN50 image tower"):
        build_tower("RN50", Weights("file", str(bad)))
    torch.save({"visual.proj": torch.zeros(1)}, bad)
    with pytest.raises(ExtractionError, match=r"does not match the RN50 image tower: missing \d+ .*unexpected 1"):
        build_tower("RN50", Weights("file", str(bad)))


def one_line_error(r, *needles: str) -> None:
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.err
    for needle in needles:
        assert needle in r.err, (needle, r.err)


def test_error_cases_exit_2_with_one_line(cli, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(extract(cli, empty, tmp_path / "out"), "no image files", str(empty))
    make_images(tmp_path / "images", 1)
    base = ("extract-features", "--feature_type", "RN50", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o"))
    one_line_error(cli(*base, "--clip_weights", str(tmp_path / "RN50.pt")), "--clip_weights", "no such file")
    one_line_error(cli(*base, "--clip_weights", "laion9000"), "neither a file nor an open_clip tag", "openai")
    one_line_error(cli(*base, "--clip_weights", "openai", "--random_init"), "exclude each other")
    one_line_error(cli(*base, "--random_init", "--image_size", "100"), "multiple of 32")
    one_line_error(cli(*base, "--random_init", "--layout", "flat"), "--layout flat", "per-image")
    if not torch.cuda.is_available():
        one_line_error(cli(*base, "--random_init", "--device", "cuda:7"), "--device cuda:7", "--device cpu")
    one_line_error(cli(*base[:2], "ViT", *base[3:], "--random_init", "--pooled"), "--pooled", "ResNet")
    one_line_error(cli("extract-features", *base[3:], "--random_init"), "--feature_type butd", "RN50")

    # no weights given and no network: the error says which option to use (and comes at once)
    import open_clip.pretrained

    def failing_download(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(clip_mod, "_cached_tag_file", lambda cfg: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_line_error(cli(*base), "not in the cache and there is no network", "--clip_weights PATH", "--random_init")
    monkeypatch.setattr(clip_mod, "_online", lambda cfg: True)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", failing_download)
    one_line_error(cli(*base), "could not download the open_clip weights of RN50", "--clip_weights PATH", "--random_init")
    assert not (tmp_path / "o").exists()


def test_manifest_guards_against_mixing_settings(cli, cached_towers, tmp_path):
    make_images(tmp_path / "images", 1)
    assert extract(cli, tmp_path / "images", tmp_path / "out", "--image_size", "64").code == 0
    make_images(tmp_path / "more", 1, seed=5)
    (tmp_path / "more" / "img_000.png").rename(tmp_path / "more" / "extra.png")
    one_line_error(extract(cli, tmp_path / "more", tmp_path / "out", "--image_size", "64", "--resize", "crop"),
                   "extracted with other settings", "another --out")


# ------------------------------------------------------------------------------------------ BUTD


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def make_tsv(path: Path, n_images: int = 3, boxes: int = 36, dim: int = 2048, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for i in range(n_images):
        img_id = f"COCO_val2014_{i:012d}"
        h, w = 480 + i, 640 - i
        x1 = rng.uniform(0, w / 2, boxes)
        y1 = rng.uniform(0, h / 2, boxes)
        b = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, boxes), y1 + rng.uniform(1, h / 2, boxes)], 1).astype(np.float32)
        item = {
            "img_id": img_id, "img_h": h, "img_w": w,
            "objects_id": rng.integers(0, 1600, boxes).astype(np.int64),
            "objects_conf": rng.random(boxes).astype(np.float32),
            "attrs_id": rng.integers(0, 400, boxes).astype(np.int64),
            "attrs_conf": rng.random(boxes).astype(np.float32),
            "num_boxes": boxes, "boxes": b,
            "features": rng.standard_normal((boxes, dim)).astype(np.float32),
        }
        truth[img_id] = item
        rows.append("\t".join(b64(v) if isinstance(v, np.ndarray) else str(v) for v in (item[k] for k in FIELDNAMES)))
    path.write_text("\n".join(rows) + "\n")
    return truth


def test_butd_tsv_converts_to_h5_read_by_butdstore(cli, tmp_path):
    tsv = tmp_path / "val2014_obj36.tsv"
    truth = make_tsv(tsv)  # a features column is ~393 KB of base64: over csv's default field limit
    r = cli("extract-features", "--butd_tsv", str(tsv), "--out", str(tmp_path / "features"))
    assert r.code == 0, r.err
    assert "converted 3 images (2048-d regions)" in r.out
    target = tmp_path / "features" / "val2014_obj36.h5"
    store = BUTDStore(target, n_boxes=36, feat_dim=2048)
    assert sorted(store.ids()) == sorted(truth)
    for img_id, item in truth.items():
        feats, boxes = store.get(img_id)
        assert np.array_equal(feats, item["features"])
        scale = np.array([item["img_w"], item["img_h"], item["img_w"], item["img_h"]], np.float64)
        expected = np.clip(item["boxes"].astype(np.float64) / scale, 0, 1).astype(np.float32)
        assert np.array_equal(boxes, expected)
    with h5py.File(target, "r") as f:
        group = f["COCO_val2014_000000000001"]
        item = truth["COCO_val2014_000000000001"]
        assert np.array_equal(group["obj_id"][()], item["objects_id"]) and group["obj_id"].dtype == np.int64
        assert np.array_equal(group["attr_conf"][()], item["attrs_conf"])
        assert np.array_equal(group["boxes"][()], item["boxes"])
        assert int(group["img_h"][()]) == 481 and int(group["img_w"][()]) == 639

    r = cli("extract-features", "--butd_tsv", str(tsv), "--out", str(target))
    assert r.code == 0 and "exists (3 images): skipped" in r.out


def test_butd_malformed_row_is_an_error_naming_the_line(cli, tmp_path):
    tsv = tmp_path / "bad.tsv"
    make_tsv(tsv, n_images=2, boxes=4, dim=8)
    lines = tsv.read_text().splitlines()
    cols = lines[1].split("\t")
    cols[8] = b64(np.zeros((3, 4), np.float32))  # 3 boxes for num_boxes 4
    tsv.write_text(lines[0] + "\n" + "\t".join(cols) + "\n")
    r = cli("extract-features", "--butd_tsv", str(tsv), "--out", str(tmp_path / "out"))
    one_line_error(r, "bad.tsv:2: column boxes has 12 float32 values, expected 16")
    assert not (tmp_path / "out" / "bad.h5").exists()
    assert not [p for p in (tmp_path / "out").iterdir()]  # no temporary file left behind
    with pytest.raises(ExtractionError, match="no such file"):
        convert_butd_tsv(tmp_path / "none.tsv", tmp_path / "out")

