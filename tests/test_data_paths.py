"""--data_paths moves what every task's loader reads (not only what the preflight checks)."""

from __future__ import annotations

import shutil

import pytest

from tests.world import FEATURE_TYPE, add_region_and_cls_tasks, make_world
from vlcli import api
from vlcli.tasks import get_task

# (task, logical name, split, default path under data_root with {split} filled)
CASES = [
    ("vqa", "vqa.questions", "karpathy_val", "vqa/karpathy_val.json"),
    ("gqa", "gqa.questions", "valid", "GQA/valid.json"),
    ("nlvr", "nlvr.annotations", "valid", "nlvr/valid.json"),
    ("caption", "caption.annotations", "val", "COCO/dataset_coco.json"),
    ("refcoco", "refcoco.refs", "val", "RefCOCO/refcocog/refs(umd).p"),
    ("refcoco", "refcoco.instances", "val", "RefCOCO/refcocog/instances.json"),
    ("vcr", "vcr.annotations", "val", "VCR/val.jsonl"),
    ("cls", "cls.words", "val", "tiny-imagenet-200/words.txt"),
    ("cls", "cls.val_annotations", "val", "tiny-imagenet-200/val/val_annotations.txt"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return add_region_and_cls_tasks(make_world(tmp_path_factory.mktemp("paths") / "datasets", n_train=4, n_eval=2))


def settings(data, task, **extra):
    return api.load_settings(task=task, data_root=str(data), feature_type=FEATURE_TYPE, backbone="t5-small", **extra)


@pytest.mark.parametrize(("task", "name", "split", "default"), CASES, ids=[c[1] for c in CASES])
def test_a_moved_file_is_read_from_where_data_paths_says(world, tmp_path, task, name, split, default):
    data = tmp_path / "datasets"
    shutil.copytree(world, data)
    impl = get_task(task)
    expected, _ = impl.load_examples(settings(data, task), split, train=False)
    moved = tmp_path / "elsewhere" / default.replace("/", "_")
    moved.parent.mkdir()
    shutil.move(str(data / default), moved)
    template = str(moved).replace(split, "{split}") if "{split}" in name or split in moved.name else str(moved)
    s = settings(data, task, data_paths=f"{name}={template}")
    examples, _ = impl.load_examples(s, split, train=False)
    assert [e.id for e in examples] == [e.id for e in expected]
    if name != "cls.val_annotations":  # optional (only val_N image names need it): not in the preflight
        assert moved in [p.path for p in impl.required_paths(s, split)]  # the preflight checks the same file
    with pytest.raises(Exception, match=default.split("/")[-1].replace("(", r"\(").replace(")", r"\)")):
        impl.load_examples(settings(data, task), split, train=False)  # the default place is empty now
