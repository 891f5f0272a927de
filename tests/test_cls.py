"""Image classification (TinyImageNet, spec data-and-eval §1.7 / §4.8) on a tiny data root in the original layout.

The fixture writes ``tiny-imagenet-200/words.txt``, the official ``val/val_annotations.txt`` and per-image
CLIP feature files of type RN50 (``clip_features/{split}/data_clip_RN50_att/{image}.h5``, 4 x 2048 float16 as
the extractor writes them), not the RN101 the original hard-coded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.data.features import FeatureError, write_consolidated
from vlcli.metrics.base import MetricsInputError
from vlcli.metrics.cls import top1_accuracy
from vlcli.tasks import SubmissionError, TaskDataError, get_task
from vlcli.tasks.cls import TARGET_MAX_LENGTH, read_annotations, read_words
from vlcli.train.engine import Engine

TOKENS, DIM = 4, 2048  # RN50 grid features (a 2x2 grid keeps the files small)
# wnid -> words.txt names; the first synonym is the class name
CLASSES = {"n01443537": "red circle, goldfish, Carassius auratus", "n01629819": "blue square",
           "n01641577": "green triangle, bullfrog, Rana catesbeiana"}
WNIDS = list(CLASSES)
NAMES = [v.split(",")[0] for v in CLASSES.values()]
VAL = {f"val_{k}": WNIDS[k % 3] for k in range(3)}  # TinyImageNet names val images val_N


def grid(rng: np.random.Generator, label: int, n: int = TOKENS, dim: int = DIM) -> np.ndarray:
    x = rng.normal(0, 0.1, (n, dim)).astype(np.float16)
    x[:, label * 8 : label * 8 + 8] += 2.0  # the class is visible in the features
    return x


def write_clip(folder: Path, image_id: str, feats: np.ndarray) -> None:
    """One image as `vlcli extract-features` writes it: group {image_id}, dataset features."""
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{image_id}.h5", "w") as f:
        f.create_group(image_id).create_dataset("features", data=feats)


def make_root(root: Path, feature_type: str = "RN50", dim: int = DIM) -> Path:
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    lines = ["n00001740\tentity", ""] + [f"{w}\t{names}" for w, names in CLASSES.items()]
    (base / "words.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    clip = base / "clip_features"
    for label, wnid in enumerate(WNIDS):
        for k in range(4):
            write_clip(clip / "train" / f"data_clip_{feature_type}_att", f"{wnid}_{k}", grid(rng, label, dim=dim))
    for image_id, wnid in VAL.items():
        write_clip(clip / "val" / f"data_clip_{feature_type}_att", image_id, grid(rng, WNIDS.index(wnid), dim=dim))
    (base / "val").mkdir()
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{i}.JPEG\t{w}\t0\t32\t44\t62\n" for i, w in VAL.items()), encoding="utf-8")
    for k in range(2):
        write_clip(clip / "test" / f"data_clip_{feature_type}_att", f"test_{k}", grid(rng, k, dim=dim))
    return root


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return make_backbone_dir(tmp_path_factory.mktemp("backbone") / "t5", "t5")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("datasets"))


def settings(t5_dir: Path, root: Path, **kw):
    kw.setdefault("feature_type", "RN50")
    return api.load_settings(task="cls", backbone=str(t5_dir), data_root=str(root), batch_size=4, num_workers=0, **kw)


@pytest.fixture(scope="module")
def tok(t5_dir, data_root):
    return api.build_tokenizer(settings(t5_dir, data_root))


# ------------------------------------------------------------------------------------ examples


def test_examples_ids_classes_prompt_and_features(t5_dir, data_root, tok):
    s = settings(t5_dir, data_root)
    task = get_task("cls")
    store = task.open_store(s, "train", train=True)
    ds = task.build_dataset(s, "train", tok, store, train=True)
    assert ds.ids == sorted(f"{w}_{k}" for w in WNIDS for k in range(4))
    assert {ex.id: ex.targets for ex in ds.examples}["n01443537_2"] == ["red circle"]  # first synonym only
    assert ds.references["n01641577_0"] == "green triangle" and ds.references["n01629819_3"] == "blue square"
    assert {ex.text for ex in ds.examples} == {"cls: "}  # the prompt alone
    item = ds[ds.ids.index("n01629819_1")]
    assert item["input_ids"] == tok.encode("cls: ")
    assert item["target"] == "blue square" and item["target_ids"] == tok.encode("blue square", TARGET_MAX_LENGTH)
    assert item["feats"].shape == (TOKENS, DIM) and item["feats"].dtype == np.float32  # float16 on disk
    assert not item["boxes"].any() and item["boxes"].shape == (TOKENS, 4)
    batch = task.collate([ds[0], ds[1]], tok.pad_token_id)
    assert batch["vis_feats"].shape == (2, TOKENS, DIM) and batch["labels"].shape[0] == 2
    # val_N images take their class from val_annotations.txt
    val = task.build_dataset(s, "val", tok, task.open_store(s, "val"), train=False)
    assert val.ids == ["val_0", "val_1", "val_2"]
    assert val.references == {"val_0": "red circle", "val_1": "blue square", "val_2": "green triangle"}


def test_prompt_rules_of_multitask_runs(t5_dir, data_root, tok):
    task = get_task("cls")
    for extra, prompt in (({}, ""), ({"use_tasks_prompts": True}, "cls: ")):
        s = api.load_settings(task="multitask", tasks="vqa,cls", backbone=str(t5_dir), data_root=str(data_root),
                              feature_type="RN50", **extra)
        examples, _ = task.load_examples(s, "val", train=False)
        assert {ex.text for ex in examples} == {prompt}


def test_test_split_is_unlabelled_and_cannot_train(t5_dir, data_root):
    s = settings(t5_dir, data_root)
    task = get_task("cls")
    examples, refs = task.load_examples(s, "test", train=False)
    assert [ex.id for ex in examples] == ["test_0", "test_1"] and refs == {}
    with pytest.raises(TaskDataError, match="'test_0' has no class label; training needs a labelled split"):
        task.load_examples(s, "test", train=True)
    assert task.splits == {"train": "train", "valid": "val", "test": "val", "submit": "test"}


def test_any_precomputed_feature_type_is_read(t5_dir, tmp_path, tok):
    root = make_root(tmp_path / "vit", feature_type="ViT", dim=768)
    s = settings(t5_dir, root, feature_type="ViT")
    task = get_task("cls")
    ds = task.build_dataset(s, "val", tok, task.open_store(s, "val"), train=False)
    assert ds.ids == ["val_0", "val_1", "val_2"] and ds[0]["feats"].shape == (TOKENS, 768)
    # the RN50 folder of this root does not exist: feature_type picks the folder (no hard-coded RN101)
    with pytest.raises(FeatureError, match="data_clip_RN50_att: CLIP feature folder not found"):
        task.load_examples(settings(t5_dir, root), "val", train=False)


def test_consolidated_store(t5_dir, data_root, tmp_path, tok):
    task = get_task("cls")
    per_image = settings(t5_dir, data_root)
    store = task.open_store(per_image, "val")
    target = tmp_path / "cls_val_RN50.h5"
    write_consolidated(target, {i: store.get(i)[0].astype(np.float16) for i in store.ids()})
    s = settings(t5_dir, data_root, data_paths=f"cls.clip={tmp_path}/cls_{{split}}_RN50.h5")
    ds = task.build_dataset(s, "val", tok, task.open_store(s, "val"), train=False)
    assert type(ds.store).__name__ == "ConsolidatedStore"
    assert ds.ids == ["val_0", "val_1", "val_2"] and ds.references["val_1"] == "blue square"
    np.testing.assert_array_equal(ds[2]["feats"], store.get("val_2")[0])


# ------------------------------------------------------------------------------------- readers


def test_words_and_annotation_readers(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("n01443537\tgoldfish, Carassius auratus\n\nn01629819 European fire salamander\n")
    assert read_words(words) == {"n01443537": "goldfish", "n01629819": "European fire salamander"}
    words.write_text("n01443537\tgoldfish\nn01629819\n")
    with pytest.raises(TaskDataError, match=r"words.txt: line 2 is not 'WNID<TAB>name, synonym, \.\.\.'"):
        read_words(words)
    words.write_text("n01443537\tgoldfish\nn01443537\tshark\n")
    with pytest.raises(TaskDataError, match="line 2 names WordNet id n01443537 again"):
        read_words(words)
    ann = tmp_path / "val_annotations.txt"
    ann.write_text("val_0.JPEG\tn03444034\t0\t32\t44\t62\nval_1.JPEG\tn04067472\t52\t55\t57\t59\n")
    assert read_annotations(ann) == {"val_0": "n03444034", "val_1": "n04067472"}
    ann.write_text("val_0.JPEG\n")
    with pytest.raises(TaskDataError, match="val_annotations.txt: line 1 is not 'IMAGE<TAB>WNID"):
        read_annotations(ann)


def test_raw_image_folders_list_ids_at_any_depth(t5_dir, tmp_path):
    root = tmp_path / "data"
    train = root / "tiny-imagenet-200" / "train"
    for wnid in ("n01443537", "n01629819"):
        (train / wnid / "images").mkdir(parents=True)
        for k in (1, 0):
            (train / wnid / "images" / f"{wnid}_{k}.JPEG").write_bytes(b"")
        (train / wnid / f"{wnid}_boxes.txt").write_text("")
    s = settings(t5_dir, root, feature_type="raw_RN50", clip_random_init=True, image_size="64,64")
    task = get_task("cls")
    assert task.image_ids(s, "train") == ["n01443537_0", "n01443537_1", "n01629819_0", "n01629819_1"]
    assert sorted(task.open_store(s, "train", train=True).ids()) == task.image_ids(s, "train")  # what is served
    (train / "copy").mkdir()
    (train / "copy" / "n01443537_0.jpg").write_bytes(b"")
    with pytest.raises(FeatureError, match="share the image id 'n01443537_0'"):
        task.image_ids(s, "train")
    (root / "tiny-imagenet-200" / "val").mkdir()
    with pytest.raises(TaskDataError, match="val: no images for split 'val'"):
        task.image_ids(s, "val")


# -------------------------------------------------------------------------------------- errors


def copy_root(data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    shutil.copytree(data_root, root)
    return root


def test_missing_words_txt_names_the_file(t5_dir, data_root, tmp_path):
    root = copy_root(data_root, tmp_path)
    (root / "tiny-imagenet-200" / "words.txt").unlink()
    with pytest.raises(TaskDataError) as err:
        get_task("cls").load_examples(settings(t5_dir, root), "train", train=True)
    msg = str(err.value)
    assert f"{root}/tiny-imagenet-200/words.txt: TinyImageNet words.txt not found" in msg
    assert "--data_paths cls.words" in msg and "\n" not in msg


def test_unknown_wordnet_id_names_words_txt(t5_dir, data_root, tmp_path):
    root = copy_root(data_root, tmp_path)
    folder = root / "tiny-imagenet-200/clip_features/train/data_clip_RN50_att"
    write_clip(folder, "n09999999_0", grid(np.random.default_rng(1), 0))
    with pytest.raises(TaskDataError, match=r"words.txt: no line for WordNet id n09999999 \(image 'n09999999_0'\)"):
        get_task("cls").load_examples(settings(t5_dir, root), "train", train=True)
    # a wnid of val_annotations.txt missing from words.txt: both files are named
    ann = root / "tiny-imagenet-200/val/val_annotations.txt"
    ann.write_text(ann.read_text().replace("n01629819", "n08888888"))
    with pytest.raises(TaskDataError, match=r"words.txt: no line for WordNet id n08888888 .*val_annotations.txt"):
        get_task("cls").load_examples(settings(t5_dir, root), "val", train=False)


def test_val_images_without_annotations_name_the_file_and_the_fix(t5_dir, data_root, tmp_path):
    root = copy_root(data_root, tmp_path)
    ann = root / "tiny-imagenet-200/val/val_annotations.txt"
    ann.write_text("val_0.JPEG\tn01443537\t0\t32\t44\t62\n")
    with pytest.raises(TaskDataError, match=r"val_annotations.txt: image 'val_1' of split 'val' is not listed"):
        get_task("cls").load_examples(settings(t5_dir, root), "val", train=False)
    ann.unlink()
    with pytest.raises(TaskDataError) as err:
        get_task("cls").load_examples(settings(t5_dir, root), "val", train=False)
    msg = str(err.value)
    assert msg.startswith(f"{ann}: not found, and image 'val_0' of split 'val' has no WordNet-id prefix")
    assert "--data_paths cls.val_annotations" in msg
    # the logical name moves it
    ann_elsewhere = tmp_path / "my_val.txt"
    ann_elsewhere.write_text("".join(f"{i}.JPEG\t{w}\n" for i, w in VAL.items()))
    s = settings(t5_dir, root, data_paths=f"cls.val_annotations={ann_elsewhere}")
    assert get_task("cls").load_examples(s, "val", train=False)[1]["val_2"] == "green triangle"


def test_empty_or_missing_feature_folder_names_it_and_the_extraction_command(t5_dir, data_root, tmp_path):
    root = copy_root(data_root, tmp_path)
    folder = root / "tiny-imagenet-200/clip_features/val/data_clip_RN50_att"
    for f in folder.glob("*.h5"):
        f.unlink()
    with pytest.raises(TaskDataError) as err:
        get_task("cls").load_examples(settings(t5_dir, root), "val", train=False)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: no CLIP features for split 'val'; fix: find {root}/tiny-imagenet-200/val")
    assert "vlcli extract-features --feature_type RN50 --images val_images.txt" in msg
    assert f"--out {folder.parent}" in msg
    shutil.rmtree(folder)
    with pytest.raises(FeatureError, match=f"{folder}: CLIP feature folder not found; fix: find "):
        get_task("cls").load_examples(settings(t5_dir, root), "val", train=False)


def test_required_paths_for_preflight(t5_dir, data_root):
    s = settings(t5_dir, data_root)
    paths = get_task("cls").required_paths(s, "val")
    assert [(p.name, p.kind) for p in paths] == [("cls.words", "annotation"), ("cls.clip", "clip")]
    assert paths[1].path == data_root / "tiny-imagenet-200/clip_features/val/data_clip_RN50_att"
    assert all(p.path.exists() for p in paths)


# -------------------------------------------------------------------------------------- metric


def test_top1_accuracy_on_hand_made_predictions(t5_dir, data_root):
    labels = {"a": "goldfish", "b": "European fire salamander", "c": "Egyptian cat", "d": "goldfish"}
    preds = {"a": "goldfish", "b": "  European  fire salamander ", "c": "egyptian cat", "d": "gold fish"}
    assert top1_accuracy(preds, labels) == {"accuracy": 50.0, "correct": 2, "examples": 4}
    assert top1_accuracy(preds, labels, ignore_case=True)["accuracy"] == 75.0
    assert top1_accuracy({"a": "goldfish", "b": "x", "c": "y"}, {k: labels[k] for k in "abc"})["accuracy"] == 33.33
    with pytest.raises(MetricsInputError, match="1 image.*no prediction: d"):
        top1_accuracy({k: preds[k] for k in "abc"}, labels)
    with pytest.raises(MetricsInputError, match="unknown images: e"):
        top1_accuracy({**preds, "e": "x"}, labels)
    with pytest.raises(MetricsInputError, match="predictions must be class names"):
        top1_accuracy({**preds, "a": 3}, labels)
    task = get_task("cls")
    assert task.primary_metric == "accuracy"
    assert task.score(preds, labels, settings(t5_dir, data_root)) == {"accuracy": 50.0}
    assert task.score(preds, labels, settings(t5_dir, data_root, do_lower_case=True)) == {"accuracy": 75.0}


def test_submission_is_a_json_list_covering_the_split(tmp_path):
    task = get_task("cls")
    path = tmp_path / "predictions.json"
    assert task.write_submission({"test_1": "blue square", "test_0": "red circle"}, ["test_0", "test_1"], path) == 2
    assert json.loads(path.read_text()) == [{"image_id": "test_0", "prediction": "red circle"},
                                            {"image_id": "test_1", "prediction": "blue square"}]
    with pytest.raises(SubmissionError, match="1 missing \\('test_1'\\)"):
        task.write_submission({"test_0": "red circle"}, ["test_0", "test_1"], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()
    assert task.submission_file == "predictions.json"


# ---------------------------------------------------------------------------------- end to end


def test_engine_trains_validates_tests_and_submits(t5_dir, data_root, tmp_path):
    out = tmp_path / "run"
    s = settings(t5_dir, data_root, output=str(out), epochs=1, use_adapter=True, lr=3e-3)
    engine = Engine(s)
    history = engine.fit()
    assert (out / "BEST.safetensors").is_file() and (out / "LAST.safetensors").is_file()
    valid = history.records[0]["valid/cls"]
    assert set(valid) == {"accuracy"} and 0.0 <= valid["accuracy"] <= 100.0
    assert history.records[0]["score"] == valid["accuracy"]
    test = engine.test()
    assert test["test/cls"]["accuracy"] == valid["accuracy"]  # test = the labelled val split, same weights
    written = engine.submit()
    path, rows = written["cls"]
    assert path == out / "cls_predictions.json" and rows == 2
    assert [r["image_id"] for r in json.loads(path.read_text())] == ["test_0", "test_1"]


def test_cli_finetune_then_submit(cli, t5_dir, data_root, tmp_path):
    run = tmp_path / "run"
    res = cli("finetune", "cls", "--backbone", str(t5_dir), "--data_root", str(data_root), "--feature_type", "RN50",
              "--batch_size", "4", "--num_workers", "0", "--epochs", "1", "--output", str(run), "--submit")
    assert res.code == 0, res.err
    assert {"BEST.safetensors", "LAST.safetensors", "metrics.jsonl", "cls_predictions.json"} <= {p.name for p in run.iterdir()}
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= record["valid/cls"]["accuracy"] <= 100.0
    res = cli("submit", "--load", str(run))  # into a new <run>/submit/<time>/ folder
    assert res.code == 0, res.err
    [written] = list((run / "submit").glob("*/cls_predictions.json"))
    assert [r["image_id"] for r in json.loads(written.read_text())] == ["test_0", "test_1"]


def test_cli_submit_from_a_predictions_file(cli, data_root, tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"id": "test_0", "prediction": "red circle"}]))
    args = ["submit", "cls", "--data_root", str(data_root), "--feature_type", "RN50", "--predictions", str(preds),
            "--submission", str(tmp_path / "out.json")]
    res = cli(*args)
    assert res.code == 2 and "1 missing ('test_1')" in res.err and not (tmp_path / "out.json").exists()
    preds.write_text(json.dumps([{"id": f"test_{k}", "prediction": NAMES[k]} for k in (1, 0)]))
    res = cli(*args)
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "out.json").read_text()) == [{"image_id": "test_0", "prediction": "red circle"},
                                                               {"image_id": "test_1", "prediction": "blue square"}]


def test_cli_reports_a_missing_words_file_in_one_line(cli, data_root, tmp_path):
    root = copy_root(data_root, tmp_path)
    (root / "tiny-imagenet-200" / "words.txt").unlink()
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"id": "test_0", "prediction": "red circle"}]))
    res = cli("submit", "cls", "--data_root", str(root), "--feature_type", "RN50", "--predictions", str(preds))
    assert res.code == 2 and "words.txt: TinyImageNet words.txt not found" in res.err
    assert "Traceback" not in res.err
