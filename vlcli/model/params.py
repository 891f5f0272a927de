"""Which parameters train, and how many there are (spec §4.1).

:func:`set_trainable` freezes everything, then unfreezes by flag: the visual embedding always;
``--unfreeze_language_model`` the whole backbone; ``--unfreeze_lm_head`` the LM head and the token
embedding it is tied to (BART's ``final_logits_bias`` is a buffer and stays fixed); and
``--unfreeze_layer_norms`` every layer norm of the backbone, T5's RMS norms included (the original
missed those, spec §7.1); every PEFT module (adapters, hyper-networks, LoRA, prompts); and with
``--lora_train_biases`` every bias of the backbone (what the original's LoRA mode did). Modules that carry a ``parameter_group`` attribute (the visual embedding,
PEFT modules) are reported under that name by :func:`count_parameters`; the rest is "backbone".
"""

from __future__ import annotations

from typing import Any

from torch import nn

BACKBONE_GROUP = "backbone"


def is_layer_norm(module: nn.Module) -> bool:
    """nn.LayerNorm or an RMS norm such as T5LayerNorm (matched by name: transformers has several)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def set_trainable(model: nn.Module, settings: Any) -> None:
    """Set ``requires_grad`` on every parameter of a :class:`~vlcli.model.vl.VLModel` from ``settings``."""
    model.requires_grad_(False)
    visual = getattr(model, "visual_embedding", None)
    if visual is not None:
        visual.requires_grad_(True)
    lm = model.lm
    if settings.get("unfreeze_language_model"):
        lm.requires_grad_(True)
    if settings.get("unfreeze_lm_head"):
        lm.get_input_embeddings().requires_grad_(True)
        head = lm.get_output_embeddings()
        if head is not None:
            head.requires_grad_(True)
    if settings.get("unfreeze_layer_norms"):
        for module in lm.modules():
            if is_layer_norm(module):
                module.requires_grad_(True)
    from vlcli.peft import PEFT_GROUPS

    for module in model.modules():
        if getattr(module, "parameter_group", None) in PEFT_GROUPS:
            module.requires_grad_(True)
    encoder = getattr(model, "visual_encoder", None)
    if encoder is not None:
        from vlcli.model.image_encoder import set_encoder_trainable

        set_encoder_trainable(encoder, settings)
    if settings.get("use_lora") and settings.get("lora_train_biases"):
        for name, param in lm.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad_(True)


def _groups(model: nn.Module) -> list[tuple[str, str]]:
    """(module name prefix, group) for every module that declares a ``parameter_group``, longest first."""
    found = [
        (name, module.parameter_group)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "parameter_group", None), str)
    ]
    return sorted(found, key=lambda item: len(item[0]), reverse=True)


def group_of(name: str, groups: list[tuple[str, str]]) -> str:
    for prefix, group in groups:
        if not prefix or name == prefix or name.startswith(prefix + "."):
            return group
    return BACKBONE_GROUP


LAYER_NORM_GROUP = "layer norms"
EMBEDDING_GROUP = "token embedding / LM head"


def _backbone_parts(model: nn.Module) -> dict[int, str]:
    """Backbone parameters reported in their own group: layer norms and the (tied) token embedding / LM head."""
    lm = getattr(model, "lm", None)
    if lm is None:
        return {}
    parts: dict[int, str] = {}
    for module in lm.modules():
        if is_layer_norm(module):
            for param in module.parameters(recurse=False):
                parts[id(param)] = LAYER_NORM_GROUP
    for module in (lm.get_input_embeddings(), lm.get_output_embeddings()):
        if module is not None:
            parts[id(module.weight)] = EMBEDDING_GROUP
    return parts


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """``{"total", "trainable", "percent", "groups": {group: {"total", "trainable"}}}``; tied tensors once.

    Works on the meta device (only shapes are read). ``percent`` is trainable / total * 100, the
    paper's "updated parameters" figure.
    """
    groups = _groups(model)
    special = _backbone_parts(model)
    out: dict[str, dict[str, int]] = {}
    total = trainable = 0
    for name, param in model.named_parameters():  # remove_duplicate=True: tied weights once
        n = getattr(param, "ds_numel", None) or param.numel()  # ZeRO-3 partitions hold a shard (numel 0)
        key = group_of(name, groups)
        if key == BACKBONE_GROUP:
            key = special.get(id(param), key)
        group = out.setdefault(key, {"total": 0, "trainable": 0})
        group["total"] += n
        total += n
        if param.requires_grad:
            group["trainable"] += n
            trainable += n
    percent = 100.0 * trainable / total if total else 0.0
    return {"total": total, "trainable": trainable, "percent": round(percent, 4), "groups": out}


def parameter_report(settings: Any) -> dict[str, Any]:
    """Parameter counts of the model ``settings`` describe, built on the meta device (no weights read).

    Returns :func:`count_parameters`'s dict plus ``"device": "meta"``, or ``{"unavailable": reason}``
    when the backbone's architecture is not known offline (a hub name that is neither a preset nor cached).
    """
    from vlcli.errors import VlcliError
    from vlcli.model.build import build_model

    try:
        model = build_model(settings, device="meta")
    except VlcliError as exc:
        return {"unavailable": str(exc)}
    set_trainable(model, settings)
    return {**count_parameters(model), "device": "meta"}
