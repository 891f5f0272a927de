"""Build a VL-T5 / VL-BART model from validated settings.

The backbone comes from a built-in preset (``t5-base`` ...), a local directory saved with
``save_pretrained``, or a hub name. On the ``meta`` device the weights are not loaded at all (presets
and local directories need only their config), which is how ``inspect-config`` counts parameters
offline in seconds.

Decisions (documented in docs/model.md):
* token embeddings are resized to the VL tokenizer's length (t5-base 32200, bart-base 50465); the new
  rows are drawn per dimension from N(mean, std) of the existing rows, so the ``<vis_extra_id_k>``
  rows that serve as object-order embeddings have the scale of the backbone's own embeddings; the draw
  uses a fixed seed, so an adapter-only checkpoint (which does not hold these frozen rows) reloads into
  exactly the model that was saved;
* ``--dropout`` sets every dropout of the backbone (T5 ``dropout_rate``; BART ``dropout``,
  ``attention_dropout``, ``activation_dropout``), as VL-T5 does;
* ``--from_scratch`` builds the backbone from its config with transformers' own initialisation
  (instead of VL-T5's N(0, 1) for every layer followed by that initialisation);
* generation settings are explicit: the model's GenerationConfig is replaced by one built from the
  family's documented defaults (:data:`GENERATION_DEFAULTS`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from vlcli.errors import VlcliError
from vlcli.model.image_encoder import ImageEncoderConfig, build_image_encoder
from vlcli.model.presets import PRESETS, architecture_config, backbone_info, model_class
from vlcli.model.tokenizer import N_EXTRA, N_VIS, VLTokenizer, build_vl_tokenizer
from vlcli.model.visual import VisualConfig
from vlcli.model.vl import VLModel
from vlcli.paths import is_dir, user_path
from vlcli.peft import apply_peft

# Vocabulary of the public backbones' tokenizers (before the VL sentinels are added).
_TOKENIZER_SIZES = {"t5": 32000 + N_EXTRA, "bart": 50265}
# What VL-BART got implicitly from facebook/bart-base's config.json under transformers 4.2 (its
# generate() read them from the model config): made explicit here and applied to every BART backbone.
GENERATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "t5": {},
    "bart": {
        "forced_bos_token_id": 0,
        "forced_eos_token_id": 2,
        "no_repeat_ngram_size": 3,
        "early_stopping": True,
    },
}


_RESIZE_SEED = 20220101  # fixed seed of the rows added to the token embeddings (see _resize_embeddings)


class ModelBuildError(VlcliError):
    """The backbone named by --backbone cannot be found or loaded."""


def vl_vocab_size(backbone: str, family: str) -> int | None:
    """The VL tokenizer's length for a preset backbone (t5-* 32200, bart-* 50465), else None."""
    if backbone not in PRESETS:
        return None
    base = _TOKENIZER_SIZES[family]
    return base + N_VIS + (0 if family == "t5" else N_EXTRA)


def _family(settings: Any) -> str:
    family = settings.derived.backbone_family if settings.derived else None
    if family is None:
        info = backbone_info(settings.get("backbone"))
        family = info.family if info else None
    if family is None:
        raise ModelBuildError(
            f"--backbone {settings.get('backbone')}: cannot tell whether it is T5 or BART; "
            "pass a preset, a directory with config.json, or a hub name containing t5 or bart"
        )
    return family


def _set_dropout(config: Any, family: str, dropout: float) -> None:
    if family == "t5":
        config.dropout_rate = dropout
    else:
        config.dropout = config.attention_dropout = config.activation_dropout = dropout


def _is_local(backbone: str) -> bool:
    return is_dir(user_path(backbone))


def backbone_config(backbone: str, family: str, offline: bool = False) -> Any:
    """The transformers config of ``backbone``: preset (built in), local directory or hub name.

    ``offline``: a hub name is looked up in the local Hugging Face cache only.
    """
    if backbone in PRESETS:
        return architecture_config(backbone)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            str(user_path(backbone)) if _is_local(backbone) else backbone,
            local_files_only=offline or _is_local(backbone) or _offline(),
        )
    except (OSError, ValueError) as exc:
        raise ModelBuildError(_not_found(backbone, exc)) from exc


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def _not_found(backbone: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"--backbone {backbone}: cannot load it ({first}); pass a local directory saved with "
        "save_pretrained, or a hub name with network access or in the Hugging Face cache"
    )


def _resize_embeddings(lm: Any, rows: int) -> None:
    """Resize the token embeddings (and tied head) to ``rows``; new rows ~ N(mean, std) of the old ones."""
    old = lm.get_input_embeddings().weight
    n_old = old.shape[0]
    if n_old == rows:
        return
    lm.resize_token_embeddings(rows, mean_resizing=False)
    if rows > n_old and old.device.type != "meta":
        with torch.no_grad():
            weight = lm.get_input_embeddings().weight
            existing = weight[:n_old].float()
            mean, std = existing.mean(dim=0), existing.std(dim=0)
            # A fixed seed: the rows are frozen and not in adapter-only checkpoints, so rebuilding the
            # model must recreate them exactly.
            noise = torch.randn(
                rows - n_old, weight.shape[1], generator=torch.Generator().manual_seed(_RESIZE_SEED)
            )
            fresh = noise.to(weight.device) * std + mean
            weight[n_old:] = fresh.to(weight.dtype)
            head = lm.get_output_embeddings()
            if head is not None and head.weight.data_ptr() != weight.data_ptr():
                head.weight[n_old:] = fresh.to(head.weight.dtype)


def build_tokenizer(settings: Any) -> VLTokenizer:
    """The VL tokenizer of ``settings`` (``--tokenizer`` or the backbone)."""
    name = settings.get("tokenizer") or settings.get("backbone")
    return build_vl_tokenizer(name, _family(settings), settings.get("do_lower_case"))


def build_model(
    settings: Any, device: str | torch.device = "cpu", tokenizer: VLTokenizer | None = None
) -> VLModel:
    """The VL model of ``settings`` on ``device`` (``"meta"``: shapes only, nothing loaded).

    The vocabulary size comes from ``tokenizer`` when given, from the preset on the meta device, and
    otherwise from the tokenizer built from the settings. On the meta device nothing is downloaded:
    a hub name that is not a preset must be in the local cache. No parameter is frozen here; see
    :func:`vlcli.model.params.set_trainable`.
    """
    backbone = settings.get("backbone")
    family = _family(settings)
    meta = torch.device(device).type == "meta"
    config = backbone_config(backbone, family, offline=meta)
    if config.model_type not in (family, {"t5": "mt5", "bart": "mbart"}[family]):
        raise ModelBuildError(f"--backbone {backbone}: is a {config.model_type} model, not {family}")
    if tokenizer is not None:
        vocab = tokenizer.vocab_size
    elif meta and vl_vocab_size(backbone, family) is not None:
        vocab = vl_vocab_size(backbone, family)
    else:
        vocab = build_tokenizer(settings).vocab_size
    _set_dropout(config, family, settings.get("dropout"))
    cls = model_class(family)
    if meta or settings.get("from_scratch"):
        with torch.device("meta" if meta else "cpu"):
            lm = cls(config)
    else:
        source = str(user_path(backbone)) if _is_local(backbone) else backbone
        try:
            lm = cls.from_pretrained(
                source, config=config, local_files_only=_is_local(backbone) or _offline(), dtype=torch.float32
            )
        except (OSError, ValueError) as exc:
            raise ModelBuildError(_not_found(backbone, exc)) from exc
    _resize_embeddings(lm, vocab)
    visual = VisualConfig.from_settings(settings) if settings.get("use_vision") else None
    with torch.device("meta" if meta else "cpu"):
        model = VLModel(
            lm, family, visual, backbone=backbone, generation_defaults=GENERATION_DEFAULTS[family]
        )
        encoder = ImageEncoderConfig.from_settings(settings) if visual is not None else None
        if encoder is not None:
            model.visual_encoder = build_image_encoder(encoder, meta=meta)
        apply_peft(model, settings)
    if not meta:
        model.to(device)
    lm.generation_config = model.generation_config(settings.get("num_beams"), settings.get("gen_max_length"))
    return model
