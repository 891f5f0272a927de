"""h5 feature stores: the original BUTD / CLIP layouts, vlcli's consolidated file, routing, pickling."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from vlcli.data.features import (
    ArrayStore,
    BUTDStore,
    CLIPStore,
    ConsolidatedStore,
    FeatureError,
    RoutedStore,
    SubstringRoute,
    write_consolidated,
)


def butd_item(seed: int, n: int = 36, dim: int = 8, w: float = 200.0, h: float = 400.0) -> dict:
    """Features and in-image pixel boxes for one image (original §2.1 fields)."""
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(0, w / 2, n)
    y1 = rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, n), y1 + rng.uniform(1, h / 2, n)], 1)
    feats = rng.standard_normal((n, dim)).astype(np.float16)
    return {"features": feats, "boxes": boxes.astype(np.float32), "img_h": h, "img_w": w}


def write_butd(path: Path, items: dict[str, dict]) -> Path:
    """A BUTD h5 in the original layout: one group per image id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for image_id, item in items.items():
            g = f.create_group(image_id)
            n = item["features"].shape[0]
            g["features"] = item["features"]
            g["boxes"] = item["boxes"]
            g["img_h"] = int(item["img_h"])
            g["img_w"] = int(item["img_w"])
            g["num_boxes"] = n
            g["obj_id"] = np.arange(n, dtype=np.int64)
            g["obj_conf"] = np.ones(n, np.float32)
            g["attr_id"] = np.zeros(n, np.int64)
            g["attr_conf"] = np.ones(n, np.float32)
    return path


def write_clip(directory: Path, items: dict[str, np.ndarray]) -> Path:
    """CLIP grid features in the original layout: ``{dir}/{id}.h5`` with group ``{id}``, dataset ``features``."""
    directory.mkdir(parents=True, exist_ok=True)
    for image_id, feats in items.items():
        with h5py.File(directory / f"{image_id}.h5", "w") as f:
            f.create_group(image_id)["features"] = feats
    return directory


# --- BUTD ----------------------------------------------------------------------------------------


def test_butd_values_and_box_normalisation(tmp_path):
    item = butd_item(0)
    item["boxes"][0] = [10, 20, 110, 220]
    path = write_butd(tmp_path / "train2014_obj36.h5", {"COCO_train2014_000000000009": item})
    store = BUTDStore(path)
    feats, boxes = store.get("COCO_train2014_000000000009")
    assert feats.dtype == np.float32 and boxes.dtype == np.float32
    assert feats.shape == (36, 8) and boxes.shape == (36, 4)
    np.testing.assert_array_equal(feats, item["features"].astype(np.float32))
    np.testing.assert_allclose(boxes[0], [0.05, 0.05, 0.55, 0.55], rtol=1e-6)
    expected = item["boxes"].astype(np.float64) / [200, 400, 200, 400]
    np.testing.assert_allclose(boxes, expected, rtol=1e-6)
    assert store.feat_dim == 8
    assert "COCO_train2014_000000000009" in store and "COCO_val2014_1" not in store
    assert list(store.ids()) == ["COCO_train2014_000000000009"]


def test_butd_clamps_within_tolerance(tmp_path):
    item = butd_item(1, n=2)
    # 5e-6 outside the image on both sides: within the 1e-5 tolerance, clamped to [0, 1].
    item["boxes"][0] = [-200 * 5e-6, 0, 200 * (1 + 5e-6), 400]
    path = write_butd(tmp_path / "f.h5", {"img": item})
    _, boxes = BUTDStore(path).get("img")
    assert boxes[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0


@pytest.mark.parametrize("coord, value", [(2, 200 * 1.001), (0, -1.0)])
def test_butd_box_outside_image_is_an_error(tmp_path, coord, value):
    item = butd_item(2, n=3)
    item["boxes"][1, coord] = value
    path = write_butd(tmp_path / "bad.h5", {"img7": item})
    with pytest.raises(FeatureError) as err:
        BUTDStore(path).get("img7")
    msg = str(err.value)
    assert str(path) in msg and "'img7'" in msg and "box 1" in msg


def test_butd_n_boxes(tmp_path):
    item = butd_item(3)
    path = write_butd(tmp_path / "f.h5", {"a": item})
    feats, boxes = BUTDStore(path, n_boxes=10).get("a")
    assert feats.shape == (10, 8) and boxes.shape == (10, 4)
    np.testing.assert_array_equal(feats, item["features"][:10].astype(np.float32))
    with pytest.raises(FeatureError, match=r"has 36 boxes but n_boxes is 50; fix: set n_boxes <= 36"):
        BUTDStore(path, n_boxes=50).get("a")


def test_butd_missing_id_and_missing_file(tmp_path):
    path = write_butd(tmp_path / "f.h5", {"a": butd_item(4, n=2)})
    with pytest.raises(FeatureError, match=r"f\.h5: no features for image 'zzz'"):
        BUTDStore(path).get("zzz")
    gone = tmp_path / "nope" / "val2014_obj36.h5"
    store = BUTDStore(gone, hint="download the released feature bundle")  # lazy: no error yet
    with pytest.raises(FeatureError) as err:
        store.get("a")
    assert str(gone) in str(err.value) and "fix: download the released feature bundle" in str(err.value)


def test_butd_feat_dim_mismatch(tmp_path):
    path = write_butd(tmp_path / "f.h5", {"a": butd_item(5, n=2, dim=8)})
    with pytest.raises(FeatureError, match=r"8 wide, expected 2048"):
        BUTDStore(path, feat_dim=2048).get("a")


def test_not_an_h5_file(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FeatureError, match="not a readable HDF5 file"):
        BUTDStore(bad).get("a")


# --- CLIP ----------------------------------------------------------------------------------------


def test_clip_store(tmp_path):
    rng = np.random.default_rng(0)
    items = {f"COCO_val2014_{i:012d}": rng.standard_normal((49, 16)).astype(np.float16) for i in range(3)}
    directory = write_clip(tmp_path / "data_clip_RN101_att", items)
    store = CLIPStore(directory)
    feats, boxes = store.get("COCO_val2014_000000000001")
    assert feats.dtype == np.float32 and feats.shape == (49, 16)
    np.testing.assert_array_equal(feats, items["COCO_val2014_000000000001"].astype(np.float32))
    assert boxes.shape == (49, 4) and not boxes.any()
    assert store.feat_dim == 16
    assert list(store.ids()) == sorted(items)
    assert "COCO_val2014_000000000002" in store and "COCO_val2014_000000000009" not in store
    with pytest.raises(FeatureError, match=r"no CLIP features for image 'COCO_val2014_000000000009'"):
        store.get("COCO_val2014_000000000009")
    with pytest.raises(FeatureError, match="16 wide, expected 2560"):
        CLIPStore(directory, feat_dim=2560).get("COCO_val2014_000000000000")


def test_clip_top_level_dataset_and_missing_dir(tmp_path):
    tmp_path.joinpath("d").mkdir()
    with h5py.File(tmp_path / "d" / "x.h5", "w") as f:
        f["features"] = np.ones((4, 3), np.float16)
    feats, _ = CLIPStore(tmp_path / "d").get("x")
    assert feats.tolist() == [[1.0] * 3] * 4
    store = CLIPStore(tmp_path / "absent", hint="vlcli extract-features --feature_type RN50")
    with pytest.raises(FeatureError, match=r"absent: CLIP feature folder not found; fix: vlcli extract-features"):
        store.get("x")


# --- consolidated --------------------------------------------------------------------------------


def test_consolidated_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((49, 16)).astype(np.float32)
    b = rng.standard_normal((36, 16)).astype(np.float32)
    b_boxes = rng.uniform(0, 1, (36, 4)).astype(np.float32)
    path = tmp_path / "sub" / "coco_RN50.h5"
    assert write_consolidated(path, {"a": a, "b": (b, b_boxes)}, dtype=np.float16) == 2
    store = ConsolidatedStore(path)
    feats, boxes = store.get("a")
    np.testing.assert_array_equal(feats, a.astype(np.float16).astype(np.float32))
    assert feats.dtype == np.float32 and not boxes.any() and boxes.shape == (49, 4)
    feats, boxes = store.get("b")
    np.testing.assert_array_equal(boxes, b_boxes)
    assert feats.shape == (36, 16)
    assert sorted(store.ids()) == ["a", "b"] and "a" in store and "c" not in store
    assert store.feat_dim == 16
    with pytest.raises(FeatureError, match=r"no features for image 'c'"):
        store.get("c")
    assert [p.name for p in path.parent.iterdir()] == ["coco_RN50.h5"]  # no temp file left


def test_consolidated_write_is_atomic(tmp_path):
    path = tmp_path / "c.h5"
    write_consolidated(path, {"old": np.zeros((2, 3), np.float32)})

    def items():
        yield "new", np.ones((2, 3), np.float32)
        raise RuntimeError("extractor crashed")

    with pytest.raises(RuntimeError):
        write_consolidated(path, items())
    assert list(ConsolidatedStore(path).ids()) == ["old"]  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.h5"]
    with pytest.raises(FeatureError, match="3 wide, the others 2"):
        write_consolidated(tmp_path / "d.h5", [("x", np.zeros((1, 2))), ("y", np.zeros((1, 3)))])
    assert not (tmp_path / "d.h5").exists()


def test_consolidated_rejects_other_h5(tmp_path):
    path = write_butd(tmp_path / "f.h5", {"a": butd_item(6, n=2)})
    with pytest.raises(FeatureError, match="not a vlcli consolidated feature file"):
        ConsolidatedStore(path).get("a")


# --- pickling and processes ----------------------------------------------------------------------


def test_stores_pickle_after_opening(tmp_path):
    item = butd_item(7, n=4)
    butd = BUTDStore(write_butd(tmp_path / "f.h5", {"a": item}), n_boxes=4)
    cons_path = tmp_path / "c.h5"
    write_consolidated(cons_path, {"a": item["features"]})
    cons = ConsolidatedStore(cons_path)
    routed = RoutedStore({"butd": butd, "cons": cons}, SubstringRoute([("x", "cons")], default="butd"))
    before = routed.get("a")
    cons.get("a")  # both files are now open in this process
    for store in (butd, cons, routed):
        clone = pickle.loads(pickle.dumps(store))
        feats, boxes = clone.get("a")
        np.testing.assert_array_equal(feats, item["features"].astype(np.float32))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(routed)).get("a")[1], before[1])
    butd.close()
    np.testing.assert_array_equal(butd.get("a")[0], before[0])  # re-opens after close


def _read_in_child(store: BUTDStore, queue) -> None:  # runs in a forked child
    feats, _ = store.get("a")  # a plain read at the offset learnt in the parent, through the child's own descriptor
    own = store._raw is not None and store._raw[0] == os.getpid()
    queue.put((float(feats.sum()), own or store._h5._pid == os.getpid()))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_forked_child_opens_its_own_handle(tmp_path):
    item = butd_item(8, n=4)
    store = BUTDStore(write_butd(tmp_path / "f.h5", {"a": item}))
    parent_sum = float(store.get("a")[0].sum())  # opened in the parent before the fork
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(store, queue))
    child.start()
    child_sum, reopened = queue.get(timeout=20)
    child.join(timeout=20)
    assert child.exitcode == 0
    assert child_sum == parent_sum and reopened
    assert store._h5._pid == os.getpid()  # the parent's handle is untouched


# --- routing -------------------------------------------------------------------------------------


def test_routed_store_by_substring(tmp_path):
    train = write_butd(tmp_path / "train2014_obj36.h5", {"COCO_train2014_000000000001": butd_item(9, n=2)})
    val = write_butd(tmp_path / "val2014_obj36.h5", {"COCO_val2014_000000000002": butd_item(10, n=2)})
    test = ArrayStore({"COCO_test2015_000000000003": np.full((2, 8), 3.0)})
    route = SubstringRoute([("train2014", "train"), ("val2014", "val")], default="test")
    store = RoutedStore({"train": BUTDStore(train), "val": BUTDStore(val), "test": test}, route)
    assert store.get("COCO_test2015_000000000003")[0].tolist() == [[3.0] * 8] * 2
    np.testing.assert_array_equal(
        store.get("COCO_val2014_000000000002")[0], butd_item(10, n=2)["features"].astype(np.float32)
    )
    assert "COCO_train2014_000000000001" in store
    assert "COCO_val2014_000000000001" not in store  # routed to val, which lacks it
    assert sorted(store.ids()) == ["COCO_test2015_000000000003", "COCO_train2014_000000000001", "COCO_val2014_000000000002"]
    assert store.feat_dim == 8
    with pytest.raises(FeatureError, match=r"val2014_obj36\.h5: no features for image 'COCO_val2014_9'"):
        store.get("COCO_val2014_9")
    strict = RoutedStore({"train": BUTDStore(train)}, SubstringRoute([("train2014", "train")]))
    with pytest.raises(FeatureError, match=r"image id 'COCO_test2015_1' matches no feature source \(known: train\)"):
        strict.get("COCO_test2015_1")


def test_routed_store_by_membership(tmp_path):
    vg = write_butd(tmp_path / "vg.h5", {"2354786": butd_item(11, n=2)})
    gqa = write_butd(tmp_path / "gqa.h5", {"n161313": butd_item(12, n=2)})
    store = RoutedStore({"vg": BUTDStore(vg), "testdev": BUTDStore(gqa)})
    np.testing.assert_array_equal(store.get("n161313")[0], butd_item(12, n=2)["features"].astype(np.float32))
    assert "2354786" in store and "1" not in store
    with pytest.raises(FeatureError, match=r"no features for image '1' in any of .*vg\.h5, .*gqa\.h5"):
        store.get("1")


def test_array_store_unchanged():
    store = ArrayStore({"a": np.ones((3, 5)), "b": (np.zeros((2, 5)), np.full((2, 4), 0.5))})
    assert store.feat_dim == 5 and store.get("b")[1].tolist() == [[0.5] * 4] * 2
    assert not store.get("a")[1].any()
