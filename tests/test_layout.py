"""Data-root layout (spec data-and-eval §0.1, §1.1–1.4, §2.3), open_features and preflight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_features import butd_item, write_butd, write_clip
from vlcli.config.settings import Settings
from vlcli.data.features import (
    BUTDStore,
    CLIPStore,
    ConsolidatedStore,
    FeatureError,
    RoutedStore,
    write_consolidated,
)
from vlcli.data.layout import DEFAULT_PATHS, open_features, task_layout
from vlcli.data.preflight import MissingDataError, preflight, required_paths


def settings(root: Path, **values) -> Settings:
    return Settings.from_flat({"data_root": str(root), **values})


def rel(layout, root: Path) -> dict[str, str]:
    return {key: str(item.path.relative_to(root)) for key, item in layout.features.items()}


# --- layout as data ------------------------------------------------------------------------------


def test_vqa_butd_paths(tmp_path):
    lay = task_layout("vqa", "karpathy_train,karpathy_val", "butd", tmp_path)
    assert [str(a.path.relative_to(tmp_path)) for a in lay.annotations] == [
        "vqa/karpathy_train.json",
        "vqa/karpathy_val.json",
        "vqa/v2_mscoco_train2014_annotations.json",
        "vqa/v2_mscoco_val2014_annotations.json",
    ]
    assert rel(lay, tmp_path) == {
        "train2014": "COCO/features/train2014_obj36.h5",
        "val2014": "COCO/features/val2014_obj36.h5",
    }
    assert lay.route("COCO_val2014_000000391895") == "val2014"
    test = task_layout("vqa", "test", "butd", tmp_path)
    assert rel(test, tmp_path) == {"test2015": "COCO/features/test2015_obj36.h5"}
    assert [a.name for a in test.annotations] == ["vqa.questions"]  # no ground truth for test
    assert test.route("COCO_test2015_000000262144") == "test2015"
    vg = task_layout("vqa", "vg_qa_full", "butd", tmp_path)
    assert rel(vg, tmp_path) == {"vg": "VG/features/vg_gqa_obj36.h5"} and vg.route("2354786") == "vg"


@pytest.mark.parametrize("feature_type, dim", [("RN50", 2048), ("RN101", 2048), ("RN50x4", 2560), ("ViT", 768)])
def test_clip_paths_and_dims(tmp_path, feature_type, dim):
    lay = task_layout("vqa", "karpathy_train", feature_type, tmp_path)
    assert rel(lay, tmp_path) == {"coco": f"COCO/clip_features/data_clip_{feature_type}_att"}
    assert lay.feat_dim == dim
    assert task_layout("caption", "karpathy_test", feature_type, tmp_path).features["coco"].path == lay.features["coco"].path
    nlvr = task_layout("nlvr", "train,valid", feature_type, tmp_path)
    assert rel(nlvr, tmp_path) == {"clip": f"nlvr/clip_features/data_clip_{feature_type}_att"}


def test_gqa_sources(tmp_path):
    tv = task_layout("gqa", "train,valid", "butd", tmp_path)
    assert [str(a.path.relative_to(tmp_path)) for a in tv.annotations] == ["GQA/train.json", "GQA/valid.json"]
    assert rel(tv, tmp_path) == {"vg": "VG/features/vg_gqa_obj36.h5"}
    assert rel(task_layout("gqa", "testdev", "butd", tmp_path), tmp_path) == {"testdev": "GQA/features/gqa_testdev_obj36.h5"}
    # submit: the VG BUTD file but GQA's CLIP folder, as the original (spec §1.2)
    assert rel(task_layout("gqa", "submit", "butd", tmp_path), tmp_path) == {"vg": "VG/features/vg_gqa_obj36.h5"}
    assert rel(task_layout("gqa", "submit_0", "RN101", tmp_path), tmp_path) == {"testdev": "GQA/clip_features/data_clip_RN101_att"}
    assert rel(task_layout("gqa", "train", "ViT", tmp_path), tmp_path) == {"vg": "VG/clip_features/data_clip_ViT_att"}
    with pytest.raises(FeatureError, match="unknown GQA split 'dev'"):
        task_layout("gqa", "dev", "butd", tmp_path)


def test_nlvr_and_caption_butd(tmp_path):
    nlvr = task_layout("nlvr", "train,valid", "butd", tmp_path)
    assert rel(nlvr, tmp_path) == {"train": "nlvr/features/train_obj36.h5", "valid": "nlvr/features/valid_obj36.h5"}
    assert [str(a.path.relative_to(tmp_path)) for a in nlvr.annotations] == ["nlvr/train.json", "nlvr/valid.json"]
    cap = task_layout("caption", "karpathy_train,karpathy_val", "butd", tmp_path)
    assert [str(a.path.relative_to(tmp_path)) for a in cap.annotations] == ["COCO/dataset_coco.json"]
    assert rel(cap, tmp_path) == {"train2014": "COCO/features/train2014_obj36.h5", "val2014": "COCO/features/val2014_obj36.h5"}
    with pytest.raises(FeatureError, match="unknown caption split 'dev'"):
        task_layout("caption", "dev", "butd", tmp_path)


def test_raw_layout_lists_image_folders(tmp_path):
    lay = task_layout("vqa", "test", "raw_RN101", tmp_path)
    assert rel(lay, tmp_path) == {"test2015": "COCO/images/test2015"}  # not the original's test2014
    assert rel(task_layout("nlvr", "valid", "raw_RN50", tmp_path), tmp_path) == {"images": "nlvr/images"}


def test_overrides(tmp_path):
    lay = task_layout(
        "vqa",
        "karpathy_val",
        "RN101",
        tmp_path,
        overrides={"coco.clip": "/big/disk/clip_{type}", "vqa.questions": "questions/{split}.v2.json"},
    )
    assert lay.features["coco"].path == Path("/big/disk/clip_RN101")
    assert lay.annotations[0].path == tmp_path / "questions" / "karpathy_val.v2.json"
    with pytest.raises(FeatureError, match=r"unknown data path name\(s\) coco\.clips; fix: use one of the logical names"):
        task_layout("vqa", "karpathy_val", "RN101", tmp_path, overrides={"coco.clips": "x"})
    with pytest.raises(FeatureError, match=r"only the placeholders \{split\} and \{type\}"):
        task_layout("vqa", "karpathy_val", "butd", tmp_path, overrides={"vqa.questions": "{year}.json"})


def test_unknown_task_and_feature_type(tmp_path):
    with pytest.raises(FeatureError, match="unknown task 'vcr'"):
        task_layout("vcr", "train", "butd", tmp_path)
    with pytest.raises(FeatureError, match="unknown feature_type 'RN152'"):
        task_layout("vqa", "train", "RN152", tmp_path)


def test_docs_list_every_logical_name():
    docs = Path(__file__).resolve().parent.parent / "docs" / "data.md"
    text = docs.read_text()
    assert all(f"`{name}`" in text for name in DEFAULT_PATHS)


# --- open_features -------------------------------------------------------------------------------


def test_open_features_vqa_butd_routes_by_image_set(tmp_path):
    train_item, val_item = butd_item(0), butd_item(1)
    write_butd(tmp_path / "COCO/features/train2014_obj36.h5", {"COCO_train2014_000000000001": train_item})
    write_butd(tmp_path / "COCO/features/val2014_obj36.h5", {"COCO_val2014_000000000002": val_item})
    store = open_features(settings(tmp_path, feat_dim=8, n_boxes=20), "vqa", "karpathy_train")
    assert isinstance(store, RoutedStore) and set(store.stores) == {"train2014", "val2014"}
    feats, boxes = store.get("COCO_val2014_000000000002")
    assert feats.shape == (20, 8) and boxes.shape == (20, 4)
    np.testing.assert_array_equal(feats, val_item["features"][:20].astype(np.float32))
    np.testing.assert_allclose(boxes, val_item["boxes"][:20] / np.float32([200, 400, 200, 400]), rtol=1e-6)
    assert "COCO_train2014_000000000001" in store
    # a single source is returned unwrapped
    single = open_features(settings(tmp_path, feat_dim=8), "vqa", "karpathy_val")
    assert isinstance(single, BUTDStore) and single.path.name == "val2014_obj36.h5"


def test_open_features_caption_uses_max_n_boxes(tmp_path):
    write_butd(tmp_path / "COCO/features/val2014_obj36.h5", {"COCO_val2014_000000000002": butd_item(2)})
    write_butd(tmp_path / "COCO/features/train2014_obj36.h5", {"COCO_train2014_000000000001": butd_item(3)})
    store = open_features(settings(tmp_path, feat_dim=8, n_boxes=36, max_n_boxes=10), "caption", "karpathy_test")
    assert store.get("COCO_val2014_000000000002")[0].shape == (10, 8)


def test_open_features_clip_and_consolidated(tmp_path):
    feats = np.random.default_rng(0).standard_normal((49, 768)).astype(np.float16)
    write_clip(tmp_path / "nlvr/clip_features/data_clip_ViT_att", {"dev-850-0-img0": feats})
    store = open_features(settings(tmp_path, feature_type="ViT"), "nlvr", "valid")
    assert isinstance(store, CLIPStore) and store.feat_dim == 768
    got, boxes = store.get("dev-850-0-img0")
    np.testing.assert_array_equal(got, feats.astype(np.float32))
    assert boxes.shape == (49, 4) and not boxes.any()
    # a CLIP path naming an .h5 file is read as a consolidated store
    write_consolidated(tmp_path / "nlvr_vit.h5", {"dev-850-0-img0": feats})
    cons = open_features(settings(tmp_path, feature_type="ViT"), "nlvr", "valid", overrides={"nlvr.clip": "nlvr_vit.h5"})
    assert isinstance(cons, ConsolidatedStore)
    np.testing.assert_array_equal(cons.get("dev-850-0-img0")[0], got)


def test_open_features_wrong_clip_width(tmp_path):
    write_clip(tmp_path / "COCO/clip_features/data_clip_RN50x4_att", {"COCO_val2014_1": np.zeros((49, 2048), np.float16)})
    store = open_features(settings(tmp_path, feature_type="RN50x4"), "caption", "karpathy_val")
    with pytest.raises(FeatureError, match="2048 wide, expected 2560; fix: set feature_type"):
        store.get("COCO_val2014_1")


# --- preflight -----------------------------------------------------------------------------------


def test_preflight_lists_every_missing_file(tmp_path):
    (tmp_path / "vqa").mkdir()
    (tmp_path / "vqa/karpathy_train.json").write_text("[]")
    (tmp_path / "COCO/clip_features/data_clip_RN101_att").mkdir(parents=True)  # exists but empty
    s = settings(tmp_path, feature_type="RN101")
    with pytest.raises(MissingDataError) as err:
        preflight(s, {"vqa": ["karpathy_train", "test"], "gqa": "testdev"})
    msg = str(err.value)
    lines = msg.splitlines()
    assert lines[0] == f"6 data paths missing (data_root = {tmp_path}):"
    assert "karpathy_train.json" not in msg
    clip_line = next(line for line in lines if line.startswith("  - coco.clip:"))
    assert clip_line == (
        f"  - coco.clip: {tmp_path}/COCO/clip_features/data_clip_RN101_att is empty (no *.h5 files); fix: "
        f"vlcli extract-features --feature_type RN101 --images {tmp_path}/COCO/images/train2014 --out {tmp_path}/COCO/clip_features"
        f" && vlcli extract-features --feature_type RN101 --images {tmp_path}/COCO/images/val2014 --out {tmp_path}/COCO/clip_features"
        f" && vlcli extract-features --feature_type RN101 --images {tmp_path}/COCO/images/test2015 --out {tmp_path}/COCO/clip_features"
    )
    assert f"  - vqa.questions: {tmp_path}/vqa/test.json does not exist; fix: download the released" in msg
    assert f"  - vqa.answers.val2014: {tmp_path}/vqa/v2_mscoco_val2014_annotations.json does not exist" in msg
    assert f"  - gqa.clip: {tmp_path}/GQA/clip_features/data_clip_RN101_att does not exist; fix: vlcli extract-features" in msg
    assert {item.name for item, _ in err.value.missing} == {
        "coco.clip", "vqa.questions", "vqa.answers.train2014", "vqa.answers.val2014", "gqa.questions", "gqa.clip",
    }


def test_preflight_butd_message_and_success(tmp_path):
    s = settings(tmp_path)
    with pytest.raises(MissingDataError, match=r"coco\.butd\.val2014: .*val2014_obj36\.h5 does not exist; fix: download the released feature bundle"):
        preflight(s, [("caption", "karpathy_val")])
    # create every required path (empty files: preflight never opens them) and it passes
    for item in required_paths(s, [("caption", "karpathy_val")]):
        item.path.parent.mkdir(parents=True, exist_ok=True)
        item.path.write_text("")
    assert preflight(s, [("caption", "karpathy_val")]) is None


def test_preflight_folder_where_file_expected(tmp_path):
    (tmp_path / "nlvr/test.json").mkdir(parents=True)
    with pytest.raises(MissingDataError, match=r"nlvr\.annotations: .*nlvr/test\.json is a folder, not a file"):
        preflight(settings(tmp_path), {"nlvr": ["test"]})
