"""Compatibility rules R1-R41 (spec config-and-peft §2) and vlcli's own checks R42-R54 (R51/R52 live elsewhere).

Each rule is a function that looks at validated settings and returns :class:`~vlcli.errors.Issue`
objects: conflicting options are errors (never silent precedence), options that have no effect are
warnings. :func:`check` runs every rule so that all violations are reported at once. Warnings about
ignored options fire only for options the user *changed* (set to a non-default value in a profile,
on the command line or in a saved run config), so defaults never produce noise.

``docs/rules.md`` lists every rule with its level and the original behaviour it replaces.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vlcli.config.derive import (
    FEATURE_TYPES,
    PRECOMPUTED_CLIP,
    RAW_TYPES,
    base_feature_type,
    feat_dim_for,
)
from vlcli.config.settings import FIELDS, Derived, Settings
from vlcli.config.types import KNOWN_TASKS, PATH_SHOWN, clipped, path_problem
from vlcli.errors import Issue
from vlcli.paths import exists, is_dir, is_file, user_path

ADAPTER_TYPES = ("use_adapter", "use_hyperformer", "use_compacter", "use_lradapter")
PER_TASK_ADAPTER_TYPES = ("use_adapter", "use_compacter", "use_lradapter")
OPTIMIZERS = ("adamw", "adam", "rms", "adamax", "sgd")
ADAM_OPTIMIZERS = ("adamw", "adam", "adamax")
SAMPLINGS = ("proportional", "roundrobin", "balanced")
PREFIXES = ("span", "denoise", "mask")
PRETRAIN_LOSSES = ("lm", "qa", "itm", "ground_caption", "refer", "caption")
PRETRAIN_TASK = "pretrain"  # the one task of `vlcli pretrain` (its objectives are --losses)
CLS_TASKS = ("tinyimagenet",)
VIS_ADAPTER_POSITIONS = ("front", "middle", "back", "transition")
VIS_ADAPTER_KINDS = ("bottleneck", "basic")
COMMANDS_TRAINING = ("finetune", "pretrain")
COMPACTER_OPTIONS = (
    "hypercomplex_division",
    "phm_rank",
    "shared_phm_rule",
    "factorized_phm",
    "phm_init_range",
    "shared_phm_rule_over_tasks",
)
VIS_ENCODER_OPTIONS = (
    "use_vis_adapter",
    "vis_adapter_type",
    "vis_reduction_factor",
    "remove_bn_vis_adapter",
    "unfreeze_vis_encoder",
    "unfreeze_vis_last_layer",
    "unfreeze_batch_norms",
    "freeze_bn_statistics",
    "use_separate_optimizer_for_visual",
    "augment_hflip",
    "clip_weights",
    "clip_random_init",
    "use_adam_for_visual",
    "vis_lr",
    "vis_weight_decay",
    "use_data_augmentation",
    "image_size",
)
# RefCOCOg and VCR read BUTD region features whatever --feature_type says; CLIP grids of the same width
# (RN50, RN101: 2048) can share the visual embedding with them in one (multitask) run (R26).
REGION_TASKS = ("refcoco", "vcr")
DEMO_FEATURE_TYPES = ("RN50", "RN101", "RN50x4", "ViT", "raw_RN50", "raw_RN101", "raw_RN50x4")
"""What the demo world provides (images and CLIP grids, no BUTD regions)."""
REGION_COMPATIBLE = ("RN50", "RN101")
# Tasks each kind of visual input supports (R26).
TASKS_BY_FEATURES = {
    "butd": ("vqa", "gqa", "nlvr", "caption", "refcoco", "vcr"),
    "clip": ("vqa", "gqa", "nlvr", "caption", "cls"),
    "raw": ("vqa", "gqa", "nlvr", "caption", "cls"),
}


@dataclass
class RuleContext:
    """What a rule may look at besides the settings."""

    settings: Settings
    derived: Derived
    explicit: set[str] = field(default_factory=set)
    command: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def v(self, name: str):
        """Value of an argument by name."""
        return self.settings.get(name)

    def changed(self, name: str) -> bool:
        """The user set ``name`` to something other than its default."""
        return name in self.explicit and self.v(name) != FIELDS[name].default

    @property
    def family(self) -> str | None:
        return self.derived.backbone_family

    def adapter_types(self) -> list[str]:
        return [n for n in ADAPTER_TYPES if self.v(n)]

    def has_per_task_modules(self) -> bool:
        """Any PEFT module keyed by task (adapters, hyperformer, LoRA, prompts)."""
        return bool(
            self.adapter_types()
            or self.v("use_lora")
            or self.v("encoder_prompt_len") > 0
            or self.v("decoder_prompt_len") > 0
        )


Rule = Callable[[RuleContext], Iterable[Issue]]
RULES: dict[str, Rule] = {}


def rule(rule_id: str) -> Callable[[Rule], Rule]:
    """Register a rule under its id."""

    def register(func: Rule) -> Rule:
        RULES[rule_id] = func
        return func

    return register


def E(rule_id: str, message: str, *fields: str) -> Issue:  # noqa: N802
    return Issue(rule_id, "error", message, fields)


def W(rule_id: str, message: str, *fields: str) -> Issue:  # noqa: N802
    return Issue(rule_id, "warning", message, fields)


def _flags(names: Iterable[str]) -> str:
    return ", ".join(f"--{n}" for n in names)


# --------------------------------------------------------------------------------------------------
# PEFT family


@rule("R1")
def _r1(c: RuleContext):
    types = c.adapter_types()
    if len(types) > 1:
        yield E("R1", f"Choose at most one adapter type; got: {', '.join(types)}.", *types)


@rule("R2")
def _r2(c: RuleContext):
    if c.v("use_hyperformer"):
        picked = [n for n in ("unique_hyper_net", "efficient_unique_hyper_net") if c.v(n)]
        if len(picked) != 1:
            got = "both" if picked else "neither"
            yield E(
                "R2",
                f"--use_hyperformer needs exactly one of --unique_hyper_net or --efficient_unique_hyper_net "
                f"(got {got}).",
                "unique_hyper_net",
                "efficient_unique_hyper_net",
            )


@rule("R3")
def _r3(c: RuleContext):
    if c.v("use_single_adapter") and not any(c.v(n) for n in PER_TASK_ADAPTER_TYPES):
        why = "it has no effect with --use_hyperformer" if c.v("use_hyperformer") else "no per-task adapter type selected"
        yield W(
            "R3",
            f"--use_single_adapter ignored: {why}; use it with --use_adapter, --use_compacter or --use_lradapter.",
            "use_single_adapter",
        )


@rule("R4")
def _r4(c: RuleContext):
    samplers = [n for n in ("share_up_sampler", "share_down_sampler") if c.v(n)]
    if not samplers:
        return
    per_task = any(c.v(n) for n in PER_TASK_ADAPTER_TYPES) and not c.v("use_single_adapter")
    if not per_task:
        yield W(
            "R4",
            f"{_flags(samplers)} ignored: sharing a sampler needs per-task adapters "
            "(--use_adapter/--use_compacter/--use_lradapter without --use_single_adapter).",
            *samplers,
        )
    elif len(samplers) == 2:
        yield W(
            "R4",
            "--share_up_sampler with --share_down_sampler equals a single adapter; use --use_single_adapter.",
            *samplers,
        )


@rule("R5")
def _r5(c: RuleContext):
    if not c.v("use_compacter"):
        ignored = [n for n in COMPACTER_OPTIONS if c.changed(n)]
        if ignored:
            yield W("R5", f"{_flags(ignored)} ignored without --use_compacter.", *ignored)
        return
    n = c.v("hypercomplex_division")
    if c.changed("phm_rank") and not c.v("factorized_phm"):
        yield W("R5", "--phm_rank ignored: it only applies with --factorized_phm.", "phm_rank")
    if c.v("shared_phm_rule_over_tasks") and (c.v("shared_phm_rule") or c.v("use_single_adapter")):
        yield W(
            "R5",
            "--shared_phm_rule_over_tasks ignored: it applies only with --shared_phm_rule false and per-task compacters.",
            "shared_phm_rule_over_tasks",
        )
    if n < 1:
        yield E("R5", f"--hypercomplex_division {n} must be at least 1.", "hypercomplex_division")
        return
    if c.v("phm_rank") < 1:
        yield E("R5", f"--phm_rank {c.v('phm_rank')} must be at least 1.", "phm_rank")
    if c.v("phm_init_range") <= 0:
        yield E("R5", f"--phm_init_range {c.v('phm_init_range')} must be positive.", "phm_init_range")
    d = c.derived.d_model
    rf = c.v("reduction_factor")
    if d and rf >= 1:
        m = d // rf
        if d % n or m == 0 or m % n:
            yield E(
                "R5",
                f"--hypercomplex_division {n} must divide {d} and the bottleneck size {m} "
                f"(d_model {d} // reduction_factor {rf}).",
                "hypercomplex_division",
                "reduction_factor",
            )


@rule("R6")
def _r6(c: RuleContext):
    if c.v("use_lradapter"):
        if c.v("low_rank_rank") < 1:
            yield E("R6", f"--low_rank_rank {c.v('low_rank_rank')} must be at least 1.", "low_rank_rank")
    elif c.changed("low_rank_rank"):
        yield W("R6", "--low_rank_rank ignored without --use_lradapter.", "low_rank_rank")
    hyper_opts = [n for n in ("projected_task_embedding_dim", "unique_hyper_net", "efficient_unique_hyper_net") if c.changed(n)]
    if hyper_opts and not c.v("use_hyperformer"):
        yield W("R6", f"{_flags(hyper_opts)} ignored without --use_hyperformer.", *hyper_opts)
    p = c.v("projected_task_embedding_dim")
    if p != -1 and p < 1:
        yield E("R6", f"--projected_task_embedding_dim {p} must be -1 (= 64) or at least 1.", "projected_task_embedding_dim")
    rf = c.v("reduction_factor")
    if c.adapter_types():
        d = c.derived.d_model
        if rf < 1 or (d and rf > d):
            bound = f"{d} (d_model)" if d else "d_model"
            yield E("R6", f"--reduction_factor {rf} must be between 1 and {bound}.", "reduction_factor")
    elif c.changed("reduction_factor"):
        yield W("R6", "--reduction_factor ignored: no adapter type selected.", "reduction_factor")


@rule("R7")
def _r7(c: RuleContext):
    if c.adapter_types():
        return
    opts = [n for n in ("add_adapter_cross_attn",) if c.changed(n)]
    if not c.v("use_lm_head_adapter"):
        opts += [n for n in ("add_layer_norm_before_adapter", "add_layer_norm_after_adapter") if c.changed(n)]
    if opts:
        yield W("R7", f"{_flags(opts)} ignored: no adapter type selected.", *opts)


@rule("R8")
def _r8(c: RuleContext):
    for name in ("encoder_prompt_len", "decoder_prompt_len"):
        if c.v(name) < 0:
            yield E("R8", f"--{name} {c.v(name)} must be 0 (off) or positive.", name)
    if c.v("mid_dim") < 1:
        yield E("R8", f"--mid_dim {c.v('mid_dim')} must be at least 1.", "mid_dim")
    if c.v("encoder_prompt_len") <= 0 and c.v("decoder_prompt_len") <= 0:
        opts = [n for n in ("use_single_prompt", "mid_dim") if c.changed(n)]
        if opts:
            yield W("R8", f"{_flags(opts)} ignored: no prompts (--encoder_prompt_len/--decoder_prompt_len are 0).", *opts)


@rule("R9")
def _r9(c: RuleContext):
    if c.v("decoder_prompt_len") > 0 and (c.family == "t5" or c.v("use_hyperformer")):
        yield E(
            "R9",
            "--decoder_prompt_len requires a BART backbone and cannot be combined with --use_hyperformer.",
            "decoder_prompt_len",
        )


@rule("R10")
def _r10(c: RuleContext):
    if c.v("use_lora"):
        if c.v("lora_dim") < 1:
            yield E("R10", f"--lora_dim {c.v('lora_dim')} must be at least 1.", "lora_dim")
    else:
        opts = [n for n in ("lora_dim", "lora_alpha", "use_single_lora") if c.changed(n)]
        if opts:
            yield W("R10", f"{_flags(opts)} ignored without --use_lora.", *opts)


@rule("R11")
def _r11(c: RuleContext):
    if c.v("lora_train_biases") and not c.v("use_lora"):
        yield W("R11", "--lora_train_biases ignored without --use_lora.", "lora_train_biases")


@rule("R12")
def _r12(c: RuleContext):
    if c.v("use_attn_prefix"):
        yield E(
            "R12",
            "--use_attn_prefix (the original's legacy prefix tuning) is not supported; "
            "use --encoder_prompt_len / --decoder_prompt_len.",
            "use_attn_prefix",
        )


@rule("R13")
def _r13(c: RuleContext):
    if c.v("use_lm_head_adapter") and c.family == "t5":
        yield E("R13", "--use_lm_head_adapter requires a BART backbone (T5 has no logits bias path for it).", "use_lm_head_adapter")


@rule("R14")
def _r14(c: RuleContext):
    if c.v("track_z") and not c.adapter_types():
        yield E(
            "R14",
            "--track_z needs an adapter type (--use_adapter, --use_compacter, --use_lradapter or --use_hyperformer).",
            "track_z",
        )
    if c.changed("lambda_z") and not c.v("track_z"):
        yield W("R14", "--lambda_z ignored without --track_z.", "lambda_z")


@rule("R15")
def _r15(c: RuleContext):
    if c.v("unfreeze_language_model") and c.has_per_task_modules():
        yield W(
            "R15",
            "--unfreeze_language_model trains the whole language model as well as the PEFT modules "
            "(about 100% of parameters trainable).",
            "unfreeze_language_model",
        )


# --------------------------------------------------------------------------------------------------
# Visual input


@rule("R16")
def _r16(c: RuleContext):
    ft = c.v("feature_type")
    if ft not in FEATURE_TYPES:
        return  # R42 reports it
    given = c.v("feat_dim")
    if ft == "butd":
        if given < 1:
            yield E("R16", f"--feat_dim {given} must be positive.", "feat_dim")
        return
    derived = feat_dim_for(ft, c.v("vis_pooling_output"), given)
    if derived is not None and "feat_dim" in c.explicit and given != derived:
        yield E(
            "R16",
            f"--feat_dim {given} conflicts with --feature_type {ft} ({derived}); drop --feat_dim, it is derived.",
            "feat_dim",
            "feature_type",
        )


@rule("R17")
def _r17(c: RuleContext):
    if not c.v("vis_pooling_output"):
        return
    ft = c.v("feature_type")
    if ft == "butd":
        yield E("R17", "--vis_pooling_output needs CLIP features (--feature_type RN50/RN101/RN50x4 or raw_*).", "vis_pooling_output")
    elif base_feature_type(ft) == "ViT":
        yield E("R17", "--vis_pooling_output is not available for ViT features; use a ResNet feature_type.", "vis_pooling_output")
    reducers = [n for n in ("downsample", "oneddownsample", "sparse_sample") if c.v(n)]
    if reducers and c.v("n_boxes") != 1:
        yield E(
            "R17",
            f"--vis_pooling_output gives one token per image; it cannot be combined with {_flags(reducers)}.",
            "vis_pooling_output",
            *reducers,
        )


@rule("R18")
def _r18(c: RuleContext):
    if c.v("feature_type") == "raw_ViT":
        yield E(
            "R18",
            "--feature_type raw_ViT is not supported; extract ViT features with `vlcli extract-features "
            "--feature_type ViT` and train with --feature_type ViT.",
            "feature_type",
        )


@rule("R19")
def _r19(c: RuleContext):
    on = [n for n in ("downsample", "oneddownsample", "sparse_sample") if c.v(n)]
    if len(on) > 1:
        yield E("R19", f"Choose at most one of --downsample, --oneddownsample, --sparse_sample; got: {', '.join(on)}.", *on)


def _visual_tokens(c: RuleContext) -> int | None:
    """Visual tokens per image before reduction, when known from the settings."""
    ft = c.v("feature_type")
    if ft == "butd":
        return c.v("max_n_boxes")
    if ft in RAW_TYPES:
        side = c.v("image_size")[0] // 32
        return side * side
    if ft in PRECOMPUTED_CLIP:
        return 49  # the released and extracted grids are 7x7 (224 px)
    return None


@rule("R20")
def _r20(c: RuleContext):
    if not c.v("downsample"):
        return
    n = c.v("n_boxes")
    if c.v("feature_type") == "butd":
        yield W("R20", "--downsample pools a square grid; BUTD region features are not a grid.", "downsample")
        return
    k = math.isqrt(max(n, 0))
    if n >= 1 and k * k != n:
        yield W("R20", f"--downsample produces floor(sqrt(n_boxes))^2 = {k * k} tokens, not --n_boxes {n}.", "n_boxes")
    grid = _visual_tokens(c)
    if grid is not None and k * k > grid:
        yield E("R20", f"--downsample to {k * k} tokens needs a grid of at least that many; the features have {grid}.", "n_boxes")


@rule("R21")
def _r21(c: RuleContext):
    if not c.v("sparse_sample"):
        return
    yield W("R21", "--sparse_sample keeps n_boxes random visual tokens in training only; evaluation uses all tokens.", "sparse_sample")
    tokens = _visual_tokens(c)
    if tokens is not None and c.v("n_boxes") > tokens:
        yield E("R21", f"--sparse_sample needs --n_boxes <= the {tokens} visual tokens per image; got {c.v('n_boxes')}.", "n_boxes")


@rule("R22")
def _r22(c: RuleContext):
    if c.family == "t5":
        opts = [n for n in ("expand_vis_embedding", "n_image_tokens", "vis_use_transformer", "share_vis_lang_layer_norm") if c.changed(n)]
        if opts:
            yield W("R22", f"{_flags(opts)} ignored: BART-only options, the backbone is T5.", *opts)
    elif c.family == "bart" and c.changed("additional_visual_embedding_layers"):
        yield W("R22", "--additional_visual_embedding_layers ignored: T5-only option, the backbone is BART.", "additional_visual_embedding_layers")
    if c.family == "bart" and c.v("expand_vis_embedding") and not c.v("vis_pooling_output"):
        yield E("R22", "--expand_vis_embedding needs one visual vector per image; add --vis_pooling_output.", "expand_vis_embedding")
    if c.v("n_image_tokens") < 1 or c.v("additional_visual_embedding_layers") < 0:
        yield E("R22", "--n_image_tokens must be >= 1 and --additional_visual_embedding_layers >= 0.", "n_image_tokens")


@rule("R23")
def _r23(c: RuleContext):
    if c.v("pos_dim") != 4:
        yield E("R23", f"--pos_dim {c.v('pos_dim')}: boxes have 4 coordinates, pos_dim must be 4.", "pos_dim")


@rule("R24")
def _r24(c: RuleContext):
    if c.changed("individual_vis_layer_norm") and not c.v("use_vis_layer_norm"):
        yield W("R24", "--individual_vis_layer_norm ignored: --use_vis_layer_norm is false.", "individual_vis_layer_norm")


@rule("R25")
def _r25(c: RuleContext):
    ft = c.v("feature_type")
    if ft not in RAW_TYPES:
        opts = [n for n in VIS_ENCODER_OPTIONS if c.changed(n)]
        if c.command == "extract-features":  # the extractor uses these itself
            opts = [n for n in opts if n not in ("image_size", "clip_weights", "clip_random_init")]
        if opts:
            yield W("R25", f"{_flags(opts)} ignored: they apply only to raw_* feature types (the in-model CLIP encoder).", *opts)
        return
    h, w = c.v("image_size")
    if h != w or h % 32:
        yield E("R25", f"--image_size {h},{w} must be square and a multiple of 32 for the CLIP encoder (e.g. 224,224).", "image_size")
    if c.v("clip_random_init") and c.v("clip_weights") is not None:
        yield E("R25", "--clip_random_init and --clip_weights exclude each other; drop one.", "clip_random_init", "clip_weights")
    if c.changed("augment_hflip") and not c.v("use_data_augmentation"):
        yield W("R25", "--augment_hflip ignored without --use_data_augmentation.", "augment_hflip")


@rule("R26")
def _r26(c: RuleContext):
    ft = c.v("feature_type")
    if ft not in FEATURE_TYPES:
        return
    kind = "butd" if ft == "butd" else "raw" if ft in RAW_TYPES else "clip"
    allowed = TASKS_BY_FEATURES[kind]
    if ft in REGION_COMPATIBLE:
        # RefCOCOg and VCR always read their BUTD region boxes (as the original, whatever --feature_type);
        # they share the visual embedding with 2048-d CLIP grids, so a mixed run works (spec §7).
        allowed = (*allowed, *REGION_TASKS)
    bad = [t for t in c.derived.tasks if t in KNOWN_TASKS and t not in allowed]
    if bad:
        yield E(
            "R26",
            f"task(s) {', '.join(bad)} cannot use --feature_type {ft}; with {ft} the supported tasks are "
            f"{', '.join(allowed)}.",
            "tasks",
            "feature_type",
        )


@rule("R27")
def _r27(c: RuleContext):
    if c.v("oscar_tags") and c.v("feature_type") != "butd":
        yield E("R27", "--oscar_tags reads detected object names from BUTD features; it needs --feature_type butd.", "oscar_tags")


@rule("R28")
def _r28(c: RuleContext):
    if not c.v("use_vision") and (c.family == "t5" or c.derived.multitask):
        where = "multitask runs" if c.derived.multitask else "T5 backbones"
        yield E("R28", f"--use_vision false is not supported with {where}.", "use_vision")


# --------------------------------------------------------------------------------------------------
# Training / runtime


@rule("R29")
def _r29(c: RuleContext):
    backbone = c.v("backbone")
    if c.family is None and not _bad_path(c, "backbone") and _name_problem(c, "backbone", backbone) is None:
        yield E(
            "R29",
            f"--backbone {c.v('backbone')} is neither T5 nor BART: use a name containing t5/bart or a "
            "directory whose config.json has model_type t5 or bart.",
            "backbone",
        )


@rule("R30")
def _r30(c: RuleContext):
    launched = "WORLD_SIZE" in c.env and "RANK" in c.env
    if c.v("distributed") and not launched and c.command in COMMANDS_TRAINING:
        yield E(
            "R30",
            "--distributed needs a distributed launch: torchrun --nproc_per_node N -m vlcli ... "
            "(or accelerate launch -m vlcli ...).",
            "distributed",
        )
    if c.v("multiGPU") and not c.v("distributed"):
        yield W("R30", "--multiGPU ignored: DDP is used automatically when launched with torchrun or accelerate.", "multiGPU")
    if "local_rank" in c.explicit and c.v("local_rank") >= 0:
        env_rank = c.env.get("LOCAL_RANK")
        if env_rank is None:
            yield W("R30", "--local_rank ignored outside a distributed launch.", "local_rank")
        elif str(c.v("local_rank")) != env_rank:
            yield E("R30", f"--local_rank {c.v('local_rank')} conflicts with LOCAL_RANK={env_rank} set by the launcher.", "local_rank")


# R31 (multitask needs --distributed in the original) is fixed by design: multitask runs in one
# process; see docs/rules.md. It has no check.


@rule("R32")
def _r32(c: RuleContext):
    ds = c.v("deepspeed")
    if ds is None:
        return
    if c.command not in (*COMMANDS_TRAINING, None, "inspect-config"):
        yield W("R32", f"--deepspeed ignored by `{c.command}`: it applies to finetune and pretrain.", "deepspeed")
        return
    from vlcli.config import deepspeed as dsc

    if dsc.is_shorthand(ds):
        cfg = dsc.load_config(ds)
    elif _bad_path(c, "deepspeed"):
        return
    elif not is_file(user_path(ds)):
        yield E("R32", f"--deepspeed {ds}: file not found; give the path of a DeepSpeed JSON config, or zero2 / zero3.",
                "deepspeed")
        return
    else:
        try:
            cfg = dsc.load_config(str(user_path(ds)))
        except dsc.DeepSpeedConfigError as e:
            yield E("R32", f"--deepspeed {ds}: {e}.", "deepspeed")
            return
    for problem in dsc.precision_conflicts(cfg, bool(c.v("fp16"))):
        yield E("R32", f"--deepspeed {ds}: {problem} (one source of truth for precision).", "deepspeed", "fp16")
    if c.v("compile"):
        yield W("R32", f"--compile is not applied under --deepspeed {ds}: DeepSpeed wraps the model after "
                "vlcli would compile it; drop --compile.", "deepspeed", "compile")
    owned = [k for k in ("optimizer", "scheduler") if k in cfg]
    if owned:
        yield E("R32", f"--deepspeed {ds}: remove its {' and '.join(repr(k) for k in owned)} section: vlcli hands DeepSpeed "
                "its own optimiser (--optim, --lr, --weight_decay, ...) and warm-up schedule (--warmup_ratio).",
                "deepspeed")
    if c.v("use_separate_optimizer_for_visual") and c.v("feature_type") in RAW_TYPES:  # a second optimiser (R25)
        yield E("R32", f"--deepspeed {ds} trains with one optimiser; drop --use_separate_optimizer_for_visual.",
                "deepspeed", "use_separate_optimizer_for_visual")


@rule("R56")
def _r56(c: RuleContext):
    if not c.v("fsdp") or c.command not in (*COMMANDS_TRAINING, None, "inspect-config"):
        return
    if c.v("deepspeed") is not None:
        yield E("R56", "--fsdp and --deepspeed both shard the model; choose one.", "fsdp", "deepspeed")
    elif not c.v("unfreeze_language_model"):
        yield W("R56", "--fsdp with a frozen backbone (a PEFT run) saves little memory: the frozen weights are sharded "
                "but the gradients and optimiser state are already small; plain DDP is usually faster "
                "(docs/distributed.md).", "fsdp")


@rule("R33")
def _r33(c: RuleContext):
    load = c.v("load")
    if load is not None and load.strip().startswith("#TODO"):
        yield E("R33", "--load #TODO is the reference's placeholder; give a checkpoint or run directory, or drop it.", "load")
    elif c.v("test_only") and load is None:
        yield E("R33", "--test_only requires --load <checkpoint or run directory>.", "test_only", "load")


@rule("R34")
def _r34(c: RuleContext):
    if c.v("from_scratch") and c.v("load") is not None:
        yield E("R34", "--from_scratch discards the --load checkpoint; use one or the other.", "from_scratch", "load")


@rule("R35")
def _r35(c: RuleContext):
    if c.has_per_task_modules() and not c.derived.tasks:
        yield E(
            "R35",
            "--tasks must list every trained task (PEFT modules are created per task); give a TASK "
            "(e.g. `vlcli finetune vqa`) or --tasks vqa,gqa.",
            "tasks",
        )


@rule("R36")
def _r36(c: RuleContext):
    if c.v("multitask_sampling") not in SAMPLINGS:
        yield E("R36", f"--multitask_sampling {c.v('multitask_sampling')!r} must be one of {', '.join(SAMPLINGS)}.", "multitask_sampling")
    elif c.v("multitask_sampling") == "roundrobin" and c.changed("multitask_sampling"):
        yield W("R36", "--multitask_sampling roundrobin alternates tasks strictly; the original's 'roundrobin' "
                "(size-proportional interleaving) is 'proportional'.", "multitask_sampling")


@rule("R37")
def _r37(c: RuleContext):
    optim = c.v("optim")
    if optim not in OPTIMIZERS:
        yield E("R37", f"--optim {optim!r} must be one of {', '.join(OPTIMIZERS)}.", "optim")
        return
    if optim not in ADAM_OPTIMIZERS:
        opts = [n for n in ("adam_eps", "adam_beta1", "adam_beta2") if c.changed(n)]
        if opts:
            yield W("R37", f"{_flags(opts)} ignored with --optim {optim}.", *opts)
    yield from _range_issues(c, "R37", "adam_beta1", "adam_beta2")


@rule("R38")
def _r38(c: RuleContext):
    # Gradient accumulation is implemented for every run (the original only shortened the schedule).
    yield from _range_issues(c, "R38", "gradient_accumulation_steps")


@rule("R39")
def _r39(c: RuleContext):
    prefix = c.v("prefix")
    if prefix is not None and prefix not in PREFIXES:
        yield E("R39", f"--prefix {prefix!r} must be one of: none, {', '.join(PREFIXES)}.", "prefix")
    elif prefix == "mask" and c.family == "t5":
        yield E("R39", "--prefix mask needs a BART tokenizer (T5 has no <mask> token); use span.", "prefix")
    if c.v("no_prefix") and prefix is not None:
        yield W("R39", "--prefix ignored: --no_prefix makes the captioning input empty.", "prefix")


@rule("R40")
def _r40(c: RuleContext):
    if c.v("use_tasks_prompts") and c.changed("prompt"):
        yield W("R40", "--prompt ignored: --use_tasks_prompts gives each task its own prompt.", "prompt")
    if c.v("classifier") and c.derived.tasks != ["vqa"]:
        yield E("R40", "--classifier is for single-task VQA only (`vlcli finetune vqa --classifier`).", "classifier")


@rule("R41")
def _r41(c: RuleContext):
    if c.changed("num_beams") and c.derived.tasks and "caption" not in c.derived.tasks:
        yield W("R41", "--num_beams affects captioning only; VQA/GQA/NLVR2/classification answers are decoded greedily.", "num_beams")
    if c.v("freeze_ln_statistics"):
        yield W("R41", "--freeze_ln_statistics is a no-op: layer norms keep no running statistics.", "freeze_ln_statistics")


# --------------------------------------------------------------------------------------------------
# vlcli's own checks


def _suggest(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice (a case-insensitive equal first), or ""."""
    choices = list(choices)
    same = [c for c in choices if c.lower() == value.lower()]
    close = same or difflib.get_close_matches(value, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@rule("R42")
def _r42(c: RuleContext):
    ft = c.v("feature_type")
    if ft not in FEATURE_TYPES:
        yield E(
            "R42",
            f"--feature_type {ft!r} is not one of {', '.join(FEATURE_TYPES)}{_suggest(ft, FEATURE_TYPES)}",
            "feature_type",
        )
    if c.v("demo_world") and ft in FEATURE_TYPES and ft not in DEMO_FEATURE_TYPES:
        yield E("R42", f"--demo_world provides images and CLIP grid features only; --feature_type {ft}: use RN50 (the "
                "demo profile's), RN101, RN50x4, ViT or raw_RN50/raw_RN101/raw_RN50x4.", "feature_type", "demo_world")
    if c.v("frozen_dtype") not in ("fp32", "bf16"):
        yield E("R42", f"--frozen_dtype {c.v('frozen_dtype')!r} must be fp32 or bf16.", "frozen_dtype")
    if c.v("cls_task") not in CLS_TASKS:
        yield E("R42", f"--cls_task {c.v('cls_task')!r} must be one of {', '.join(CLS_TASKS)}.", "cls_task")
    vat = c.v("vis_adapter_type")
    parts = vat.split("-")
    if len(parts) < 2 or parts[-1] not in VIS_ADAPTER_KINDS or any(p not in VIS_ADAPTER_POSITIONS for p in parts[:-1]):
        yield E(
            "R42",
            f"--vis_adapter_type {vat!r} must be <positions>-<kind> with positions from "
            f"{'/'.join(VIS_ADAPTER_POSITIONS)} and kind {' or '.join(VIS_ADAPTER_KINDS)} (e.g. middle-bottleneck).",
            "vis_adapter_type",
        )


# Every numeric setting has a range (a test checks none is missing): size-like integers get an upper bound
# so that a typo such as 2147483648 layers is an error, not a model that eats all memory.
# (name, lower bound, inclusive, upper bound, inclusive)
_BIG = 1_000_000
_RANGES = [
    ("seed", 0, True, 2**32 - 1, True),
    ("train_topk", -1, True, 10**9, True),
    ("valid_topk", -1, True, 10**9, True),
    ("num_workers", 0, True, 256, True),
    ("local_rank", -1, True, 4096, True),
    ("sync_every", 1, True, _BIG, True),
    ("prefetch", 1, True, 1024, True),
    ("batch_size", 1, True, _BIG, True),
    ("valid_batch_size", 1, True, _BIG, True),
    ("gradient_accumulation_steps", 1, True, 100_000, True),
    ("epochs", 0, True, 100_000, True),
    ("lr", 0, False, 10, True),
    ("vis_lr", 0, False, 10, True),
    ("weight_decay", 0, True, 100, True),
    ("vis_weight_decay", 0, True, 100, True),
    ("warmup_ratio", 0, True, 1, False),
    ("clip_grad_norm", -_BIG, True, _BIG, True),
    ("adam_eps", 0, False, 1, True),
    ("adam_beta1", 0, True, 1, False),
    ("adam_beta2", 0, True, 1, False),
    ("dropout", 0, True, 1, False),
    ("max_text_length", 1, True, 100_000, True),
    ("n_ground", 1, True, 1000, True),
    ("word_mask_rate", 0, True, 1, True),
    ("obj_mask_rate", 0, True, 1, True),
    ("ground_upsample", 1, True, 1000, True),
    ("ground_weight", 0, True, 1000, True),
    ("feat_dim", 1, True, 65536, True),
    ("pos_dim", 1, True, 64, True),
    ("n_boxes", 1, True, 1000, True),
    ("max_n_boxes", 1, True, 1000, True),
    ("additional_visual_embedding_layers", 0, True, 64, True),
    ("n_image_tokens", 1, True, 4096, True),
    ("encoder_prompt_len", 0, True, 10_000, True),
    ("decoder_prompt_len", 0, True, 10_000, True),
    ("mid_dim", 1, True, 65536, True),
    ("projected_task_embedding_dim", 1, True, 65536, True),
    ("reduction_factor", 0, False, 65536, True),
    ("hypercomplex_division", 1, True, 1024, True),
    ("phm_rank", 1, True, 65536, True),
    ("phm_init_range", 0, False, 10, True),
    ("low_rank_rank", 1, True, 65536, True),
    ("lora_dim", 1, True, 65536, True),
    ("lora_alpha", 0, False, _BIG, True),
    ("lambda_z", 0, True, _BIG, True),
    ("vis_reduction_factor", 0, False, 4096, True),
    ("num_beams", 1, True, 100, True),
    ("gen_max_length", 1, True, 10_000, True),
]
RANGED = frozenset(name for name, *_ in _RANGES)
_SENTINELS = {"projected_task_embedding_dim": -1}
"""Documented special values outside a field's range (-1 = the default size)."""


def _range_text(name: str, lo: float, lo_inc: bool, hi: float | None, hi_inc: bool) -> str:
    low = f"{'>=' if lo_inc else '>'} {lo}"
    text = low + (f" and {'<=' if hi_inc else '<'} {hi}" if hi is not None else "")
    return f"{_SENTINELS[name]} or {text}" if name in _SENTINELS else text


def _range_issues(c: RuleContext, rule_id: str, *names: str) -> Iterable[Issue]:
    """An error for each of ``names`` whose value is not finite or outside its range in ``_RANGES``."""
    for name, lo, lo_inc, hi, hi_inc in (r for r in _RANGES if r[0] in names):
        value = c.v(name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            yield E(rule_id, f"--{name} {value} must be a finite number ({_range_text(name, lo, lo_inc, hi, hi_inc)}).",
                    name)
            continue
        bad = (value < lo if lo_inc else value <= lo) or (hi is not None and (value > hi if hi_inc else value >= hi))
        if bad and value != _SENTINELS.get(name):
            yield E(rule_id, f"--{name} {value} must be {_range_text(name, lo, lo_inc, hi, hi_inc)}.", name)


_RANGE_RULES = {"adam_beta1": "R37", "adam_beta2": "R37", "gradient_accumulation_steps": "R38"}
"""Ranges a spec rule reports under its own id (R43 checks all the others)."""


@rule("R43")
def _r43(c: RuleContext):
    yield from _range_issues(c, "R43", *(RANGED - set(_RANGE_RULES)))


@rule("R44")
def _r44(c: RuleContext):
    for task in c.derived.tasks:
        if task not in KNOWN_TASKS and not (c.command == "pretrain" and task == PRETRAIN_TASK):
            yield E("R44", f"unknown task {task!r} in --tasks; known tasks: {', '.join(KNOWN_TASKS)}{_suggest(task, KNOWN_TASKS)}", "tasks")


@rule("R45")
def _r45(c: RuleContext):
    if c.command != "pretrain" and not c.changed("losses"):
        return
    names = [x.strip() for x in c.v("losses").split(",") if x.strip()]
    bad = [x for x in names if x not in PRETRAIN_LOSSES]
    if bad:
        yield E(
            "R45",
            f"--losses: unknown objective(s) {', '.join(bad)} (obj/attr/feat are leftovers of the original "
            f"and are not implemented); valid: {', '.join(PRETRAIN_LOSSES)}.",
            "losses",
        )
    elif not names and c.command == "pretrain":
        yield E("R45", f"--losses is empty; choose from {', '.join(PRETRAIN_LOSSES)}.", "losses")
    ft = c.v("feature_type")
    if c.command == "pretrain" and ft != "butd":  # CLIP grids and raw images: no detector boxes or labels
        grounding = [n for n in names if n in ("ground_caption", "refer")]
        if grounding:
            yield W("R45", f"--losses {','.join(grounding)} dropped with --feature_type {ft}: grounding needs the "
                    "detector's boxes and labels (BUTD).", "losses")
        if c.v("oscar_tags"):
            yield E("R45", f"--oscar_tags needs BUTD detector labels; not available with --feature_type {ft}.",
                    "oscar_tags")


@rule("R46")
def _r46(c: RuleContext):
    for name in ("train_topk", "valid_topk"):
        value = c.v(name)
        if name in c.explicit and isinstance(value, int) and value == 1:
            yield W("R46", f"--{name} 1 keeps ONE example (a count); the original read 1 as 100%: write 1.0 for all.", name)


@rule("R48")
def _r48(c: RuleContext):
    from vlcli.data.layout import DEFAULT_PATHS

    unknown = sorted(set(c.v("data_paths")) - set(DEFAULT_PATHS))
    if unknown:
        yield E("R48", f"--data_paths: unknown name(s) {', '.join(unknown)}; the names are listed in docs/data.md "
                f"(e.g. vqa.questions, coco.clip).", "data_paths")


@rule("R49")
def _r49(c: RuleContext):
    best = c.v("best_metric")
    if best == "average":
        return
    task, _, metric = best.partition("/")
    if task not in c.derived.tasks:
        yield E("R49", f"--best_metric {best!r}: use 'average', one of the run's tasks ({', '.join(c.derived.tasks) or '-'}) "
                "or TASK/METRIC (e.g. vqa/accuracy, caption/CIDEr).", "best_metric")
        return
    names = METRIC_NAMES.get(task)
    if metric and names is not None and metric not in names and not metric.startswith(METRIC_PREFIXES.get(task, "\0")):
        yield E("R49", f"--best_metric {best!r}: {task} reports no metric {metric!r}; use one of "
                f"{', '.join(f'{task}/{n}' for n in names)}{_suggest(metric, names)}", "best_metric")


METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "vqa": ("accuracy",), "gqa": ("accuracy",), "nlvr": ("accuracy", "consistency"),
    "caption": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"),
    "refcoco": ("accuracy", "correct", "total"), "vcr": ("q_a", "qa_r", "q_ar"), "cls": ("accuracy",),
}
"""What each task's evaluator returns (``--best_metric TASK/METRIC``); pretraining's names depend on --losses."""
METRIC_PREFIXES: dict[str, str] = {"vqa": "accuracy/"}
"""Families of metric names: VQA's per-answer-type accuracies (``vqa/accuracy/yes/no``)."""


@rule("R50")
def _r50(c: RuleContext):
    if c.v("fp16") and c.family == "t5" and c.v("deepspeed") is None:
        yield W("R50", "--fp16 with T5: T5 activations overflow float16 (NaN losses are likely); bf16, the GPU "
                "default, is safe.", "fp16")


def check(ctx: RuleContext) -> list[Issue]:
    """Run every rule; return all issues (errors and warnings) in rule order.

    A value a spec rule already refuses (R5's ``phm_rank`` at least 1, ...) gets no second line from R43.
    """
    issues: list[Issue] = []
    for func in RULES.values():
        issues.extend(func(ctx))
    refused = {i.fields for i in issues if i.level == "error" and i.rule != "R43"}
    return [i for i in issues if not (i.rule == "R43" and i.fields in refused)]


_LEGACY_BARE_IDS = frozenset({"t5-3b", "t5-11b", "bart-base", "bart-large"})
"""Hub ids without an organisation that still resolve (besides the presets)."""
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json")
"""Any of these in a local directory makes it a tokenizer directory (the load checks the family's set)."""


def _demo_backbone(c: RuleContext, value: str) -> bool:
    """A backbone directory the demo world creates on first use (``<data_root>/backbones/t5-demo``)."""
    from vlcli.demo.backbone import DIR_NAMES

    if not c.v("demo_world"):
        return False
    root = user_path(c.v("data_root")) / "backbones"
    try:
        return os.path.abspath(user_path(value)) in {os.path.abspath(root / d) for d in DIR_NAMES.values()}
    except OSError:  # the working directory was removed
        return False


def _local_problem(name: str, value: str) -> str | None:
    """Why the existing local path ``value`` is no --backbone / --tokenizer directory, or None."""
    path = user_path(value)
    if not is_dir(path):
        return "is a file; give the directory saved with save_pretrained"
    if name == "backbone" and not is_file(path / "config.json"):
        return "has no config.json; give a directory saved with save_pretrained"
    if name == "tokenizer" and not any(is_file(path / f) for f in _TOKENIZER_FILES):
        return f"has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); give a directory saved with save_pretrained"
    return None


def _name_problem(c: RuleContext, name: str, value: str) -> str | None:
    """Why a --backbone / --tokenizer value cannot name a model, or None: a preset, a local directory or an
    ``org/name`` hub id are fine (the load itself reports a hub id it cannot find)."""
    from vlcli.model.presets import PRESETS

    if value in PRESETS or value in _LEGACY_BARE_IDS or _demo_backbone(c, value):
        return None
    if exists(user_path(value)):
        return _local_problem(name, value)
    if "/" in value and not value.startswith(("/", ".", "~")) and value.count("/") == 1 and all(value.split("/")):
        return None
    where = "no such local directory" if value.startswith(("/", ".", "~")) or os.sep in value else \
        "neither a built-in name, a local directory nor an org/name hub id"
    if c.v("demo_world"):
        where += f"; with --demo_world use {user_path(c.v('data_root')) / 'backbones'}/t5-demo or bart-demo"
    return f"{where}{_suggest(value, PRESETS)}"


@rule("R53")
def _r53(c: RuleContext):
    from vlcli.model.presets import PRESETS

    for name in ("backbone", "tokenizer"):
        value = c.v(name)
        if isinstance(value, str) and value and not _bad_path(c, name) and (problem := _name_problem(c, name, value)):
            yield E("R53", f"--{name} {clipped(value, PATH_SHOWN)}: {problem} (built-in: {', '.join(sorted(PRESETS))}; or a "
                    "local directory saved with save_pretrained, or a hub id such as google/t5-v1_1-base)", name)


PATH_OPTIONS = ("output", "backbone", "tokenizer", "deepspeed", "clip_weights", "data_root")
"""Settings whose value is (or may be) a file-system path; ``data_paths`` values are paths too (``load``: R47)."""


def _bad_path(c: RuleContext, name: str) -> bool:
    """R54 reports ``name``'s value: other rules skip it rather than probe it."""
    value = c.v(name)
    return isinstance(value, str) and path_problem(value) is not None


@rule("R54")
def _r54(c: RuleContext):
    for name in PATH_OPTIONS:
        value = c.v(name)
        if isinstance(value, str) and (problem := path_problem(value)):
            yield E("R54", f"--{name} {clipped(value, PATH_SHOWN)}: {problem}.", name)
    for key, value in c.v("data_paths").items():
        if problem := path_problem(value):
            yield E("R54", f"--data_paths {clipped(key)}={clipped(value, PATH_SHOWN)}: {problem}.", "data_paths")


@rule("R55")
def _r55(c: RuleContext):
    from vlcli.model.warmstart import parse_task_map

    value = c.v("init_task_map")
    if not c.changed("init_task_map") or not value:
        return
    try:
        mapping = parse_task_map(value)
    except ValueError as exc:
        yield E("R55", f"--init_task_map {clipped(value)}: {exc}.", "init_task_map")
        return
    if c.command in COMMANDS_TRAINING and c.derived.load_path is None:
        yield W("R55", "--init_task_map ignored: it renames the per-task modules of a --load checkpoint.", "init_task_map")
    targets = set(c.derived.tasks) | {"shared"}
    bad = sorted({t for dsts in mapping.values() for t in dsts if t not in targets})
    if bad:
        yield E("R55", f"--init_task_map {clipped(value)}: target {', '.join(bad)} is not a task of this run; "
                f"use one of {', '.join(sorted(targets))}.", "init_task_map")
