"""Pretraining (`vlcli pretrain`): LXMERT files, answer table, expansion, objectives, validation, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.tiny import make_backbone_dir
from tests.world import FEATURE_TYPE, make_world
from vlcli import api
from vlcli.pretraining import objectives as obj
from vlcli.pretraining.answers import AnswerTable, normalize_answer
from vlcli.pretraining.lxmert import Expansion, expand
from vlcli.tasks import TaskDataError, get_task

FEAT = 2048  # the world's CLIP RN50 width, so a pretrained checkpoint fits `finetune vqa` on it
N_BOX = 4
OBJECTS = ["cube", "sphere,ball", "cylinder", "box", "table"]
ATTRIBUTES = ["red", "blue", "shiny,glossy", "metal"]
ANSWERS = ["red", "blue", "2", "cube", "yes", "no", "3", "man", "gray"]
# image id -> (obj_id, attr_id) of its N_BOX boxes
LABELS = {
    "COCO_train2014_000000000001": ([0, 1, 2, 0], [0, 1, 2, 0]),
    "COCO_val2014_000000000002": ([1, 3, 4, 0], [1, 0, 3, 2]),
    "2354786": ([2, 3, 0, 1], [3, 2, 1, 0]),
    "2354787": ([4, 4, 1, 2], [0, 0, 1, 3]),
    "COCO_val2014_000000000003": ([0, 2, 1, 3], [2, 3, 0, 1]),
    "COCO_val2014_000000000004": ([3, 1, 0, 4], [1, 2, 3, 0]),
}
TRAIN = {
    "mscoco_resplit_train": [
        {
            "img_id": "COCO_train2014_000000000001",
            "sentf": {
                "mscoco": [
                    "a red cube left of a blue sphere",
                    "a cube",
                    "a red cube left of a blue sphere",
                    "the shiny cube is behind the box",
                ],
                "vqa": ["what color is the cube", "is there a ball", "how many cubes are there"],
            },
            "labelf": {"vqa": [{"Red.": 1.0, "blue": 0.3}, {"unicorn": 1.0}, {"two": 0.6, "2": 1.0}]},
        },
        {
            "img_id": "COCO_val2014_000000000002",
            "sentf": {"mscoco": ["a blue sphere on a table"], "vqa": ["what shape is the red object"]},
            "labelf": {"vqa": [{"a cube": 1.0}]},
        },
    ],
    "vgnococo": [
        {
            "img_id": "2354786",
            "sentf": {"vg": ["a green cylinder near a box"], "gqa": ["is the cylinder green"]},
            "labelf": {"gqa": [{"yes": 1.0}]},
        },
        {"img_id": "2354787", "sentf": {"vg": ["the metal ball is right of the cube"]}, "labelf": {}},
    ],
    "mscoco_resplit_val": [
        {
            "img_id": "COCO_val2014_000000000003",
            "sentf": {
                "mscoco": ["a red cube left of a blue sphere", "there are two red cubes"],
                "vqa": ["what color is the cube", "is the ball red"],
            },
            "labelf": {"vqa": [{"red": 1.0}, {"yes": 1.0, "no": 0.3}]},
        },
        {
            "img_id": "COCO_val2014_000000000004",
            "sentf": {"mscoco": ["a yellow box behind the cube"], "vqa": ["how many spheres are there"]},
            "labelf": {"vqa": [{"three": 1.0}]},
        },
    ],
}
FEATURE_FILES = {
    "COCO/features/train2014_obj36.h5": ["COCO_train2014_000000000001"],
    "COCO/features/val2014_obj36.h5": ["COCO_val2014_000000000002"],
    "VG/features/vg_gqa_obj36.h5": ["2354786", "2354787"],
    "COCO/features/resplit_val_obj36.h5": ["COCO_val2014_000000000003", "COCO_val2014_000000000004"],
}


def write_pretraining_data(root: Path) -> Path:
    """LXMERT json files, all_ans.json, VG vocabularies and BUTD h5 files (obj_id, attr_id) in ``root``."""
    (root / "lxmert").mkdir(parents=True, exist_ok=True)
    for split, records in TRAIN.items():
        (root / "lxmert" / f"{split}.json").write_text(json.dumps(records))
    (root / "lxmert" / "all_ans.json").write_text(json.dumps([{"ans": a, "dsets": ["vqa"]} for a in ANSWERS]))
    (root / "VG").mkdir(parents=True, exist_ok=True)
    (root / "VG" / "objects_vocab.txt").write_text("\n".join(OBJECTS) + "\n")
    (root / "VG" / "attributes_vocab.txt").write_text("\n".join(ATTRIBUTES) + "\n")
    rng = np.random.default_rng(0)
    for rel, ids in FEATURE_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(root / rel, "w") as f:
            for image_id in ids:
                g = f.create_group(image_id)
                g["features"] = rng.standard_normal((N_BOX, FEAT)).astype(np.float32)
                g["boxes"] = np.array(
                    [[0, 0, 50, 40], [10, 10, 90, 60], [5, 20, 30, 80], [0, 0, 100, 80]], np.float32
                )
                g["img_h"], g["img_w"] = 80, 100
                g["obj_id"], g["attr_id"] = (np.array(x, np.int64) for x in LABELS[image_id])
    return root


class FixedRng:
    """Known draws in place of numpy's Generator (the objectives only call these methods)."""

    def __init__(self, perm=(), coin=0.9, index=0, choice=0):
        self.perm, self.coin, self.index, self.pick = list(perm), coin, index, choice

    def permutation(self, n):
        head = [i for i in self.perm if i < n]
        return np.array(head + [i for i in range(n) if i not in head])

    def random(self):
        return self.coin

    def integers(self, n):
        return self.index

    def choice(self, n, p=None):
        return self.pick


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    data = make_world(root / "datasets")  # VQA etc. for the finetune step
    write_pretraining_data(data)
    return {
        "data": data,
        "t5": make_backbone_dir(root / "t5", "t5"),
        "bart": make_backbone_dir(root / "bart", "bart"),
    }


def pre_settings(world, family="t5", **kw):
    return api.load_settings(
        command="pretrain",
        backbone=str(world[family]),
        data_root=str(world["data"]),
        feat_dim=FEAT,
        n_boxes=N_BOX,
        **kw,
    )


@pytest.fixture(scope="module")
def tokenizers(world):
    return {fam: api.build_tokenizer(pre_settings(world, fam)) for fam in ("t5", "bart")}


def dataset(world, tokenizers, family="t5", split="mscoco_resplit_train,vgnococo", train=True, **kw):
    settings = pre_settings(world, family, **kw)
    task = get_task("pretrain")
    store = task.open_store(settings, split, train=train)
    return task.build_dataset(settings, split, tokenizers[family], store, train=train), settings


def texts(ds, objective):
    return [ex.text for ex in ds.examples if ex.objective == objective]


# -------------------------------------------------------------------------------------------- answers


def test_answers_are_normalised_with_the_lxmert_table(world):
    assert [
        normalize_answer(a) for a in ("Red.", "a cube", "The Man", "an apple.", "Two", "grey", "ten", "")
    ] == ["red", "cube", "man", "apple", "2", "gray", "10", ""]
    table = AnswerTable.from_file(world["data"] / "lxmert/all_ans.json")
    assert len(table) == len(ANSWERS)
    # "two" and "2" collide: the higher score wins; answers outside the table are dropped
    assert table.normalize_label({"two": 0.6, "2": 1.0, "unicorn": 1.0, "Grey": 0.3}) == {
        "2": 1.0,
        "gray": 0.3,
    }
    assert table.normalize_label({"2": 0.3, "two": 0.9}) == {"2": 0.9}


def test_a_garbled_answer_table_names_the_file(tmp_path):
    bad = tmp_path / "all_ans.json"
    bad.write_text(json.dumps([{"answer": "red"}]))
    with pytest.raises(TaskDataError, match=r"all_ans\.json: entry 0 has no 'ans'"):
        AnswerTable.from_file(bad)


# ------------------------------------------------------------------------------------------ expansion


def test_expansion_skips_short_and_repeated_sentences_and_unanswerable_questions(world):
    table = AnswerTable.from_file(world["data"] / "lxmert/all_ans.json")
    how = Expansion(frozenset(obj.OBJECTIVES))
    got = [(e.objective, e.source, e.text) for e in expand(TRAIN["mscoco_resplit_train"][0], how, table)]
    cap1, cap2 = "a red cube left of a blue sphere", "the shiny cube is behind the box"
    assert got == [
        ("lm", "mscoco", cap1),
        ("caption", "mscoco", cap1),
        ("itm", "mscoco", cap1),
        ("lm", "mscoco", cap2),
        ("caption", "mscoco", cap2),
        ("itm", "mscoco", cap2),
        ("qa", "vqa", "what color is the cube"),
        ("qa", "vqa", "how many cubes are there"),
        ("ground_caption", "ground_caption", ""),
        ("refer", "refer", ""),
    ]
    qa = [e for e in expand(TRAIN["mscoco_resplit_train"][0], how, table) if e.objective == "qa"]
    assert [e.label for e in qa] == [{"red": 1.0, "blue": 0.3}, {"2": 1.0}]
    assert qa[1].id == "COCO_train2014_000000000001_vqa_002_qa"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"caption_only": True}, {("lm", "vg"), ("ground_caption", "ground_caption"), ("refer", "refer")}),
        ({"coco_only": True}, {("ground_caption", "ground_caption"), ("refer", "refer")}),
        (
            {"itm_cocoonly": False, "caption_cocoonly": False},
            {
                ("lm", "vg"),
                ("itm", "vg"),
                ("caption", "vg"),
                ("qa", "gqa"),
                ("ground_caption", "ground_caption"),
                ("refer", "refer"),
            },
        ),
        ({}, {("lm", "vg"), ("qa", "gqa"), ("ground_caption", "ground_caption"), ("refer", "refer")}),
    ],
)
def test_source_filters(world, options, expected):
    table = AnswerTable.from_file(world["data"] / "lxmert/all_ans.json")
    how = Expansion(frozenset(obj.OBJECTIVES), **options)
    assert {(e.objective, e.source) for e in expand(TRAIN["vgnococo"][0], how, table)} == expected


def test_topk_counts_images_before_expansion_and_ground_upsample_repeats(world, tokenizers):
    ds, _ = dataset(world, tokenizers, losses="lm,qa,refer", train_topk=1, ground_upsample=3)
    assert {ex.image_ids[0] for ex in ds.examples} == {"COCO_train2014_000000000001"}
    assert [ex.id for ex in ds.examples if ex.objective == "refer"] == [
        f"COCO_train2014_000000000001_refer_{r:03d}" for r in range(3)
    ]
    valid, _ = dataset(
        world, tokenizers, split="mscoco_resplit_val", train=False, losses="lm", valid_topk=0.5
    )
    assert len({ex.image_ids[0] for ex in valid.examples}) == 1
    # validation examples carry references (objective, source, label); training ones none (memory)
    assert set(valid.references) == {ex.id for ex in valid.examples} and ds.references == {}


# ----------------------------------------------------------------------------------------- objectives


def test_span_prediction_on_the_t5_tokenizer(tokenizers):
    sentence = "a red cube left of a blue sphere on the table"  # 11 words, 0.3 -> 3 masked
    assert obj.corrupt_spans(sentence, 0.3, FixedRng([2, 1, 10])) == (
        "span prediction: a <extra_id_0> left of a blue sphere on the <extra_id_1>",
        "<extra_id_0> red cube <extra_id_1> table",
    )
    tok = tokenizers["t5"]
    source, target = obj.corrupt_spans(sentence, 0.3, FixedRng([2, 1, 10]))
    ids = tok.encode(target)
    assert ids[0] == tok.extra_token_id(0) and tok.extra_token_id(1) in ids and ids[-1] == tok.eos_token_id
    assert tok.encode(source).count(tok.extra_token_id(0)) == 1
    assert (
        tok.decode(ids, skip_special_tokens=False)
        .replace(" ", "")
        .startswith("<extra_id_0>redcube<extra_id_1>")
    )


def test_denoising_on_the_bart_tokenizer(tokenizers):
    sentence = "a red cube left of a blue sphere on the table"
    source, target = obj.corrupt_bart(sentence, 0.3, FixedRng([2, 1, 10]))
    assert (source, target) == ("denoise text: a <mask> left of a blue sphere on the <mask>", sentence)
    tok = tokenizers["bart"]
    assert tok.encode(source).count(tok.hf.mask_token_id) == 2
    assert obj.corrupt_bart(sentence, 0.3, FixedRng([2, 1, 10]), prefix=None)[0].startswith("a <mask>")


@pytest.mark.parametrize(
    ("n", "rate", "count"), [(10, 0.15, 1), (20, 0.15, 3), (5, 0.5, 2), (3, 0.0, 1), (4, 1.0, 4)]
)
def test_word_mask_rate_sets_the_number_of_masked_words(n, rate, count):
    assert obj.mask_count(n, rate) == count
    spans = obj.mask_spans(n, rate, np.random.default_rng(n))
    assert sum(e - s for s, e in spans) == count
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))  # adjacent masks merged


def test_lm_reads_follow_word_mask_rate_and_bart_omits_its_prefix_for_lm_alone(world, tokenizers):
    ds, _ = dataset(world, tokenizers, losses="lm", word_mask_rate=0.5)
    lm = [i for i, ex in enumerate(ds.examples) if ex.objective == "lm"]
    for i in lm:
        source, target, _ = ds.texts(ds.examples[i], np.random.default_rng(i))
        masked = [w for w in target.split() if not w.startswith("<extra_id_")]
        assert len(masked) == obj.mask_count(len(ds.examples[i].text.split()), 0.5)
        assert source.startswith("span prediction: ")
    bart, _ = dataset(world, tokenizers, "bart", losses="lm")
    assert bart.texts(bart.examples[0], np.random.default_rng(0))[0].split()[0] != "denoise"
    both, _ = dataset(world, tokenizers, "bart", losses="lm,qa")
    assert both.texts(both.examples[0], np.random.default_rng(0))[0].startswith("denoise text: ")


def test_qa_inputs_answers_and_tags(world, tokenizers):
    ds, _ = dataset(world, tokenizers, losses="qa")
    gqa = next(ex for ex in ds.examples if ex.source == "gqa")
    assert ds.texts(gqa, FixedRng())[:2] == ("gqa: is the cylinder green", "yes")
    first = ds.examples[0]
    assert [ds.texts(first, FixedRng(choice=k))[1] for k in (0, 1)] == ["red", "blue"]
    draws = [ds.texts(first, np.random.default_rng(k))[1] for k in range(400)]
    assert 0.65 < draws.count("red") / 400 < 0.9  # ∝ score: 1.0 / 1.3
    single, _ = dataset(world, tokenizers, losses="qa", single_vqa_prefix=True, oscar_tags=True)
    gqa = next(ex for ex in single.examples if ex.source == "gqa")
    # box objects of image 2354786: cylinder, box, cube, sphere (first name of "sphere,ball")
    assert single.texts(gqa, FixedRng())[0] == "vqa: is the cylinder green tags: cylinder box cube sphere"


def test_itm_negatives_come_from_other_images(world, tokenizers):
    ds, _ = dataset(world, tokenizers, losses="itm")
    own = {(ex.image_ids[0], ex.text) for ex in ds.examples}
    ex = ds.examples[0]
    assert ds.texts(ex, FixedRng(coin=0.7))[:2] == (f"image text match: {ex.text}", "true")
    # a draw that hits one of this image's own captions is retried until another image's comes up
    rng = np.random.default_rng(1)
    outcomes = [ds.texts(ex, rng)[:2] for _ in range(300)]
    negatives = [s.removeprefix("image text match: ") for s, t in outcomes if t == "false"]
    assert 0.4 < len(negatives) / 300 < 0.6
    assert negatives and all((ex.image_ids[0], n) not in own for n in negatives)
    assert {img for img, _ in ds.negatives} == {"COCO_train2014_000000000001", "COCO_val2014_000000000002"}
    with pytest.raises(TaskDataError, match="itm needs captions of at least two images"):
        dataset(world, tokenizers, losses="itm", train_topk=1)


def test_grounding_pairs_name_a_box_by_its_detector_labels(world, tokenizers):
    ds, _ = dataset(world, tokenizers, losses="ground_caption,refer")
    ground, refer = ds.examples[0], ds.examples[1]
    assert (ground.objective, refer.objective) == ("ground_caption", "refer")
    # image 1, box 2: obj_id 2 (cylinder), attr_id 2 (shiny)
    assert ds.texts(ground, FixedRng([2]))[:2] == ("caption region: <vis_extra_id_2>", "shiny cylinder")
    assert ds.texts(refer, FixedRng([2]))[:2] == ("visual grounding: shiny cylinder", "<vis_extra_id_2>")
    t5, bart = tokenizers["t5"], tokenizers["bart"]
    assert t5.encode("<vis_extra_id_2>") == [t5.vis_token_id(2), t5.eos_token_id]
    assert bart.encode("<vis_extra_id_2>")[1:-1] == [bart.vis_token_id(2)]
    assert t5.encode("caption region: <vis_extra_id_2>")[-2] == t5.vis_token_id(2)
    two, _ = dataset(world, tokenizers, losses="ground_caption,refer", n_ground=2)
    assert two.texts(two.examples[0], FixedRng([3, 1]))[:2] == (
        "caption region: <vis_extra_id_3> <vis_extra_id_1>",
        "<extra_id_0> red cube <extra_id_1> blue sphere",
    )
    assert two.texts(two.examples[1], FixedRng([3, 1]))[:2] == (
        "visual grounding: <extra_id_0> red cube <extra_id_1> blue sphere",
        "<vis_extra_id_3> <vis_extra_id_1>",
    )


def test_caption_objective_targets_the_caption(world, tokenizers):
    ds, _ = dataset(world, tokenizers, losses="caption")
    assert {ex.source for ex in ds.examples} == {"mscoco"}  # caption_cocoonly by default
    assert ds.texts(ds.examples[0], FixedRng())[:2] == ("caption:", "a red cube left of a blue sphere")


def test_ground_weight_scales_the_training_loss_of_grounding_examples(world, tokenizers):
    ds, settings = dataset(world, tokenizers, losses="lm,ground_caption", ground_weight=5, train_topk=1)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    assert batch["objectives"] == ["lm", "lm", "ground_caption"]
    assert batch["loss_weights"].tolist() == [1.0, 1.0, 5.0]
    model = api.build_model(settings, tokenizer=tokenizers["t5"]).eval()
    with torch.no_grad():
        out = model(**get_task("pretrain").model_inputs(batch))
    assert out.loss.item() == pytest.approx(
        (out.example_loss * torch.tensor([1.0, 1.0, 5.0])).mean().item(), rel=1e-5
    )


def test_training_reads_are_redrawn_and_validation_reads_are_fixed(world, tokenizers):
    train, _ = dataset(world, tokenizers, losses="lm")
    long = max(range(len(train)), key=lambda i: len(train.examples[i].text.split()))
    train.reseed(7)
    first = [train[long]["target"] for _ in range(6)]
    train.reseed(7)
    assert [train[long]["target"] for _ in range(6)] == first  # reproducible from the seed
    assert len(set(first)) > 1  # and redrawn on every read
    valid, _ = dataset(world, tokenizers, split="mscoco_resplit_val", train=False)
    assert [valid[i]["input_ids"] for i in range(len(valid))] == [
        valid[i]["input_ids"] for i in range(len(valid))
    ]
    assert valid[0]["target_ids"] is not None  # validation batches carry labels: losses are measured


def test_validation_scores_losses_per_objective_and_qa_accuracy_per_source():
    refs = {
        "a": {"objective": "qa", "source": "vqa", "label": {"red": 1.0, "blue": 0.3}},
        "b": {"objective": "qa", "source": "gqa", "label": {"yes": 1.0}},
        "c": {"objective": "qa", "source": "vqa", "label": {"2": 1.0}},
        "d": {"objective": "lm", "source": "mscoco"},
    }
    preds = {
        "a": {"objective": "qa", "loss": 1.0, "answer": "blue"},
        "b": {"objective": "qa", "loss": 2.0, "answer": "yes"},
        "c": {"objective": "qa", "loss": 3.0, "answer": "two"},
        "d": {"objective": "lm", "loss": 6.0},
    }
    task = get_task("pretrain")
    result = task.score(preds, refs, None)
    assert result == {
        "loss": 3.0,
        "loss/lm": 6.0,
        "loss/qa": 2.0,
        "qa_accuracy": 43.33,
        "qa_accuracy/gqa": 100.0,
        "qa_accuracy/vqa": 15.0,
        "selection": 43.33,
    }
    lm_only = task.score({"d": preds["d"]}, {"d": refs["d"]}, None)
    assert lm_only == {"loss": 6.0, "loss/lm": 6.0, "selection": -6.0}


# ------------------------------------------------------------------------------------- errors and CLI


def cli_args(world, run, *extra):
    return [
        "pretrain",
        "--backbone",
        str(world["t5"]),
        "--data_root",
        str(world["data"]),
        "--feat_dim",
        str(FEAT),
        "--n_boxes",
        str(N_BOX),
        "--batch_size",
        "8",
        "--output",
        str(run),
        *extra,
    ]


def test_unknown_loss_and_other_features_exit_2_with_the_fix(cli, world, tmp_path):
    res = cli(*cli_args(world, tmp_path / "r"), "--losses", "lm,obj")
    assert (
        res.code == 2 and "obj" in res.err and "valid: lm, qa, itm, ground_caption, refer, caption" in res.err
    )
    res = cli(*cli_args(world, tmp_path / "r"), "--feature_type", "RN101")  # CLIP grids: no RN101 folder here
    assert res.code == 2 and "data_clip_RN101_att" in res.err and "vlcli extract-features" in res.err
    assert not (tmp_path / "r").exists()


def test_missing_files_are_listed_before_any_model_is_built(cli, world, tmp_path):
    args = cli_args(world, tmp_path / "r")
    args[args.index("--data_root") + 1] = str(tmp_path / "nowhere")
    res = cli(*args)
    assert res.code == 2
    for name in (
        "lxmert/mscoco_resplit_train.json",
        "lxmert/all_ans.json",
        "VG/objects_vocab.txt",
        "COCO/features/resplit_val_obj36.h5",
        "VG/features/vg_gqa_obj36.h5",
    ):
        assert name in res.err
    assert "coco.butd.resplit_val=COCO/features/val2014_obj36.h5" in res.err


def test_an_image_with_two_records_is_an_error(world, tokenizers, tmp_path):
    data = tmp_path / "datasets"
    (data / "lxmert").mkdir(parents=True)
    (data / "lxmert/a.json").write_text(json.dumps(TRAIN["vgnococo"]))
    (data / "lxmert/b.json").write_text(json.dumps(TRAIN["vgnococo"][:1]))
    settings = api.load_settings(
        command="pretrain", backbone=str(world["t5"]), data_root=str(data), losses="lm"
    )
    with pytest.raises(TaskDataError, match=r"b\.json: image '2354786' already has a record in .*a\.json"):
        get_task("pretrain").load_examples(settings, "a,b", train=True)


def test_garbled_lxmert_files_and_labels_name_the_file_and_the_fix(world, tokenizers, tmp_path):
    from dataclasses import replace

    from vlcli.pretraining.lxmert import read_records

    bad = tmp_path / "x.json"
    bad.write_text(json.dumps([{"img_id": "1", "sentf": {"vqa": ["what is it"]}, "labelf": {"vqa": []}}]))
    with pytest.raises(
        TaskDataError, match=r"x\.json: entry 0: labelf\['vqa'\] must be a list with one label per"
    ):
        read_records(bad, "x")
    bad.write_text("{not json")
    with pytest.raises(TaskDataError, match=r"x\.json: cannot read LXMERT pretraining file"):
        read_records(bad, "x")
    ds, _ = dataset(world, tokenizers, losses="refer")
    ds.vocab = replace(ds.vocab, objects=["cube"])  # a vocabulary shorter than the detector's classes
    with pytest.raises(
        TaskDataError,
        match=r"train2014_obj36\.h5: image 'COCO_train2014_000000000001' has obj_id 1, "
        r"outside .*objects_vocab\.txt \(1 names\)",
    ):
        ds.region_captions("COCO_train2014_000000000001")


def test_pretrain_two_epochs_then_finetune_vqa_from_epoch01(cli, world, tmp_path):
    run = tmp_path / "pre"
    full = ["--unfreeze_language_model"]
    res = cli(
        *cli_args(world, run), "--losses", "lm,qa,itm,ground_caption,refer", "--epochs", "2", "--dry", *full
    )
    assert res.code == 0, res.err
    assert {
        "Epoch01.safetensors",
        "Epoch02.safetensors",
        "BEST.safetensors",
        "LAST.safetensors",
        "metrics.jsonl",
        "config.json",
    } <= {p.name for p in run.iterdir()}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [-1, 0, 1]  # --dry: one validation pass before training
    for r in records:
        valid = r["valid/pretrain"]
        assert {f"loss/{o}" for o in ("lm", "qa", "itm", "ground_caption", "refer")} <= set(valid)
        assert 0.0 <= valid["qa_accuracy"] <= 100.0 and "qa_accuracy/vqa" in valid
        assert valid["selection"] == valid["qa_accuracy"] and np.isfinite(valid["loss"])
    state = torch.load(run / "LAST.state.pt", weights_only=False)
    assert state["history"][0]["epoch"] == -1 and "valid/pretrain" in state["history"][0]  # --dry
    assert "Validation (epoch 2)" in res.out and "Epoch01, Epoch02" in res.out

    vqa = [
        "finetune",
        "vqa",
        "--backbone",
        str(world["t5"]),
        "--data_root",
        str(world["data"]),
        "--feature_type",
        FEATURE_TYPE,
        "--downsample",
        "false",
        "--batch_size",
        "4",
        "--epochs",
        "1",
        "--load",
        str(run / "Epoch01"),
    ]
    res = cli(*vqa, *full, "--output", str(tmp_path / "vqa"))
    assert res.code == 0, res.err
    assert "partial load" not in res.err
    assert len([x for x in (tmp_path / "vqa/metrics.jsonl").read_text().splitlines() if x]) == 1
    # the strict load restored every pretrained tensor
    settings = api.load_settings(
        task="vqa", backbone=str(world["t5"]), feature_type=FEATURE_TYPE, unfreeze_language_model=True
    )
    model = api.build_model(settings)
    report = api.load_checkpoint(model, run / "Epoch01.safetensors", settings=settings)
    assert not report.missing and not report.unexpected and len(report.loaded) > 10
    # full-model pretraining -> adapter finetuning: a warm start, only the adapters start fresh (test_warmstart.py)
    res = cli(*vqa, "--use_adapter", "--output", str(tmp_path / "ad"))
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "ad/config.json").read_text())["_run"]["init"]["fresh_groups"] == ["adapters"]


def test_pretraining_on_raw_images_drops_grounding(cli, world, tmp_path):
    from PIL import Image

    folders = {"COCO_train2014": "COCO/images/train2014", "COCO_val2014": "COCO/images/val2014"}
    for ids in FEATURE_FILES.values():
        for image_id in ids:
            folder = world["data"] / next((f for p, f in folders.items() if image_id.startswith(p)), "VG/VG_100K")
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (80, 60), (200, 30, 30)).save(folder / f"{image_id}.jpg")
    run = tmp_path / "raw"
    args = ["pretrain", "--backbone", str(world["t5"]), "--data_root", str(world["data"]), "--feature_type",
            "raw_RN50", "--clip_random_init", "--image_size", "64,64", "--batch_size", "8", "--epochs", "1",
            ]
    res = cli(*args, "--losses", "lm,qa,itm,refer", "--output", str(run))
    assert res.code == 0, res.err
    assert "--losses refer dropped with --feature_type raw_RN50" in res.err
    valid = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["valid/pretrain"]
    assert {"loss/lm", "loss/qa", "loss/itm"} <= set(valid) and "loss/refer" not in valid
    assert (run / "Epoch01.safetensors").is_file()
    res = cli(*args, "--losses", "lm", "--oscar_tags", "--output", str(tmp_path / "tags"))
    assert res.code == 2 and "--oscar_tags needs BUTD detector labels" in res.err
    res = cli(*args, "--losses", "refer,ground_caption", "--output", str(tmp_path / "none"))
    assert res.code == 2 and "nothing is left" in res.err
