"""Parameter-efficient methods: one injection mechanism (:mod:`vlcli.peft.slots`), one routing point
(the model's ``router``), one module per method.

:func:`apply_peft` attaches the modules the settings ask for to a freshly built
:class:`~vlcli.model.vl.VLModel`; :func:`vlcli.model.params.set_trainable` then makes every module that
declares a PEFT ``parameter_group`` trainable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlcli.peft.adapters import AdapterController, AdapterSpec, OutputAdapter
from vlcli.peft.hyperformer import build_hyperformer
from vlcli.peft.lora import LoRA
from vlcli.peft.prompts import PromptController
from vlcli.peft.slots import adapter_slots, as_peft_linear, lora_targets

PEFT_GROUPS = ("adapters", "hyper-network", "LoRA", "prompts", "LM-head adapter", "visual adapters")


class SharedPHMRule(nn.Module):
    """The single PHM rule shared by every PHMLinear of the model (``shared_phm_rule``)."""

    parameter_group = "adapters"

    def __init__(self, n: int, init_range: float):
        super().__init__()
        self.rule = nn.Parameter(torch.empty(n, n, n).normal_(0, init_range))


def apply_peft(model: nn.Module, settings: Any) -> None:
    """Attach the PEFT modules of ``settings`` to ``model`` (registered under ``model.peft``)."""
    s = settings.get
    tasks = list(settings.derived.tasks) if settings.derived and settings.derived.tasks else [""]
    lm, family, router, d = model.lm, model.family, model.router, model.d_model
    registry = nn.ModuleDict()
    if s("use_hyperformer"):
        registry["hyperformer"] = build_hyperformer(
            lm,
            family,
            tasks,
            router,
            d_model=d,
            reduction_factor=s("reduction_factor"),
            projected_task_embedding_dim=s("projected_task_embedding_dim"),
            efficient=s("efficient_unique_hyper_net"),
            cross_attention=s("add_adapter_cross_attn"),
            ln_before=s("add_layer_norm_before_adapter"),
            ln_after=s("add_layer_norm_after_adapter"),
        )
    encoder = getattr(model, "visual_encoder", None)
    if s("use_vis_adapter") and encoder is not None:  # precomputed features: ignored (rule R25 warns)
        from vlcli.peft.visual_adapters import inject_visual_adapters

        inject_visual_adapters(encoder.tower, s("vis_adapter_type"), s("vis_reduction_factor"),
                               s("remove_bn_vis_adapter"))

    kind = next(
        (
            k
            for k, flag in (
                ("adapter", "use_adapter"),
                ("compacter", "use_compacter"),
                ("lradapter", "use_lradapter"),
            )
            if s(flag)
        ),
        None,
    )
    if kind is not None:
        spec = AdapterSpec(
            kind=kind,
            tasks=tuple(tasks),
            d_model=d,
            reduction_factor=s("reduction_factor"),
            single=s("use_single_adapter"),
            share_up=s("share_up_sampler") and not s("use_single_adapter"),
            share_down=s("share_down_sampler") and not s("use_single_adapter"),
            ln_before=s("add_layer_norm_before_adapter"),
            ln_after=s("add_layer_norm_after_adapter"),
            phm_n=s("hypercomplex_division"),
            phm_rank=s("phm_rank"),
            factorized_phm=s("factorized_phm"),
            shared_phm_rule_over_tasks=s("shared_phm_rule_over_tasks"),
            phm_init_range=s("phm_init_range"),
            low_rank_rank=s("low_rank_rank"),
        )
        rule = None
        if kind == "compacter" and s("shared_phm_rule"):
            registry["phm_rule"] = SharedPHMRule(spec.phm_n, spec.phm_init_range)
            rule = registry["phm_rule"].rule
        for slot in adapter_slots(lm, family, s("add_adapter_cross_attn")):
            as_peft_linear(slot.linear).vl_adapter = AdapterController(spec, router, rule)
    if s("use_lora"):
        for _, linear in lora_targets(lm, family):
            as_peft_linear(linear).vl_lora = LoRA(
                linear.in_features,
                linear.out_features,
                s("lora_dim"),
                s("lora_alpha"),
                tasks,
                s("use_single_lora"),
                router,
            )
    if s("encoder_prompt_len") > 0:
        registry["encoder_prompts"] = PromptController(
            s("encoder_prompt_len"), d, s("mid_dim"), tasks, s("use_single_prompt"), router
        )
    if s("decoder_prompt_len") > 0:
        if family != "bart":  # rule R9 reports this for validated settings; this guards direct API use
            raise ValueError("--decoder_prompt_len needs a BART backbone")
        registry["decoder_prompts"] = PromptController(
            s("decoder_prompt_len"), d, s("mid_dim"), tasks, s("use_single_prompt"), router
        )
    if s("use_lm_head_adapter"):
        head = lm.get_output_embeddings()
        as_peft_linear(head).vl_parallel = OutputAdapter(
            d, head.out_features, s("add_layer_norm_before_adapter"), s("add_layer_norm_after_adapter")
        )
    if s("track_z"):
        for module in model.modules():
            if hasattr(module, "track_z"):
                module.track_z = True
        model.lambda_z = float(s("lambda_z"))
    if len(registry):
        model.peft = registry
