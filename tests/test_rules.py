"""Every compatibility rule is triggered by at least one case, with its id and level."""

import pytest

from vlcli.config import resolve
from vlcli.config.rules import RULES

LAUNCHED = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}

# (rule, level, command, task, cli arguments, environment, substring of the message)
CASES = [
    ("R1", "error", None, None, {"use_adapter": "1", "use_compacter": "1", "tasks": "vqa"}, None, "at most one adapter type"),
    ("R2", "error", None, "vqa", {"use_hyperformer": "true"}, None, "got neither"),
    ("R2", "error", None, "vqa", {"use_hyperformer": "1", "unique_hyper_net": "1", "efficient_unique_hyper_net": "1"}, None, "got both"),
    ("R3", "warning", None, None, {"use_single_adapter": "true"}, None, "--use_single_adapter ignored"),
    ("R4", "warning", None, None, {"share_up_sampler": "true"}, None, "needs per-task adapters"),
    ("R4", "warning", None, "vqa", {"use_adapter": "1", "share_up_sampler": "1", "share_down_sampler": "1"}, None, "equals a single adapter"),
    ("R5", "warning", None, None, {"phm_rank": "2"}, None, "ignored without --use_compacter"),
    ("R5", "error", None, "vqa", {"use_compacter": "1", "hypercomplex_division": "5"}, None, "must divide 768 and the bottleneck size 48"),
    ("R5", "warning", None, "vqa", {"use_compacter": "1", "factorized_phm": "false", "phm_rank": "4"}, None, "only applies with --factorized_phm"),
    ("R6", "warning", None, None, {"low_rank_rank": "2"}, None, "--low_rank_rank ignored"),
    ("R6", "warning", None, None, {"reduction_factor": "8"}, None, "no adapter type selected"),
    ("R6", "warning", None, None, {"unique_hyper_net": "1"}, None, "ignored without --use_hyperformer"),
    ("R6", "error", None, "vqa", {"use_adapter": "1", "reduction_factor": "1000"}, None, "between 1 and 768"),
    ("R7", "warning", None, None, {"add_adapter_cross_attn": "false"}, None, "no adapter type selected"),
    ("R8", "warning", None, None, {"mid_dim": "800"}, None, "no prompts"),
    ("R8", "error", None, None, {"encoder_prompt_len": "-1"}, None, "must be 0 (off) or positive"),
    ("R9", "error", None, "vqa", {"decoder_prompt_len": "10"}, None, "requires a BART backbone"),
    ("R9", "error", None, "vqa", {"decoder_prompt_len": "10", "backbone": "facebook/bart-base", "use_hyperformer": "1", "unique_hyper_net": "1"}, None, "cannot be combined with --use_hyperformer"),
    ("R10", "warning", None, None, {"lora_dim": "8"}, None, "ignored without --use_lora"),
    ("R10", "error", None, "vqa", {"use_lora": "1", "lora_dim": "0"}, None, "--lora_dim 0 must be at least 1"),
    ("R11", "warning", None, None, {"lora_train_biases": "1"}, None, "ignored without --use_lora"),
    ("R12", "error", None, None, {"use_attn_prefix": "1"}, None, "not supported"),
    ("R13", "error", None, None, {"use_lm_head_adapter": "1"}, None, "requires a BART backbone"),
    ("R14", "error", None, None, {"track_z": "1"}, None, "--track_z needs an adapter type"),
    ("R14", "warning", None, None, {"lambda_z": "0.1"}, None, "--lambda_z ignored"),
    ("R15", "warning", None, "vqa", {"unfreeze_language_model": "1", "use_adapter": "1"}, None, "about 100%"),
    ("R16", "error", None, None, {"feature_type": "RN101", "feat_dim": "1024"}, None, "--feat_dim 1024 conflicts with --feature_type RN101 (2048)"),
    ("R17", "error", None, None, {"vis_pooling_output": "1"}, None, "needs CLIP features"),
    ("R17", "error", None, None, {"vis_pooling_output": "1", "feature_type": "RN50", "downsample": "1"}, None, "one token per image"),
    ("R18", "error", None, None, {"feature_type": "raw_ViT"}, None, "raw_ViT is not supported"),
    ("R19", "error", None, None, {"downsample": "1", "sparse_sample": "1"}, None, "at most one of --downsample"),
    ("R20", "warning", None, None, {"downsample": "1"}, None, "BUTD region features are not a grid"),
    ("R20", "warning", None, None, {"downsample": "1", "feature_type": "RN101", "n_boxes": "30"}, None, "25 tokens"),
    ("R20", "error", None, None, {"downsample": "1", "feature_type": "RN101", "n_boxes": "64"}, None, "the features have 49"),
    ("R21", "warning", None, None, {"sparse_sample": "1"}, None, "training only"),
    ("R21", "error", None, None, {"sparse_sample": "1", "feature_type": "RN101", "n_boxes": "64"}, None, "n_boxes <= the 49"),
    ("R22", "warning", None, None, {"vis_use_transformer": "1"}, None, "BART-only options"),
    ("R22", "warning", None, None, {"backbone": "facebook/bart-base", "additional_visual_embedding_layers": "2"}, None, "T5-only option"),
    ("R22", "error", None, None, {"backbone": "facebook/bart-base", "expand_vis_embedding": "1"}, None, "add --vis_pooling_output"),
    ("R23", "error", None, None, {"pos_dim": "5"}, None, "pos_dim must be 4"),
    ("R24", "warning", None, None, {"use_vis_layer_norm": "false", "individual_vis_layer_norm": "false"}, None, "--use_vis_layer_norm is false"),
    ("R25", "warning", None, None, {"use_vis_adapter": "1", "image_size": "224,224"}, None, "--use_vis_adapter, --image_size ignored"),
    ("R25", "error", None, None, {"feature_type": "raw_RN50", "image_size": "230,230"}, None, "multiple of 32"),
    ("R26", "error", "finetune", "refcoco", {"feature_type": "ViT"}, None, "refcoco cannot use --feature_type ViT"),
    ("R26", "error", "finetune", "cls", {}, None, "cls cannot use --feature_type butd"),
    ("R26", "error", "finetune", "vcr", {"feature_type": "raw_RN50"}, None, "vcr cannot use --feature_type raw_RN50"),
    ("R45", "warning", "pretrain", None, {"feature_type": "RN101"}, None, "--losses ground_caption,refer dropped with --feature_type RN101"),
    ("R45", "warning", "pretrain", None, {"tasks": "vqa"}, None, "ignored by `vlcli pretrain`"),
    ("R25", "error", "finetune", "vqa", {"feature_type": "raw_RN50", "clip_random_init": True,
                                         "clip_weights": "openai"}, None, "exclude each other"),
    ("R25", "warning", "finetune", "vqa", {"clip_weights": "openai"}, None, "--clip_weights ignored"),
    ("R27", "error", None, None, {"oscar_tags": "1", "feature_type": "RN50"}, None, "needs --feature_type butd"),
    ("R28", "error", None, None, {"use_vision": "false"}, None, "T5 backbones"),
    ("R28", "error", None, None, {"use_vision": "false", "backbone": "facebook/bart-base", "tasks": "vqa,gqa"}, None, "multitask runs"),
    ("R29", "error", None, None, {"backbone": "openai-community/gpt2"}, None, "neither T5 nor BART"),
    ("R30", "error", "finetune", "vqa", {"distributed": "1"}, {}, "needs a distributed launch"),
    ("R30", "warning", "finetune", "vqa", {"multiGPU": "1"}, {}, "--multiGPU ignored"),
    ("R30", "error", "finetune", "vqa", {"local_rank": "1", "distributed": "1", "multiGPU": "1"}, LAUNCHED, "conflicts with LOCAL_RANK=0"),
    ("R30", "warning", "finetune", "vqa", {"local_rank": "0"}, {}, "outside a distributed launch"),
    ("R32", "error", "finetune", "vqa", {"deepspeed": "/nonexistent/ds.json"}, None, "file not found"),
    ("R32", "warning", "eval", "vqa", {"deepspeed": "/nonexistent/ds.json"}, None, "ignored by `eval`"),
    ("R33", "error", "eval", "vqa", {"test_only": "1"}, None, "--test_only requires --load"),
    ("R33", "error", None, None, {"load": "#TODO"}, None, "placeholder"),
    ("R35", "error", None, None, {"use_adapter": "1"}, None, "--tasks must list every trained task"),
    ("R35", "error", "finetune", "vqa", {"tasks": "gqa"}, None, "TASK vqa conflicts with --tasks gqa"),
    ("R36", "error", None, None, {"multitask_sampling": "random"}, None, "must be one of proportional"),
    ("R36", "warning", None, None, {"multitask_sampling": "roundrobin"}, None, "is 'proportional'"),
    ("R37", "error", None, None, {"optim": "lamb"}, None, "--optim 'lamb' must be one of"),
    ("R37", "warning", None, None, {"optim": "sgd", "adam_eps": "1e-8"}, None, "--adam_eps ignored with --optim sgd"),
    ("R38", "error", None, None, {"gradient_accumulation_steps": "0"}, None, "must be >= 1 and <= 100000"),
    ("R39", "error", None, None, {"prefix": "foo"}, None, "must be one of: none, span"),
    ("R39", "error", None, None, {"prefix": "mask"}, None, "needs a BART tokenizer"),
    ("R39", "warning", None, None, {"prefix": "span", "no_prefix": "1"}, None, "--no_prefix makes"),
    ("R40", "warning", None, None, {"use_tasks_prompts": "1", "prompt": "q: "}, None, "--prompt ignored"),
    ("R40", "error", "finetune", "gqa", {"classifier": "1"}, None, "single-task VQA only"),
    ("R41", "warning", "finetune", "vqa", {"num_beams": "5"}, None, "captioning only"),
    ("R41", "warning", None, None, {"freeze_ln_statistics": "1"}, None, "no-op"),
    ("R42", "error", None, None, {"feature_type": "RN51"}, None, "did you mean 'RN50'"),
    ("R42", "error", None, None, {"vis_adapter_type": "middle"}, None, "<positions>-<kind>"),
    ("R43", "error", None, None, {"batch_size": "0"}, None, "--batch_size 0 must be >= 1"),
    ("R43", "error", None, None, {"warmup_ratio": "1.5"}, None, "must be >= 0 and < 1"),
    ("R44", "error", None, None, {"tasks": "vqa,gqaa"}, None, "did you mean 'gqa'"),
    ("R44", "error", "finetune", "vqaa", {}, None, "unknown TASK 'vqaa'"),
    ("R45", "error", "pretrain", None, {"losses": "lm,obj"}, None, "unknown objective(s) obj"),
    ("R46", "warning", None, None, {"train_topk": "1"}, None, "keeps ONE example"),
    ("R47", "error", None, None, {"load": "/nonexistent/run/BEST"}, None, "no checkpoint found"),
    ("R48", "error", None, None, {"data_paths": "vqa.nope=/x"}, None, "unknown name(s) vqa.nope"),
    ("R49", "error", None, "vqa", {"best_metric": "gqa/accuracy"}, None, "one of the run's tasks (vqa)"),
    ("R49", "error", None, "vqa", {"best_metric": "vqa/acc"}, None, "vqa reports no metric 'acc'"),
    ("R50", "warning", None, "vqa", {"fp16": "1"}, None, "T5 activations overflow float16"),
    ("R43", "error", None, None, {"adam_eps": "nan"}, None, "--adam_eps nan must be a finite number"),
    ("R43", "error", None, None, {"additional_visual_embedding_layers": "2147483648"}, None, "must be >= 0 and <= 64"),
    ("R53", "error", None, None, {"backbone": "t5-bse"}, None, "did you mean 't5-base'"),
    ("R53", "error", None, None, {"tokenizer": "/nonexistent/tok"}, None, "--tokenizer /nonexistent/tok: no such local"),
    ("R54", "error", None, None, {"output": "~nouser/run"}, None, "--output ~nouser/run: ~nouser names no user"),
    ("R54", "error", None, None, {"data_paths": "vqa.questions=/d/" + "q" * 256}, None, "file names are limited to 255"),
    ("R32", "error", "finetune", "vqa", {"deepspeed": "zero2", "use_separate_optimizer_for_visual": "1",
                                         "feature_type": "raw_RN50"}, None, "drop --use_separate_optimizer_for_visual"),
    ("R32", "warning", "finetune", "vqa", {"deepspeed": "zero2", "compile": "1"}, None, "--compile is not applied"),
    ("R56", "error", "pretrain", None, {"fsdp": "1", "deepspeed": "zero3"}, None, "choose one"),
    ("R56", "warning", "finetune", "vqa", {"fsdp": "1", "use_lora": "1"}, None, "saves little memory"),
    ("R55", "error", "finetune", "vqa", {"init_task_map": "pretrain"}, None, "'pretrain' is not SOURCE=TARGET"),
    ("R55", "error", "finetune", "vqa", {"init_task_map": "pretrain=gqa"}, None, "target gqa is not a task of this run"),
    ("R55", "warning", "finetune", "vqa", {"init_task_map": "pretrain=vqa"}, None, "--init_task_map ignored"),
]


@pytest.mark.parametrize("rule,level,command,task,cli,env,needle", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_triggers(rule, level, command, task, cli, env, needle):
    res = resolve(command or "inspect-config", task, [], cli, env=env if env is not None else {})
    found = [i for i in (res.errors if level == "error" else res.warnings) if i.rule == rule]
    assert found, f"{rule} not raised; errors={[str(e) for e in res.errors]} warnings={[str(w) for w in res.warnings]}"
    assert any(needle in i.message for i in found), [i.message for i in found]


def test_r34_from_scratch_with_load(tmp_path):
    ckpt = tmp_path / "BEST.safetensors"
    ckpt.write_bytes(b"x")
    res = resolve("finetune", "vqa", [], {"from_scratch": "1", "load": str(tmp_path)}, env={})
    assert [e.rule for e in res.errors] == ["R34"]


def test_r31_multitask_without_distributed_is_accepted():
    """R31 is fixed by design: multitask trains in one process without --distributed."""
    res = resolve("finetune", "multitask", [], {"tasks": "vqa,gqa", "use_adapter": "1"}, env={})
    assert res.errors == [] and res.settings.derived.multitask


def test_every_rule_has_a_case():
    covered = {c[0] for c in CASES} | {"R31", "R34"}
    expected = {f"R{i}" for i in range(1, 51)} | {"R53", "R54", "R55", "R56"}
    assert expected <= covered
    assert set(RULES) | {"R31", "R47"} == expected  # R47 is checked while resolving `load`


def test_every_numeric_setting_has_a_range():
    """A new numeric field without bounds would accept 2147483648 layers or NaN: R43 must know it."""
    from vlcli.config.rules import RANGED
    from vlcli.config.settings import FIELDS

    numeric = {n for n, f in FIELDS.items()
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)} | {"valid_batch_size"}
    assert numeric - RANGED == set()


def test_best_metric_names_match_what_the_evaluators_return():
    from vlcli.config.rules import METRIC_NAMES
    from vlcli.metrics.vcr import METRIC_KEYS
    from vlcli.tasks import get_task

    assert METRIC_NAMES["vcr"] == METRIC_KEYS
    for task, names in METRIC_NAMES.items():
        assert get_task(task).primary_metric in names, task


def test_all_violations_reported_at_once():
    cli = {"use_adapter": "1", "use_lora": "1", "use_compacter": "1", "downsample": "1", "oneddownsample": "1",
           "pos_dim": "3", "optim": "lamb", "track_z": "1"}
    res = resolve("finetune", None, [], cli, env={})
    assert {"R1", "R19", "R23", "R35", "R37"} <= {e.rule for e in res.errors}


def test_defaults_are_clean():
    res = resolve("finetune", "vqa", [], {}, env={})
    assert res.errors == [] and res.warnings == []
