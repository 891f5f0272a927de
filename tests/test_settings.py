import pytest

from vlcli.config import FIELDS, Settings, resolve
from vlcli.config.settings import SECTION_MODELS


def settings(**cli):
    res = resolve("inspect-config", None, [], cli)
    assert not res.errors, [str(e) for e in res.errors]
    return res.settings


def test_every_reference_argument_is_a_field(reference_jsonc):
    import re

    keys = set(re.findall(r'^\s*"(\w+)"\s*:', reference_jsonc.read_text(), flags=re.M))
    keys |= {"seed", "max_text_length", "use_tasks_prompts", "load_lxmert_qa", "ground_upsample", "ground_weight",
             "itm_cocoonly", "single_vqa_prefix", "no_prefix", "raw_label", "answer_normalize", "classifier",
             "test_answerable", "RefCOCO_GT", "RefCOCO_BUTD", "shuffle_boxes", "vis_pointer", "cls_task"}
    from vlcli.config.resolve import canonical_name

    missing = sorted(k for k in keys if canonical_name(k) is None)
    assert missing == []


def test_sections_and_descriptions():
    assert list(SECTION_MODELS) == ["train", "dataset", "model", "peft", "visual", "inference", "multitask"]
    for name, spec in FIELDS.items():
        assert spec.description and "\n" not in spec.description, name


def test_original_defaults():
    s = Settings()
    assert s.train.seed == 9595 and s.train.batch_size == 256 and s.train.lr == 1e-4
    assert s.train.epochs == 12 and s.train.warmup_ratio == 0.05 and s.train.output == "snap/test"
    assert s.model.backbone == "t5-base" and s.model.image_size == (448, 448)
    assert isinstance(s.model.feat_dim, int) and s.model.feat_dim == 2048 and s.model.pos_dim == 4
    assert s.peft.reduction_factor == 16 and s.peft.lora_dim == 4 and s.peft.lora_alpha == 32
    assert s.dataset.max_text_length == 20 and s.dataset.prompt == "vqa: " and s.inference.gen_max_length == 20
    assert s.multitask.tasks == [] and s.multitask.multitask_sampling == "proportional"  # = the original roundrobin
    assert s.train.load is None and s.train.valid_batch_size is None


@pytest.mark.parametrize("given", ["448,448", "(448,448)", "[448, 448]", [448, 448], "448x448", 448])
def test_image_size_forms(given):
    assert settings(image_size=given).model.image_size == (448, 448)


@pytest.mark.parametrize("given", ["__import__('os')", "448,448,3", "a,b", [1, 2, 3]])
def test_image_size_rejects(given):
    res = resolve("inspect-config", None, [], {"image_size": given})
    assert [e.rule for e in res.errors] == ["type"]
    assert "image_size" in res.errors[0].message


@pytest.mark.parametrize(
    "given,expected",
    [("100", 100), (100, 100), ("0.25", 0.25), (0.5, 0.5), ("1.0", 1.0), ("-1", -1), (0, -1), (200.0, 200)],
)
def test_topk_count_or_fraction(given, expected):
    value = settings(train_topk=given).train.train_topk
    assert value == expected and type(value) is type(expected)


def test_topk_rejects_ambiguous():
    res = resolve("inspect-config", None, [], {"valid_topk": "2.5"})
    assert res.errors and "neither a count" in res.errors[0].message


def test_feat_dim_is_int_from_cli_string():
    s = settings(feat_dim="1024")
    assert s.model.feat_dim == 1024 and isinstance(s.model.feat_dim, int)


@pytest.mark.parametrize("word,value", [("yes", True), ("no", False), ("T", True), ("0", False), ("true", True)])
def test_bool_words(word, value):
    assert settings(do_lower_case=word).dataset.do_lower_case is value


def test_aliases():
    s = settings(use_tasks_prompt="true", wordMaskRate="0.3", objMaskRate="0.2", feature="RN50")
    assert s.dataset.use_tasks_prompts is True
    assert s.dataset.word_mask_rate == 0.3 and s.dataset.obj_mask_rate == 0.2
    assert s.dataset.feature_type == "RN50"


def test_unknown_key_suggests():
    res = resolve("inspect-config", None, [], {"reduction_facto": 8})
    assert [e.rule for e in res.errors] == ["unknown"]
    assert "did you mean 'reduction_factor'" in res.errors[0].message


def test_all_type_errors_reported_together_with_rule_errors():
    res = resolve("inspect-config", None, [], {"batch_size": "x", "lr": "fast", "use_adapter": "true", "use_compacter": "1", "tasks": "vqa"})
    rules = sorted(e.rule for e in res.errors)
    assert rules == ["R1", "type", "type"]


@pytest.mark.parametrize(
    "ft,pooled,dim",
    [("RN50", False, 2048), ("RN101", False, 2048), ("RN50x4", False, 2560), ("ViT", False, 768),
     ("raw_RN50", True, 1024), ("raw_RN101", True, 512), ("raw_RN50x4", True, 640), ("RN101", True, 512)],
)
def test_feat_dim_derived(ft, pooled, dim):
    s = settings(feature_type=ft, vis_pooling_output=pooled)
    assert s.derived.feat_dim == dim


def test_butd_keeps_given_feat_dim():
    assert settings(feat_dim=1024).derived.feat_dim == 1024


def test_multitask_per_task_values():
    # derived values are computed even when rules reject the mix (here R26: cls has no BUTD features)
    res = resolve("inspect-config", None, [], dict(tasks="vqa, gqa nlvr,caption,refcoco,vcr,cls", batch_size=300, use_tasks_prompts=True))
    assert [e.rule for e in res.errors] == ["R26"]
    d = res.settings.derived
    assert d.tasks == ["vqa", "gqa", "nlvr", "caption", "refcoco", "vcr", "cls"] and d.multitask
    bs = {t: r.batch_size for t, r in d.per_task.items()}
    assert bs == {"vqa": 300, "gqa": 500, "nlvr": 100, "caption": 250, "refcoco": 80, "vcr": 3, "cls": 300}
    lens = {t: (r.max_text_length, r.gen_max_length) for t, r in d.per_task.items()}
    assert lens["caption"] == (40, 40) and lens["refcoco"] == (30, 20) and lens["vcr"] == (100, 20)
    assert lens["vqa"] == (20, 20)
    assert d.per_task["gqa"].prompt == "gqa: " and d.per_task["refcoco"].prompt == "visual grounding: "


def test_legacy_gqa_prompt_switch():
    s = settings(tasks="vqa,gqa", use_tasks_prompts=True, legacy_gqa_prompt=True)
    assert s.derived.per_task["gqa"].prompt == "gpa: "


def test_explicit_lengths_are_honoured_for_every_task():
    s = settings(tasks="vqa,caption", max_text_length=32, gen_max_length=12)
    assert {(r.max_text_length, r.gen_max_length) for r in s.derived.per_task.values()} == {(32, 12)}


def test_prompts_without_task_prompts():
    multi = settings(tasks="vqa,gqa").derived.per_task
    assert multi["vqa"].prompt == "" and multi["gqa"].prompt == ""
    single = resolve("finetune", "gqa", [], {}).settings.derived.per_task
    assert single["gqa"].prompt == "gqa: "  # the default "vqa: " no longer leaks into GQA
    custom = resolve("finetune", "gqa", [], {"prompt": "question: "}).settings.derived.per_task
    assert custom["gqa"].prompt == "question: "


def test_valid_batch_size_default_and_scaling():
    assert settings(batch_size=64).derived.valid_batch_size == 64
    s = settings(tasks="vqa,gqa", batch_size=60, valid_batch_size=120)
    assert s.derived.per_task["gqa"].batch_size == 100 and s.derived.per_task["gqa"].valid_batch_size == 200


def test_flat_roundtrip_is_a_valid_profile(tmp_path):
    import json

    s = settings(tasks="vqa,gqa", image_size="224,224", train_topk="0.5", use_adapter=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(s.flat(mode="json")))
    again = resolve("inspect-config", None, [str(path)], {})
    assert not again.errors
    assert again.settings.flat() == s.flat()
