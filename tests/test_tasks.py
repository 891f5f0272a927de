"""Task datasets, collate, prediction and submission files on tiny data in the original formats."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny import make_backbone_dir
from vlcli import api
from vlcli.data.features import ArrayStore
from vlcli.errors import VlcliError
from vlcli.tasks import TASK_CLASSES, SubmissionError, TaskDataError, UnknownTaskError, get_task
from vlcli.tasks.caption import coco_number
from vlcli.tasks.vqa import ANSWER_MAX_LENGTH

FEAT = 16
N_BOX = 4
LONG = "what shape is the red object in front of the small cube and left of the big blue sphere behind the box"


def feats(seed: int, n: int = N_BOX) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, FEAT)).astype(np.float32)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {fam: make_backbone_dir(root / fam, fam) for fam in ("t5", "bart")}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """VQA, GQA, NLVR2 and COCO Karpathy files in the original formats."""
    root = tmp_path_factory.mktemp("datasets")
    (root / "vqa").mkdir()
    vqa_train = [
        {"img_id": "COCO_train2014_000000000001", "sent": "What color is the cube?", "question_id": 101,
         "label": {"red": 1.0, "blue": 0.3}, "answers": [{"answer": "red"}] * 7 + [{"answer": "blue"}] * 3},
        {"img_id": "COCO_train2014_000000000002", "sent": LONG, "question_id": 102, "label": {"two": 0.6},
         "answers": [{"answer": "two"}] * 10},
        {"img_id": "COCO_train2014_000000000001", "question": "is there a ball", "question_id": 103, "label": {},
         "answers": [{"answer": "no"}] * 10},
    ]
    vqa_val = [{"img_id": "COCO_val2014_000000000003", "sent": "how many cubes", "question_id": 201,
                "label": {"3": 1.0}}, {"img_id": "COCO_val2014_000000000004", "sent": "is the ball red",
                "question_id": 202, "label": {"yes": 1.0}}]
    vqa_test = [{"img_id": "COCO_test2015_000000000005", "sent": "what is this", "question_id": 301},
                {"img_id": "COCO_test2015_000000000006", "sent": "is it red", "question_id": 302},
                {"img_id": "COCO_test2015_000000000005", "sent": "how many", "question_id": 303}]
    for name, recs in (("karpathy_train", vqa_train), ("karpathy_val", vqa_val), ("test", vqa_test)):
        (root / "vqa" / f"{name}.json").write_text(json.dumps(recs))
    (root / "GQA").mkdir()
    gqa = {
        "train": [{"img_id": "2354786", "sent": "Is the sky blue?", "question_id": "02930152", "label": {"yes": 1.0}}],
        "valid": [{"img_id": "2354787", "sent": LONG, "question_id": "02930153", "label": {"a very long answer text "
                   "that goes well past ten tokens for sure here": 1.0}}],
        "testdev": [{"img_id": "n161313", "sent": "Is it a cube?", "question_id": "20968379", "label": {"no": 1.0}}],
        "submit": [{"img_id": "n161313", "sent": "Is it a cube?", "question_id": "00000001"},
                   {"img_id": "2354786", "sent": "what color", "question_id": "00000002"}],
    }
    for name, recs in gqa.items():
        (root / "GQA" / f"{name}.json").write_text(json.dumps(recs))
    (root / "nlvr").mkdir()
    nlvr = [{"identifier": f"train-1-{k}-0", "img0": f"train-1-{k}-img0", "img1": f"train-1-{k}-img1",
             "label": k % 2, "sent": LONG if k == 0 else "there are two red cubes", "uid": f"nlvr2_train_{k}"}
            for k in range(3)]
    (root / "nlvr" / "train.json").write_text(json.dumps(nlvr))
    (root / "nlvr" / "test.json").write_text(json.dumps(nlvr))
    (root / "COCO").mkdir()
    images = []
    for k, split in enumerate(["train", "restval", "val", "test", "val"]):
        images.append({
            "filename": f"COCO_val2014_00000039189{k}.jpg", "split": split, "cocoid": 391890 + k,
            "sentences": [{"raw": f" a red cube number {k} {j} is left of a blue sphere on a table near a box ",
                           "sentid": 10 * k + j} for j in range(2)],
        })
    (root / "COCO" / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    return root


@pytest.fixture(scope="module")
def store() -> ArrayStore:
    ids = [f"COCO_train2014_00000000000{k}" for k in (1, 2)] + [f"COCO_val2014_00000000000{k}" for k in (3, 4)]
    ids += [f"COCO_test2015_00000000000{k}" for k in (5, 6)] + ["2354786", "2354787", "n161313"]
    ids += [f"train-1-{k}-img{i}" for k in range(3) for i in (0, 1)]
    ids += [f"COCO_val2014_00000039189{k}" for k in range(5)]
    items = {i: feats(n) for n, i in enumerate(ids)}
    items["COCO_val2014_000000391894"] = feats(99, n=N_BOX + 2)  # a different token count
    return ArrayStore(items)


def settings_for(backbone: Path, data_root: Path, task: str = "vqa", **kw):
    if "," in task:
        return api.load_settings(task="multitask", tasks=task, backbone=str(backbone), feat_dim=FEAT,
                                 data_root=str(data_root), **kw)
    return api.load_settings(task=task, backbone=str(backbone), feat_dim=FEAT, data_root=str(data_root), **kw)


@pytest.fixture(scope="module")
def t5(backbones, data_root):
    s = settings_for(backbones["t5"], data_root, "vqa,gqa,nlvr,caption", use_tasks_prompts=True)
    tok = api.build_tokenizer(s)
    model = api.build_model(s, tokenizer=tok).eval()
    return s, tok, model


@pytest.fixture(scope="module")
def bart(backbones, data_root):
    s = settings_for(backbones["bart"], data_root, "vqa,gqa,nlvr,caption", use_tasks_prompts=True)
    tok = api.build_tokenizer(s)
    model = api.build_model(s, tokenizer=tok).eval()
    return s, tok, model


# -------------------------------------------------------------------------------- registry


def test_registry_names_and_unknown_task():
    assert sorted(TASK_CLASSES) == ["caption", "cls", "gqa", "nlvr", "pretrain", "refcoco", "vcr", "vqa"]
    assert get_task("gqa").name == "gqa"
    with pytest.raises(UnknownTaskError, match="'nlvr2'.*did you mean 'nlvr'"):
        get_task("nlvr2")


# -------------------------------------------------------------------------------- examples


def test_vqa_examples_prompt_truncation_and_targets(t5, store, backbones, data_root):
    s, tok, _ = t5
    ds = get_task("vqa").build_dataset(s, "karpathy_train", tok, store, train=True)
    assert ds.ids == [101, 102, 103]
    assert ds.examples[0].text == "vqa: What color is the cube?"
    assert ds.examples[2].text == "vqa: is there a ball"  # `question` accepted for `sent`
    item = ds[1]
    full = tok.encode(ds.examples[1].text)
    assert len(full) > 20 and len(item["input_ids"]) == 20  # max_text_length of vqa (default 20)
    assert item["input_ids"][:19] == full[:19] and item["input_ids"][-1] == tok.eos_token_id
    assert item["target"] == "two" and item["weight"] == pytest.approx(0.6)
    assert item["target_ids"] == tok.encode("two", ANSWER_MAX_LENGTH)
    assert ds[2]["target"] == "" and ds[2]["weight"] == 0.0  # empty label: weight 0
    np.testing.assert_array_equal(item["feats"], store.get("COCO_train2014_000000000002")[0])
    # an explicit max_text_length applies to vqa too; single-task runs use the task's own prompt
    single = settings_for(backbones["t5"], data_root, "vqa", max_text_length=8)
    ds8 = get_task("vqa").build_dataset(single, "karpathy_train", tok, store, train=True)
    assert len(ds8[1]["input_ids"]) == 8 and ds8.examples[0].text.startswith("vqa: ")


def test_vqa_answer_sampling_is_proportional_to_score_and_seeded(t5, store):
    s, tok, _ = t5
    task = get_task("vqa")
    ds = task.build_dataset(s, "karpathy_train", tok, store, train=True, rng=np.random.default_rng(7))
    ex = ds.examples[0]
    draws = [ds.choose_target(ex) for _ in range(4000)]
    freq = Counter(t for t, _ in draws)
    assert freq["red"] / 4000 == pytest.approx(1.0 / 1.3, abs=0.025)
    assert freq["blue"] / 4000 == pytest.approx(0.3 / 1.3, abs=0.025)
    assert {w for t, w in draws if t == "red"} == {1.0} and {w for t, w in draws if t == "blue"} == {0.3}
    again = task.build_dataset(s, "karpathy_train", tok, store, train=True, rng=np.random.default_rng(7))
    assert [again[0]["target"] for _ in range(50)] == [t for t, _ in draws[:50]]


def test_vqa_raw_label_draws_human_answers_with_weight_one(backbones, data_root, store):
    s = settings_for(backbones["t5"], data_root, "vqa", raw_label=True)
    tok = api.build_tokenizer(s)
    ds = get_task("vqa").build_dataset(s, "karpathy_train", tok, store, train=True, rng=np.random.default_rng(0))
    draws = [ds.choose_target(ds.examples[0]) for _ in range(3000)]
    assert {w for _, w in draws} == {1.0}
    assert Counter(t for t, _ in draws)["red"] / 3000 == pytest.approx(0.7, abs=0.03)
    assert ds[2]["target"] == "no" and ds[2]["weight"] == 1.0  # raw answers even where `label` is empty


def test_vqa_answer_normalize_uses_the_official_normaliser(backbones, data_root, store):
    s = settings_for(backbones["t5"], data_root, "vqa", raw_label=True, answer_normalize=True)
    tok = api.build_tokenizer(s)
    ds = get_task("vqa").build_dataset(s, "karpathy_train", tok, store, train=True)
    assert ds.examples[1].targets == ["2"] * 10  # "two" -> "2"


def test_topk_train_and_valid(backbones, data_root, store):
    tok_s = settings_for(backbones["t5"], data_root, "vqa")
    tok = api.build_tokenizer(tok_s)
    task = get_task("vqa")
    s = settings_for(backbones["t5"], data_root, "vqa", train_topk=2, valid_topk=1.0)
    assert task.build_dataset(s, "karpathy_train", tok, store, train=True).ids == [101, 102]
    s = settings_for(backbones["t5"], data_root, "vqa", train_topk=0.67, valid_topk=0.5)
    frac = task.build_dataset(s, "karpathy_train", tok, store, train=True).ids
    assert len(frac) == 2 and frac == task.build_dataset(s, "karpathy_train", tok, store, train=True).ids
    valid = task.build_dataset(s, "karpathy_val", tok, store, train=False)
    assert len(valid) == 1 and set(valid.references) == set(valid.ids)
    # valid_topk names the validation split only: a test / submission split stays whole
    assert len(task.build_dataset(s, "test", tok, store, train=False)) == 3
    assert len(task.build_dataset(s, "karpathy_val", tok, store, train=False, role="test")) == 2


def test_gqa_prompts_ids_and_untruncated_target(backbones, data_root, store, t5):
    s, tok, _ = t5
    task = get_task("gqa")
    ds = task.build_dataset(s, "train,valid", tok, store, train=True)
    assert ds.ids == ["02930152", "02930153"]
    assert ds.examples[0].text == "gqa: Is the sky blue?"
    item = ds[1]
    assert len(item["input_ids"]) == 20
    assert item["target_ids"] == tok.encode(item["target"]) and len(item["target_ids"]) > ANSWER_MAX_LENGTH
    assert "loss_weights" not in task.collate([ds[0], item], tok.pad_token_id)  # unweighted loss
    legacy = settings_for(backbones["t5"], data_root, "vqa,gqa", use_tasks_prompts=True, legacy_gqa_prompt=True)
    assert task.build_dataset(legacy, "testdev", tok, store, train=False).examples[0].text == "gpa: Is it a cube?"
    plain = settings_for(backbones["t5"], data_root, "vqa,gqa")  # multitask without task prompts: none
    assert task.build_dataset(plain, "testdev", tok, store, train=False).examples[0].text == "Is it a cube?"
    assert task.build_dataset(s, "testdev", tok, store, train=False).references == {"20968379": {"no": 1.0}}


def test_nlvr_two_images_in_order_untruncated_true_false(t5, store):
    s, tok, _ = t5
    ds = get_task("nlvr").build_dataset(s, "train", tok, store, train=True)
    item = ds[0]
    assert item["feats"].shape == (2, N_BOX, FEAT) and item["boxes"].shape == (2, N_BOX, 4)
    np.testing.assert_array_equal(item["feats"][0], store.get("train-1-0-img0")[0])
    np.testing.assert_array_equal(item["feats"][1], store.get("train-1-0-img1")[0])
    assert item["input_ids"] == tok.encode("nlvr: " + LONG) and len(item["input_ids"]) > 20
    assert [ds[k]["target"] for k in range(3)] == ["false", "true", "false"]
    assert ds.references == {"train-1-0-0": False, "train-1-1-0": True, "train-1-2-0": False}


def test_caption_examples_per_sentence_and_per_image(t5, backbones, data_root, store):
    s, tok, _ = t5
    task = get_task("caption")
    train = task.build_dataset(s, "karpathy_train", tok, store, train=True)
    assert train.ids == [0, 1, 10, 11]  # train + restval images, one example per sentence
    assert train.examples[0].text == "caption: "
    assert train.examples[0].targets == ["a red cube number 0 0 is left of a blue sphere on a table near a box"]
    long_target = tok.encode(train.examples[0].targets[0])
    gen = s.derived.per_task["caption"].gen_max_length
    assert gen == 40 and train[0]["target_ids"] == long_target[:gen]  # shorter than 40: untouched
    val = task.build_dataset(s, "karpathy_val", tok, store, train=False)
    assert val.ids == ["COCO_val2014_000000391892", "COCO_val2014_000000391894"]
    assert val.references["COCO_val2014_000000391892"][1].startswith("a red cube number 2 1")
    assert val[0]["target_ids"] is None
    short = settings_for(backbones["t5"], data_root, "caption", gen_max_length=5, prefix="span")
    ds = task.build_dataset(short, "karpathy_train", tok, store, train=True)
    assert ds.examples[0].text == "span prediction:" and len(ds[0]["target_ids"]) == 5
    empty = settings_for(backbones["t5"], data_root, "caption", no_prefix=True)
    assert task.build_dataset(empty, "karpathy_test", tok, store, train=False)[0]["input_ids"] == [tok.eos_token_id]
    with pytest.raises(TaskDataError, match="karpathy_train, karpathy_val or karpathy_test"):
        task.build_dataset(s, "karpathy_dev", tok, store, train=False)


def test_missing_file_and_bad_record_errors(t5, store, tmp_path):
    s, tok, _ = t5
    with pytest.raises(TaskDataError, match=r"vqa/nope\.json: VQA question file of split 'nope' not found"):
        get_task("vqa").build_dataset(s, "nope", tok, store, train=False)
    bad = s.model_copy(deep=True)
    bad.dataset.data_root = str(tmp_path)
    (tmp_path / "nlvr").mkdir()
    (tmp_path / "nlvr" / "valid.json").write_text(json.dumps([{"identifier": "x", "img0": "a", "sent": "s"}]))
    with pytest.raises(TaskDataError, match=r"valid\.json: entry 0 has no 'img1'"):
        get_task("nlvr").build_dataset(bad, "valid", tok, store, train=False)


# --------------------------------------------------------------------------------- collate


def test_collate_pads_text_labels_and_stacks_visual(t5, store):
    s, tok, _ = t5
    task = get_task("vqa")
    ds = task.build_dataset(s, "karpathy_train", tok, store, train=True)
    items = [ds[0], ds[1]]
    b = task.collate(items, tok.pad_token_id)
    n0, n1 = len(items[0]["input_ids"]), len(items[1]["input_ids"])
    assert b["input_ids"].shape == (2, max(n0, n1)) and b["ids"] == [101, 102] and b["task"] == "vqa"
    assert b["attention_mask"][0].tolist() == [1] * n0 + [0] * (n1 - n0)
    assert b["input_ids"][0, n0:].eq(tok.pad_token_id).all()
    assert b["vis_feats"].shape == (2, N_BOX, FEAT) and b["vis_pos"].shape == (2, N_BOX, 4)
    t0, t1 = len(items[0]["target_ids"]), len(items[1]["target_ids"])
    assert b["labels"].shape == (2, max(t0, t1))
    assert b["labels"][0, :t0].tolist() == items[0]["target_ids"]
    assert b["labels"][0, t0:].eq(-100).all() and b["labels"][1, t1:].eq(-100).all()
    assert b["loss_weights"].tolist() == pytest.approx([items[0]["weight"], 0.6])
    assert "vis_attention_mask" not in b
    nl = get_task("nlvr").build_dataset(s, "train", tok, store, train=True)
    nb = nl.collate([nl[0], nl[1], nl[2]])
    assert nb["vis_feats"].shape == (3, 2, N_BOX, FEAT) and nb["vis_pos"].shape == (3, 2, N_BOX, 4)
    cap = get_task("caption").build_dataset(s, "karpathy_val", tok, store, train=False)
    cb = cap.collate([cap[0], cap[1]])  # 4 and 6 visual tokens
    assert cb["vis_feats"].shape == (2, N_BOX + 2, FEAT) and "labels" not in cb
    assert cb["vis_attention_mask"].tolist() == [[1] * N_BOX + [0, 0], [1] * (N_BOX + 2)]
    assert cb["vis_feats"][0, N_BOX:].abs().sum() == 0


def test_model_inputs_give_a_finite_loss(t5, bart, store):
    for s, tok, model in (t5, bart):
        for name, split in (("vqa", "karpathy_train"), ("nlvr", "train"), ("caption", "karpathy_train")):
            task = get_task(name)
            ds = task.build_dataset(s, split, tok, store, train=True)
            batch = ds.collate([ds[0], ds[1]])
            kwargs = task.model_inputs(batch)
            assert kwargs["task"] == name and kwargs["loss_reduction"] == ("token" if name == "caption" else "example")
            with torch.no_grad():
                out = model(**kwargs)
            assert torch.isfinite(out.loss)


# ------------------------------------------------------------------------------ prediction


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_predict_end_to_end_covers_every_id(family, t5, bart, store, tmp_path):
    s, tok, model = t5 if family == "t5" else bart
    for name, split in (("vqa", "test"), ("gqa", "submit"), ("nlvr", "test"), ("caption", "karpathy_val")):
        task = get_task(name)
        ds = task.build_dataset(s, split, tok, store, train=False)
        preds = {}
        for start in range(0, len(ds), 2):
            preds.update(task.predict(model, ds.collate([ds[i] for i in range(start, min(start + 2, len(ds)))]),
                                      s, tok))
        assert list(preds) == ds.ids
        assert all(isinstance(p, str) for p in preds.values())
        if name == "nlvr":
            assert set(preds.values()) <= {"true", "false"}
        assert task.write_submission(preds, ds, tmp_path / f"{family}-{name}") == len(ds)


def test_nlvr_candidates_are_first_answer_tokens(t5, bart):
    task = get_task("nlvr")
    for _, tok, _ in (t5, bart):
        true_id, false_id = task.candidate_ids(tok)
        enc_t, enc_f = tok.encode("true"), tok.encode("false")
        if tok.family == "bart":  # BART targets start with <s>, which the answer prefix already holds
            assert enc_t[0] == tok.hf.bos_token_id
            enc_t, enc_f = enc_t[1:], enc_f[1:]
        assert (true_id, false_id) == (enc_t[0], enc_f[0])


def test_caption_generation_uses_num_beams_and_gen_max_length(backbones, data_root, store):
    s = settings_for(backbones["t5"], data_root, "caption", num_beams=3, gen_max_length=4)
    tok = api.build_tokenizer(s)
    model = api.build_model(s, tokenizer=tok).eval()
    task = get_task("caption")
    assert task.num_beams(s) == 3 and get_task("vqa").num_beams(s) == 1  # R41: beams for captioning only
    ds = task.build_dataset(s, "karpathy_test", tok, store, train=False)
    batch = ds.collate([ds[0]])
    ids = model.generate(batch["input_ids"], batch["attention_mask"], batch["vis_feats"], batch["vis_pos"],
                         task="caption", num_beams=3, max_length=4)
    assert ids.shape[1] <= 4
    assert task.predict(model, batch, s, tok) == {"COCO_val2014_000000391893": tok.decode(ids[0])}


# ------------------------------------------------------------------------------ submission


def test_submission_formats(tmp_path):
    vqa = tmp_path / "vqa.json"
    assert get_task("vqa").write_submission({302: "yes", 301: "2"}, [301, 302], vqa) == 2
    assert json.loads(vqa.read_text()) == [{"question_id": 301, "answer": "2"}, {"question_id": 302, "answer": "yes"}]
    gqa = tmp_path / "gqa.json"
    get_task("gqa").write_submission([("00000001", "no"), ("00000002", "red")], ["00000001", "00000002"], gqa)
    assert json.loads(gqa.read_text()) == [
        {"questionId": "00000001", "prediction": "no"}, {"questionId": "00000002", "prediction": "red"}]
    nlvr = tmp_path / "submit.csv"
    get_task("nlvr").write_submission({"test1-0-1-0": "true", "test1-0-1-1": "false", "t-2": True},
                                      ["test1-0-1-0", "test1-0-1-1", "t-2"], nlvr)
    assert nlvr.read_text() == "test1-0-1-0,True\ntest1-0-1-1,False\nt-2,True\n"
    assert list(csv.reader(nlvr.open())) == [["test1-0-1-0", "True"], ["test1-0-1-1", "False"], ["t-2", "True"]]
    cap = tmp_path / "captions.json"
    get_task("caption").write_submission({"COCO_val2014_000000391895": "a man riding a bike"},
                                         ["COCO_val2014_000000391895"], cap)
    assert json.loads(cap.read_text()) == [{"image_id": 391895, "caption": "a man riding a bike"}]
    assert coco_number("COCO_test2015_000000000001") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.json", "gqa.json", "submit.csv", "vqa.json"]


def test_submission_coverage_errors_name_the_ids(tmp_path):
    task = get_task("vqa")
    path = tmp_path / "submit.json"
    path.write_text("old")
    with pytest.raises(SubmissionError, match=r"submit\.json: not written.*1 missing \(302\)"):
        task.write_submission({301: "a", 303: "c"}, [301, 302, 303], path)
    with pytest.raises(SubmissionError, match=r"1 not in the split \(999\)"):
        task.write_submission({301: "a", 302: "b", 303: "c", 999: "x"}, [301, 302, 303], path)
    with pytest.raises(SubmissionError, match=r"1 predicted more than once \(301\)"):
        task.write_submission([(301, "a"), (301, "b"), (302, "b"), (303, "c")], [301, 302, 303], path)
    many = {i: "x" for i in range(3)}
    with pytest.raises(SubmissionError, match=r"7 missing \(3, 4, 5, 6, 7, \.\.\.\)"):
        task.write_submission(many, range(10), path)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["submit.json"]
    with pytest.raises(VlcliError, match="predictions must be true or false"):
        get_task("nlvr").write_submission({"a": "maybe"}, ["a"], tmp_path / "n.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submit.json"]  # no temporary file left behind
