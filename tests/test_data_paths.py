"""--data_paths moves what every task's loader reads (not only what the preflight checks); an empty split
is one line naming the split and its file, raised when the dataset is built (before any model)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.world import FEATURE_TYPE, add_region_and_cls_tasks, make_world
from vlcli import api
from vlcli.errors import VlcliError
from vlcli.tasks import TaskDataError, get_task

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


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    from tests.tiny import make_backbone_dir

    return make_backbone_dir(tmp_path_factory.mktemp("backbone") / "t5", "t5")


def settings(data, task, **extra):
    options = {"backbone": "t5-small", **extra}  # the loaders need no backbone; building a dataset a tokenizer
    return api.load_settings(task=task, data_root=str(data), feature_type=FEATURE_TYPE, **options)


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


def test_a_finetune_run_reads_the_moved_question_files(cli, world, t5, tmp_path):
    """End to end: the preflight and the loaders agree on the moved files (the default ones are gone)."""
    data, elsewhere = tmp_path / "datasets", tmp_path / "elsewhere"
    shutil.copytree(world, data)
    elsewhere.mkdir()
    for split in ("karpathy_train", "karpathy_val", "karpathy_test"):
        shutil.move(str(data / "vqa" / f"{split}.json"), elsewhere / f"q_{split}.json")
    res = cli("finetune", "vqa", "--backbone", str(t5), "--data_root", str(data), "--feature_type", FEATURE_TYPE,
              "--batch_size", "2", "--use_adapter", "--epochs", "1", "--test", "none", "--output", str(tmp_path / "run"),
              "--data_paths", f"vqa.questions={elsewhere}/q_{{split}}.json")
    assert res.code == 0, res.err
    assert (tmp_path / "run" / "BEST.safetensors").is_file()


# ----------------------------------------------------------------------------------------- pretraining


@pytest.fixture(scope="module")
def lxmert(tmp_path_factory):
    from tests.test_pretrain import write_pretraining_data

    return write_pretraining_data(tmp_path_factory.mktemp("lxmert") / "datasets")


def pretrain_settings(data, backbone="t5-small", **extra):
    from tests.test_pretrain import FEAT, N_BOX

    return api.load_settings(command="pretrain", backbone=str(backbone), data_root=str(data), feat_dim=FEAT,
                             n_boxes=N_BOX, **extra)


def pretrain_dataset(data, t5, split="mscoco_resplit_val", **extra):
    """The pretraining dataset of ``split`` built through the task API (annotations, answers, vocabularies)."""
    s = pretrain_settings(data, t5, **extra)
    task = get_task("pretrain")
    return task.build_dataset(s, split, api.build_tokenizer(s), task.open_store(s, split), train=False)


@pytest.mark.parametrize(("name", "default"), [
    ("pretrain.annotations", "lxmert/mscoco_resplit_val.json"),
    ("pretrain.answers", "lxmert/all_ans.json"),
    ("vg.objects_vocab", "VG/objects_vocab.txt"),
])
def test_pretraining_reads_its_moved_files(lxmert, t5, tmp_path, name, default):
    data = tmp_path / "datasets"
    shutil.copytree(lxmert, data)
    expected = pretrain_dataset(data, t5)
    moved = tmp_path / "elsewhere" / default.replace("/", "_")
    moved.parent.mkdir()
    shutil.move(str(data / default), moved)
    template = str(moved).replace("mscoco_resplit_val", "{split}")
    ds = pretrain_dataset(data, t5, data_paths=f"{name}={template}")
    assert [(e.id, e.text, e.targets) for e in ds.examples] == [(e.id, e.text, e.targets) for e in expected.examples]
    moved_settings = pretrain_settings(data, data_paths=f"{name}={template}")
    assert moved in [p.path for p in get_task("pretrain").required_paths(moved_settings, "mscoco_resplit_val")]
    with pytest.raises(VlcliError, match=default.split("/")[-1]):
        pretrain_dataset(data, t5)  # the default place is empty now


# ----------------------------------------------------------------------------------------- empty splits


def build(data, t5, task, split, *, train, **extra):
    """``task``'s dataset of ``split`` through the task API (no model)."""
    s = settings(data, task, **{"backbone": str(t5), **extra})
    impl = get_task(task)
    return impl.build_dataset(s, split, api.build_tokenizer(s), impl.open_store(s, split), train=train)


@pytest.mark.parametrize(("task", "split", "file", "role"), [
    ("vqa", "karpathy_train", "vqa/karpathy_train.json", "train"),
    ("gqa", "testdev", "GQA/testdev.json", "valid"),
    ("nlvr", "test", "nlvr/test.json", "test"),
])
def test_an_empty_split_file_is_refused_naming_split_and_file(world, t5, tmp_path, task, split, file, role):
    data = tmp_path / "datasets"
    shutil.copytree(world, data)
    (data / file).write_text("[]")
    with pytest.raises(TaskDataError) as err:
        build(data, t5, task, split, train=role == "train")
    message = str(err.value)
    assert f"{task} {role} split '{split}' ({data / file}) has no examples" in message
    assert "\n" not in message


def test_a_caption_split_with_no_image_is_refused(world, t5, tmp_path):
    data = tmp_path / "datasets"
    shutil.copytree(world, data)
    doc = json.loads((data / "COCO/dataset_coco.json").read_text())
    doc["images"] = [img for img in doc["images"] if img["split"] != "val"]
    (data / "COCO/dataset_coco.json").write_text(json.dumps(doc))
    with pytest.raises(TaskDataError, match=r"caption valid split 'karpathy_val' \(.*dataset_coco\.json\) has no"):
        build(data, t5, "caption", "karpathy_val", train=False)


@pytest.mark.parametrize(("option", "value", "role", "split"), [
    ("train_topk", 0.01, "train", "karpathy_train"),
    ("valid_topk", 0.1, "valid", "karpathy_val"),
])
def test_a_topk_that_selects_nothing_names_the_option(world, t5, option, value, role, split):
    with pytest.raises(TaskDataError) as err:
        build(world, t5, "vqa", split, train=role == "train", **{option: value})
    assert f"vqa {role} split '{split}' ({world / 'vqa' / f'{split}.json'}): --{option} {value} selects none" in str(
        err.value)
    assert build(world, t5, "vqa", split, train=role == "train", **{option: 1}).ids  # one example is enough


def test_an_empty_pretraining_split_names_its_file(lxmert, t5, tmp_path):
    data = tmp_path / "datasets"
    shutil.copytree(lxmert, data)
    (data / "lxmert" / "mscoco_resplit_val.json").write_text("[]")
    with pytest.raises(TaskDataError, match=r"pretrain valid split 'mscoco_resplit_val' \(.*mscoco_resplit_val\.json\)"
                                            r" has no examples"):
        pretrain_dataset(data, t5)
    with pytest.raises(TaskDataError, match=r"--valid_topk 0\.1 selects none of its 2 examples"):
        pretrain_dataset(lxmert, t5, valid_topk=0.1)


def test_finetune_on_an_empty_validation_split_is_one_line_exit_2(cli, world, t5, tmp_path):
    data = tmp_path / "datasets"
    shutil.copytree(world, data)
    (data / "vqa" / "karpathy_val.json").write_text("[]")
    res = cli("finetune", "vqa", "--backbone", str(t5), "--data_root", str(data), "--feature_type", FEATURE_TYPE,
              "--batch_size", "2", "--use_adapter", "--epochs", "1", "--output", str(tmp_path / "run"))
    assert res.code == 2
    assert len(res.err.strip().splitlines()) == 1
    assert "vqa valid split 'karpathy_val'" in res.err and "karpathy_val.json" in res.err and "no examples" in res.err
