"""LoRA runs in PEFT's on-disk adapter format (``adapter_config.json`` + ``adapter_model.safetensors``).

vlcli's LoRA key ``lm.<path>.vl_lora.pairs.<task>.lora_A`` becomes peft's ``base_model.model.<path>.lora_A.weight``;
the same q / v projections are targeted (``q``, ``v`` in T5; ``q_proj``, ``v_proj`` in BART), with the same
scaling (alpha / r) and dropout. The token embedding and LM head, resized to the VL tokenizer (new rows
drawn with a fixed seed), go in ``modules_to_save``; trained biases (``lora_train_biases``, BART) make
``bias="all"`` — for one adapter only, as peft allows; per-task LoRA keeps them in ``lm_biases.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vlcli.export import LORA_MARK, ExportError

TARGETS = {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"]}
EMBEDDINGS = {"t5": ("shared", "lm_head"), "bart": ("shared", "lm_head")}
PREFIX = "base_model.model."


def _rebuild(run: Path, tensors: Path) -> tuple[Any, Any, Any]:
    """The run's model (settings from its config.json) with the checkpoint loaded exactly, and its tokenizer."""
    from vlcli import api
    from vlcli.config.resolve import settings_from_run_config

    settings = settings_from_run_config(run / "config.json")
    tokenizer = api.build_tokenizer(settings)
    model = api.build_model(settings, tokenizer=tokenizer)
    api.load_checkpoint(model, tensors, settings=settings)
    return settings, model.eval(), tokenizer


def adapter_state(model: Any, adapter: str, biases: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's state dict of one LoRA adapter (``shared`` for single LoRA, else a task) of a VLModel."""
    state: dict[str, torch.Tensor] = {}
    lm_state = {k: v for k, v in model.state_dict().items() if k.startswith("lm.")}
    for key, value in lm_state.items():
        if LORA_MARK in key:
            path, rest = key.split(LORA_MARK)
            owner, which = rest.split(".")
            if owner == adapter:
                state[f"{PREFIX}{path[len('lm.'):]}.{which}.weight"] = value
    if not state:
        raise ExportError(f"no LoRA weights for adapter {adapter!r} in the checkpoint")
    lm = model.lm
    for name in EMBEDDINGS[model.family]:
        module = dict(lm.named_modules()).get(name) or dict(lm.named_modules()).get(f"model.{name}")
        if module is None:
            continue
        path = next(n for n, m in lm.named_modules() if m is module)
        state[f"{PREFIX}{path}.weight"] = module.weight
    state.update(biases)
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def trained_biases(model: Any, settings: Any) -> dict[str, torch.Tensor]:
    """The backbone biases a ``lora_train_biases`` run trained (T5 has none), in peft's key names."""
    if not settings.get("lora_train_biases"):
        return {}
    state = model.state_dict()
    targets = {k.split(LORA_MARK)[0] for k in state if LORA_MARK in k}  # the Linears LoRA wraps
    out = {}
    for key, value in state.items():
        if key.startswith("lm.") and key.endswith(".bias") and LORA_MARK not in key:
            owner = key[: -len(".bias")]
            # peft keeps a wrapped Linear's own bias under base_layer
            name = f"{owner[len('lm.'):]}.base_layer.bias" if owner in targets else key[len("lm."):]
            out[f"{PREFIX}{name}"] = value.detach().contiguous().clone()
    return out


BASE_DIR = "base"
"""Where the export of a warm-started run saves its base model (the warm-start weights under LoRA)."""


def adapter_config(settings: Any, family: str, bias: bool, base: str | None = None) -> dict[str, Any]:
    """``adapter_config.json``: peft's LoraConfig of the run (through peft when installed, for its full schema).
    ``base``: the base model's path when it is not the run's ``--backbone`` (a warm-started run)."""
    from vlcli.peft.lora import LORA_DROPOUT

    values = {
        "r": int(settings.get("lora_dim")),
        "lora_alpha": float(settings.get("lora_alpha")),
        "lora_dropout": LORA_DROPOUT,
        "target_modules": TARGETS[family],
        "bias": "all" if bias else "none",
        "modules_to_save": list(EMBEDDINGS[family]),
        "task_type": "SEQ_2_SEQ_LM",
        "base_model_name_or_path": base or str(settings.get("backbone")),
        "inference_mode": True,
    }
    try:
        from peft import LoraConfig
    except ImportError:
        return {"peft_type": "LORA", "fan_in_fan_out": False, "init_lora_weights": True, **values}
    config = LoraConfig(**values)
    data = config.to_dict()
    return json.loads(json.dumps(data, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def write_peft_adapters(run: Path, tensors: Path, config: dict[str, Any], out: Path) -> tuple[list[Path], list[str]]:
    """One adapter directory per LoRA adapter (the first also at ``out`` itself); tokenizer and visual embedding."""
    settings, model, tokenizer = _rebuild(run, tensors)
    adapters = ["shared"] if settings.get("use_single_lora") else list(settings.derived.tasks)
    biases = trained_biases(model, settings)
    files: list[Path] = []
    if biases and len(adapters) > 1:  # peft allows bias="all" for one adapter only: the shared biases go beside
        plain = {k[len(PREFIX):].replace(".base_layer.bias", ".bias"): v for k, v in biases.items()}  # base names
        save_file(plain, str(out / "lm_biases.safetensors"), metadata={"format": "pt"})
        files.append(out / "lm_biases.safetensors")
        in_adapter: dict[str, torch.Tensor] = {}
    else:
        in_adapter = biases
    base = None
    if (config.get("_run") or {}).get("init"):  # warm-started: LoRA sits on the init checkpoint's weights
        base = str(out / BASE_DIR)
        files += save_base(model, out / BASE_DIR)
    cfg = adapter_config(settings, model.family, bool(in_adapter), base)
    for index, adapter in enumerate(adapters):
        state = adapter_state(model, adapter, in_adapter)
        targets = [out] if len(adapters) == 1 else ([out, out / adapter] if index == 0 else [out / adapter])
        for folder in targets:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
            (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
            files += [folder / "adapter_model.safetensors", folder / "adapter_config.json"]
    tokenizer.hf.save_pretrained(str(out))
    if getattr(model, "visual_embedding", None) is not None:
        visual = {k: v.detach().contiguous() for k, v in model.visual_embedding.state_dict().items()}
        save_file(visual, str(out / "visual_embedding.safetensors"), metadata={"format": "pt"})
        files.append(out / "visual_embedding.safetensors")
    return files, ["default" if a == "shared" else a for a in adapters]


def save_base(model: Any, folder: Path) -> list[Path]:
    """The text model's own weights (``save_pretrained``, vocabulary already resized; no vlcli PEFT module):
    the base a warm-started run's LoRA was trained on, which its ``--backbone`` is not."""
    state = {k: v for k, v in model.lm.state_dict().items() if ".vl_" not in k}
    model.lm.save_pretrained(str(folder), state_dict=state)
    return sorted(p for p in folder.iterdir() if p.is_file())
