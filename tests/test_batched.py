"""Batched loading (TaskDataset.__getitems__) gives exactly the batches of per-item loading, for every store."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, add_region_and_cls_tasks, make_world
from vlcli import api
from vlcli.data.features import write_consolidated
from vlcli.tasks import get_task
from vlcli.tasks.base import PreparedBatch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    data = add_region_and_cls_tasks(make_world(root / "datasets", n_train=10, n_eval=4))
    folder = data / "COCO/clip_features/data_clip_RN50_att"
    arrays = {}
    for path in sorted(folder.glob("*.h5")):
        with h5py.File(path, "r") as f:
            arrays[path.stem] = f["features"][()]
    write_consolidated(data / "coco_consolidated.h5", arrays.items())
    return {"data": data, "t5": make_backbone_dir(root / "t5", "t5")}


def dataset(world, task, split, train, **extra):
    values = {"backbone": str(world["t5"]), "data_root": str(world["data"]), "feature_type": FEATURE_TYPE, **extra}
    settings = api.load_settings(task=task, **values)
    impl = get_task(task)
    store = impl.open_store(settings, split, train=train)
    return impl.build_dataset(settings, split, api.build_tokenizer(settings), store, train=train)


def same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert x.shape == y.shape and torch.equal(x.float(), y.float()), key
        else:
            assert x == y, key


CASES = [("vqa", "karpathy_train", True, {}), ("vqa", "karpathy_val", False, {}),
         ("vqa", "karpathy_train", True, {"data_paths": "coco.clip={root}/coco_consolidated.h5"}),
         ("gqa", "train", True, {}), ("nlvr", "train", True, {}), ("caption", "train", True, {}),
         ("refcoco", "train", True, {"feature_type": "butd", "n_boxes": 4}), ("cls", "train", True, {})]


@pytest.mark.parametrize(("task", "split", "train", "extra"), CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_batched_and_per_item_batches_are_identical(world, task, split, train, extra):
    extra = {k: v.format(root=world["data"]) if isinstance(v, str) else v for k, v in extra.items()}
    ds = dataset(world, task, split, train, **extra)
    indices = [i for i in (3, 0, 2, 1) if i < len(ds)]
    ds.reseed(5)
    one_by_one = ds.collate([ds[i] for i in indices])
    ds.reseed(5)
    items = ds.__getitems__(indices)
    batched = ds.collate(items)
    same(batched, one_by_one)
    single_image_store = task in ("vqa", "gqa", "caption", "cls")
    assert isinstance(items, PreparedBatch) == single_image_store  # the fast path where it applies
    if single_image_store:
        assert batched["vis_feats"].dtype == torch.float16  # float16 from disk to the device


@pytest.mark.parametrize("store", ["per-image", "consolidated"])
def test_a_batch_still_in_use_is_never_overwritten_and_a_released_buffer_is_reused(world, store):
    extra = {"data_paths": f"coco.clip={world['data']}/coco_consolidated.h5"} if store == "consolidated" else {}
    ds = dataset(world, "vqa", "karpathy_train", True, **extra)
    first = ds.collate(ds.__getitems__([0, 1, 2, 3]))
    kept = first["vis_feats"].clone()
    view = first["vis_feats"][1:]  # a view alone keeps the buffer alive
    del first
    for _ in range(5):  # batches of the same shape, each released at once
        other = ds.collate(ds.__getitems__([7, 6, 5, 4]))
        assert other["vis_feats"].data_ptr() != view.data_ptr() - view.stride(0) * view.element_size()
        del other
    assert torch.equal(view, kept[1:])
    ptr = view.data_ptr() - view.stride(0) * view.element_size()
    del view
    again = ds.collate(ds.__getitems__([4, 5, 6, 7]))
    released = ds.collate(ds.__getitems__([0, 1, 2, 3]))  # `again` is alive: some other buffer
    assert again["vis_feats"].data_ptr() != released["vis_feats"].data_ptr()
    assert ptr in (again["vis_feats"].data_ptr(), released["vis_feats"].data_ptr())  # the released one, reused
    fresh = ds.collate([ds[i] for i in (0, 1, 2, 3)])
    assert torch.equal(released["vis_feats"].float(), fresh["vis_feats"].float())


def test_token_ids_kept_from_the_first_read_equal_fresh_tokenisation(world):
    """Input and target ids served from the dataset's memo (second and later reads) are the tokenizer's own,
    including truncation, and no two items share a list."""
    ds = dataset(world, "vqa", "karpathy_train", True, max_text_length=6)
    order = list(range(len(ds)))
    by_id = {ex.id: ex for ex in ds.examples}
    for epoch in range(3):
        ds.reseed(epoch)
        items = ds.__getitems__(order[::-1] if epoch % 2 else order)
        for item in items:
            ex = by_id[item["id"]]
            assert item["input_ids"] == ds.tokenizer.encode(ex.text, 6)
            assert item["target_ids"] == ds.tokenizer.encode(item["target"], ds.target_max_length)
        assert len({id(item["input_ids"]) for item in items} | {id(item["target_ids"]) for item in items}) == 2 * len(items)
        items[0]["input_ids"].append(-1)  # a consumer changing its list changes nothing kept
    again = ds.__getitems__([order[-1], order[0]])
    assert again[1]["input_ids"] == ds.tokenizer.encode(ds.examples[0].text, 6)


def test_a_batch_reads_each_file_through_the_fast_path_after_the_first(world, monkeypatch):
    ds = dataset(world, "vqa", "karpathy_train", True)
    ds.__getitems__(list(range(len(ds))))  # first epoch: learns where every array lies
    import vlcli.data.features as features

    calls = []
    monkeypatch.setattr(features.h5py, "File", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    again = ds.__getitems__(list(range(len(ds))))
    assert calls == [] and again.feats.shape[0] == len(ds)


def test_a_file_that_went_away_is_named(world, tmp_path):
    import shutil

    data = tmp_path / "datasets"
    shutil.copytree(world["data"], data)
    settings = api.load_settings(task="vqa", backbone=str(world["t5"]), data_root=str(data), feature_type=FEATURE_TYPE)
    impl = get_task("vqa")
    ds = impl.build_dataset(settings, "karpathy_train", api.build_tokenizer(settings),
                            impl.open_store(settings, "karpathy_train", train=True), train=True)
    ds.__getitems__([0, 1])
    (data / "COCO/clip_features/data_clip_RN50_att" / f"{ds.examples[0].image_ids[0]}.h5").unlink()
    with pytest.raises(Exception, match=ds.examples[0].image_ids[0]):
        ds.__getitems__([0, 1])


@pytest.mark.parametrize("boxes", [False, True])
def test_per_item_reads_after_the_first_skip_h5py_and_return_the_same_arrays(world, tmp_path, monkeypatch, boxes):
    """Per-item reads (pretraining, NLVR2, RefCOCOg, VCR) use the learnt offsets too: same float32 features and
    boxes as the checked first read, no h5py call."""
    from vlcli.data.features import CLIPStore, ConsolidatedStore

    rng = np.random.default_rng(0)
    arrays = {f"img{k}": rng.normal(size=(9, 16)).astype(np.float16) for k in range(3)}
    box = {k: rng.uniform(size=(9, 4)).astype(np.float32) for k in arrays}
    folder = tmp_path / "clip"
    folder.mkdir()
    for key, value in arrays.items():
        with h5py.File(folder / f"{key}.h5", "w") as f:
            f.create_dataset("features", data=value)
    write_consolidated(tmp_path / "all.h5", {k: (v, box[k]) if boxes else v for k, v in arrays.items()})
    stores = [ConsolidatedStore(tmp_path / "all.h5")] + ([] if boxes else [CLIPStore(folder)])
    import vlcli.data.features as features

    for store in stores:
        first = {k: store.get(k) for k in arrays}
        with monkeypatch.context() as m:
            m.setattr(features.h5py, "File", lambda *a, **k: (_ for _ in ()).throw(AssertionError("h5py used")))
            m.setattr(features.h5py.Group, "__getitem__", lambda *a: (_ for _ in ()).throw(AssertionError("h5py used")))
            again = {k: store.get(k) for k in arrays}
        for k, (feats, bxs) in again.items():
            assert feats.dtype == np.float32 and np.array_equal(feats, arrays[k].astype(np.float32))
            assert np.array_equal(feats, first[k][0]) and np.array_equal(bxs, first[k][1])
            assert np.array_equal(bxs, box[k] if boxes else np.zeros((9, 4), np.float32))


@pytest.mark.parametrize("n_boxes", [None, 3])
def test_butd_reads_after_the_first_skip_h5py_and_a_batch_equals_its_items(tmp_path, monkeypatch, n_boxes):
    """BUTD region files: per-item reads after the first and whole batches use the learnt offsets and give
    the checked read's features and normalised, clamped boxes exactly (float16 and float32 files)."""
    from vlcli.data.features import BUTDStore

    rng = np.random.default_rng(1)
    expected = {}
    with h5py.File(tmp_path / "butd.h5", "w") as f:
        for k in range(4):
            g = f.create_group(f"img{k}")
            feats = rng.normal(size=(5, 16)).astype(np.float16 if k % 2 else np.float32)
            pixels = np.sort(rng.uniform(0, 100, size=(5, 2, 2)), axis=1).reshape(5, 4)[:, (0, 2, 1, 3)]
            pixels[0] = [0, 0, 100.0000001, 50]  # just past the edge: within the tolerance, clamped
            g["features"], g["boxes"], g["img_w"], g["img_h"] = feats.astype(np.float32), pixels, 100.0, 50.0 * 2
            expected[f"img{k}"] = feats.astype(np.float32)
    store = BUTDStore(tmp_path / "butd.h5", n_boxes=n_boxes)
    first = {k: store.get(k) for k in expected}
    import vlcli.data.features as features

    with monkeypatch.context() as m:
        m.setattr(features.h5py.Group, "__getitem__", lambda *a: (_ for _ in ()).throw(AssertionError("h5py used")))
        again = {k: store.get(k) for k in expected}
        batch = store.read_batch(list(expected)[::-1])
    n = n_boxes or 5
    for k, (feats, boxes) in again.items():
        assert np.array_equal(feats, expected[k][:n]) and np.array_equal(feats, first[k][0])
        assert np.array_equal(boxes, first[k][1]) and boxes.dtype == np.float32 and boxes.max() <= 1.0
    assert batch is not None
    for row, k in enumerate(list(expected)[::-1]):
        assert np.array_equal(batch[0][row].astype(np.float32), first[k][0])
        assert np.array_equal(batch[1][row], first[k][1])


def test_a_per_item_read_that_failed_its_checks_fails_again_and_a_vanished_file_is_named(tmp_path):
    from vlcli.data.features import CLIPStore, FeatureError

    folder = tmp_path / "clip"
    folder.mkdir()
    with h5py.File(folder / "img0.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((9, 16), np.float16))
    wrong = CLIPStore(folder, feat_dim=32)
    for _ in range(2):  # a failed check is not learnt as a fast path
        with pytest.raises(FeatureError, match="16 wide, expected 32"):
            wrong.get("img0")
    store = CLIPStore(folder)
    store.get("img0")
    (folder / "img0.h5").unlink()
    with pytest.raises(FeatureError, match="img0"):
        store.get("img0")


def test_encode_many_equals_encode(world):
    settings = api.load_settings(task="vqa", backbone=str(world["t5"]))
    tok = api.build_tokenizer(settings)
    texts = ["what color is the object?", "", "a b c d e f g h i j k l m n o p", "vqa: is it red?"]
    for length in (None, 5):
        assert tok.encode_many(texts, length) == [tok.encode(t, length) for t in texts]


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_decode_many_equals_decode(world, tmp_path, family):
    """Generation output is decoded in one host copy per batch; the texts are decode's, row by row (special
    tokens, padding and surrounding spaces included)."""
    backbone = world["t5"] if family == "t5" else make_backbone_dir(tmp_path / "bart", "bart")
    tok = api.build_tokenizer(api.load_settings(task="vqa", backbone=str(backbone)))
    texts = ["red", "what color is the cube?", "", " yes ", "two balls"]
    width = max(len(ids) for ids in tok.encode_many(texts)) + 2
    rows = torch.full((len(texts), width), tok.pad_token_id)
    for k, ids in enumerate(tok.encode_many(texts)):
        rows[k, : len(ids)] = torch.tensor(ids)
    rows = torch.cat([torch.full((len(texts), 1), tok.pad_token_id), rows], dim=1)  # decoder start token first
    assert tok.decode_many(rows) == [tok.decode(row) for row in rows]
    assert tok.decode_many(rows.tolist()) == [tok.decode(row) for row in rows]
    assert tok.decode_many(rows)[0] == "red" and tok.decode_many(rows)[2] == ""


def test_training_with_batched_loading_matches_per_item_loading(world, tmp_path, monkeypatch):
    """The loss curve and weights of a run are unchanged by the batched path (fp32 on CPU)."""
    from safetensors.torch import load_file

    from vlcli.tasks.base import TaskDataset
    from vlcli.train.engine import Engine

    def run(out):
        settings = api.load_settings(task="vqa", backbone=str(world["t5"]), data_root=str(world["data"]),
                                     feature_type=FEATURE_TYPE, batch_size=4, epochs=2, use_adapter=True,
                                     output=str(out))
        history = Engine(settings).fit()
        return [r["train_loss"] for r in history.records], load_file(str(out / "LAST.safetensors"))

    batched = run(tmp_path / "batched")
    monkeypatch.delattr(TaskDataset, "__getitems__")
    per_item = run(tmp_path / "per_item")
    assert batched[0] == per_item[0]
    assert all(torch.equal(batched[1][k], per_item[1][k]) for k in batched[1])
    assert np.isfinite(batched[0]).all()
