"""What vlcli knows about a backbone without loading it.

The built-in presets let configuration validation (and, with the model core, parameter counting on
the meta device) work without downloading anything. A local directory is described by its
``config.json``. Plain data only: importing this module must not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlcli.errors import VlcliError
from vlcli.paths import is_file, user_path


@dataclass(frozen=True)
class BackboneInfo:
    """Family (``t5`` or ``bart``) and hidden size of a backbone, with where we learned it."""

    family: str
    d_model: int | None
    source: str


PRESETS: dict[str, BackboneInfo] = {
    "t5-small": BackboneInfo("t5", 512, "preset"),
    "t5-base": BackboneInfo("t5", 768, "preset"),
    "t5-large": BackboneInfo("t5", 1024, "preset"),
    "facebook/bart-base": BackboneInfo("bart", 768, "preset"),
    "facebook/bart-large": BackboneInfo("bart", 1024, "preset"),
}
PRESET_ALIASES: dict[str, str] = {
    "google-t5/t5-small": "t5-small",
    "google-t5/t5-base": "t5-base",
    "google-t5/t5-large": "t5-large",
    "bart-base": "facebook/bart-base",
    "bart-large": "facebook/bart-large",
}
"""Hub aliases of the same checkpoints -> preset name."""
for _alias, _name in PRESET_ALIASES.items():
    PRESETS[_alias] = PRESETS[_name]


D_MODEL_MAX = 65536
"""Largest hidden size believed from a local config.json (anything else reads as unknown)."""


def _local_config(cfg: Path) -> dict:
    """The JSON object in a local ``config.json``; {} when there is none or it is unreadable / not an object."""
    if not is_file(cfg):
        return {}
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def backbone_info(backbone: str) -> BackboneInfo | None:
    """Describe ``backbone`` (preset name, local directory with config.json, or a hub name).

    Returns None when the family cannot be determined. For unknown hub names the family is taken
    from the name (``t5`` or ``bart`` in it, as the original did) and ``d_model`` is unknown.
    """
    if backbone in PRESETS:
        return PRESETS[backbone]
    cfg = user_path(backbone) / "config.json"
    data = _local_config(cfg)
    model_type = str(data.get("model_type", "")).lower()
    family = "t5" if model_type in {"t5", "mt5"} else "bart" if model_type in {"bart", "mbart"} else None
    if family is not None:
        d_model = data.get("d_model")
        valid = isinstance(d_model, int) and not isinstance(d_model, bool) and 0 < d_model <= D_MODEL_MAX
        return BackboneInfo(family, d_model if valid else None, f"{cfg}")
    lowered = backbone.lower()
    if "bart" in lowered:
        return BackboneInfo("bart", None, "name")
    if "t5" in lowered:
        return BackboneInfo("t5", None, "name")
    return None


# --------------------------------------------------------------------------------------------------
# Architectures built in code (no download). torch / transformers are imported inside the functions.
# --------------------------------------------------------------------------------------------------

# Hyper-parameters of the public checkpoints' config.json files (keys are T5Config / BartConfig
# fields of transformers 5). Values every T5 / BART preset shares are in _T5_COMMON / _BART_COMMON.
_T5_COMMON: dict[str, object] = {
    "vocab_size": 32128,
    "d_kv": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "relu",
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
_BART_COMMON: dict[str, object] = {
    "vocab_size": 50265,
    "max_position_embeddings": 1024,
    "activation_function": "gelu",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "init_std": 0.02,
    "encoder_layerdrop": 0.0,
    "decoder_layerdrop": 0.0,
    "scale_embedding": False,
    "tie_word_embeddings": True,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
    "forced_eos_token_id": 2,
}
_ARCHITECTURES: dict[str, dict[str, object]] = {
    "t5-small": {"d_model": 512, "d_ff": 2048, "num_heads": 8, "num_layers": 6, "num_decoder_layers": 6},
    "t5-base": {"d_model": 768, "d_ff": 3072, "num_heads": 12, "num_layers": 12, "num_decoder_layers": 12},
    "t5-large": {"d_model": 1024, "d_ff": 4096, "num_heads": 16, "num_layers": 24, "num_decoder_layers": 24},
    "facebook/bart-base": {
        "d_model": 768,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 12,
        "decoder_attention_heads": 12,
        "encoder_ffn_dim": 3072,
        "decoder_ffn_dim": 3072,
    },
    "facebook/bart-large": {
        "d_model": 1024,
        "encoder_layers": 12,
        "decoder_layers": 12,
        "encoder_attention_heads": 16,
        "decoder_attention_heads": 16,
        "encoder_ffn_dim": 4096,
        "decoder_ffn_dim": 4096,
    },
}
# In transformers 5 generation settings (e.g. BART's forced_bos_token_id) are GenerationConfig
# fields: PreTrainedConfig drops them from its keyword arguments and refuses to save them.
_BART_GENERATION: dict[str, object] = {"forced_bos_token_id": 0, "forced_eos_token_id": 2}

FAMILIES = ("t5", "bart")


class UnknownPresetError(VlcliError):
    """A backbone name or family that has no architecture built into vlcli."""


def _canonical(name: str) -> str:
    """The preset key of ``name`` (aliases resolved); raise UnknownPresetError if there is none."""
    key = PRESET_ALIASES.get(name, name)
    if key in _ARCHITECTURES:
        return key
    raise UnknownPresetError(
        f"no built-in architecture for backbone {name!r}; presets: {', '.join(PRESETS)} "
        "(a local directory with config.json or a hub name is loaded with from_pretrained elsewhere)"
    )


def architecture_config(name: str):
    """``T5Config`` / ``BartConfig`` with the hyper-parameters of the public checkpoint ``name``."""
    key = _canonical(name)
    family = PRESETS[key].family
    if family == "t5":
        from transformers import T5Config

        return T5Config(**_T5_COMMON, **_ARCHITECTURES[key])
    from transformers import BartConfig

    return BartConfig(**_BART_COMMON, **_ARCHITECTURES[key])


def generation_defaults(name: str) -> dict[str, object]:
    """Generation settings of the public checkpoint (for a ``GenerationConfig``, not the model config)."""
    key = _canonical(name)
    return dict(_BART_GENERATION) if PRESETS[key].family == "bart" else {}


def tiny_config(family: str, vocab_size: int):
    """A tiny T5Config / BartConfig (d_model 32, 2+2 layers, 4 heads, d_ff 64) for random-init tests."""
    if family == "t5":
        from transformers import T5Config

        params = {**_T5_COMMON, "vocab_size": vocab_size, "d_kv": 8}
        return T5Config(**params, d_model=32, d_ff=64, num_heads=4, num_layers=2, num_decoder_layers=2)
    if family == "bart":
        from transformers import BartConfig

        params = {**_BART_COMMON, "vocab_size": vocab_size, "max_position_embeddings": 128}
        return BartConfig(
            **params,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
        )
    raise UnknownPresetError(f"unknown model family {family!r}; expected one of: {', '.join(FAMILIES)}")


def model_class(family: str):
    """The seq2seq LM class of ``family``: T5ForConditionalGeneration or BartForConditionalGeneration."""
    if family == "t5":
        from transformers import T5ForConditionalGeneration

        return T5ForConditionalGeneration
    if family == "bart":
        from transformers import BartForConditionalGeneration

        return BartForConditionalGeneration
    raise UnknownPresetError(f"unknown model family {family!r}; expected one of: {', '.join(FAMILIES)}")


def count_parameters(name: str) -> int:
    """Unique parameters of preset ``name``'s seq2seq LM, built on the meta device (tied weights once).

    Buffers (BART's ``final_logits_bias``) are not parameters and are not counted.
    """
    import torch

    config = architecture_config(name)
    cls = model_class(PRESETS[_canonical(name)].family)
    with torch.device("meta"):
        model = cls(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied tensors once
