"""The public Python API of vlcli (the CLI is built on these functions).

    from vlcli import api
    settings = api.load_settings(profiles=["single_adapter"], task="vqa", backbone="t5-base")
    model = api.build_model(settings, device="meta")          # shapes only: nothing is downloaded
    api.count_parameters(model)                              # {"total", "trainable", "percent", "groups"}
    model = api.build_model(settings, device="cuda")          # weights from the hub or a local directory
    out = model(input_ids, attention_mask, vis_feats, vis_pos, labels=labels, task="vqa")
    out.loss, out.logits
    ids = model.generate(input_ids, attention_mask, vis_feats, vis_pos, num_beams=5, max_length=20)
    api.save_checkpoint(model, "snap/run/BEST", settings=settings)
    api.load_checkpoint(model, "snap/run/BEST.safetensors", settings=settings)
    api.Predictor("snap/run").answer("photo.jpg", "what color is the car?")   # a run on your own image

Validation is the CLI's: :func:`load_settings` raises :class:`vlcli.errors.ConfigError` listing every
broken rule. torch and transformers are imported by the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcli.config.resolve import resolve
from vlcli.config.settings import Settings
from vlcli.config.usage import USED_BY
from vlcli.errors import ConfigError, VlcliError

if TYPE_CHECKING:
    import torch

    from vlcli.model.checkpoint import LoadReport
    from vlcli.model.tokenizer import VLTokenizer
    from vlcli.model.vl import VLModel
    from vlcli.predict import Predictor


def load_settings(
    profiles: Sequence[str] = (),
    task: str | None = None,
    adapter: str | None = None,
    command: str = "finetune",
    **overrides: Any,
) -> Settings:
    """Validated settings: defaults < ``profiles`` < ``adapter`` recipe < ``overrides`` < ``task``.

    ``overrides`` use the argument names of the config reference (``lr=3e-4``, ``backbone="t5-base"``).
    Raises :class:`ConfigError` (all errors, with warnings attached) exactly as the CLI would; a profile
    that cannot be read raises :class:`~vlcli.errors.ProfileError`. ``profiles`` may be one name.
    """
    names = [profiles] if isinstance(profiles, str) else profiles
    _check_arguments(names, task, adapter, command)
    res = resolve(command, task, list(names), overrides, adapter)
    if res.errors or res.settings is None:
        raise ConfigError(res.errors, res.warnings)
    return res.settings


def _check_arguments(profiles: Any, task: Any, adapter: Any, command: Any) -> None:
    """Refuse argument types :func:`load_settings` cannot use, naming the argument (a VlcliError, no TypeError)."""
    if not isinstance(profiles, (list, tuple)) or not all(isinstance(p, str) for p in profiles):
        raise VlcliError(f"load_settings: profiles={profiles!r}: give a list of profile names or paths (strings)")
    for name, value in (("task", task), ("adapter", adapter), ("command", command)):
        if value is not None and not isinstance(value, str):
            raise VlcliError(f"load_settings: {name}={value!r}: give a string (or None)")
    if command is not None and command not in USED_BY:
        raise VlcliError(f"load_settings: command={command!r}: unknown command; use one of {', '.join(USED_BY)}")


def build_tokenizer(settings: Settings) -> VLTokenizer:
    """The VL tokenizer (backbone tokenizer + ``<extra_id_k>`` + ``<vis_extra_id_k>``)."""
    from vlcli.model.build import build_tokenizer as _build

    return _build(settings)


def build_model(
    settings: Settings, device: str | torch.device = "cpu", tokenizer: VLTokenizer | None = None
) -> VLModel:
    """The VL-T5 / VL-BART model of ``settings`` with its trainable set applied.

    ``device="meta"`` builds shapes only (presets and local directories need no download).
    """
    from vlcli.model.build import build_model as _build
    from vlcli.model.params import set_trainable

    model = _build(settings, device=device, tokenizer=tokenizer)
    set_trainable(model, settings)
    return model


def count_parameters(model: torch.nn.Module) -> dict[str, Any]:
    """``{"total", "trainable", "percent", "groups": {name: {"total", "trainable"}}}`` (tied weights once)."""
    from vlcli.model.params import count_parameters as _count

    return _count(model)


def save_checkpoint(
    model: VLModel, path: str | Path, full: bool = False, settings: Settings | None = None,
    values: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``PATH.safetensors`` + ``PATH.json`` (adapter-only unless ``full``); return the tensors' path.

    ``values``: the tensors to write for the model's ``state_dict`` keys, when the model holds shards (FSDP2)."""
    from vlcli.model.checkpoint import save_checkpoint as _save
    from vlcli.model.manifest import describe

    return _save(model, path, describe(model, settings), full=full,
                 extra_keys=[] if full else model.checkpoint_buffers(), values=values)


def load_checkpoint(
    model: VLModel,
    path: str | Path,
    strict: bool = True,
    allow_partial: bool = False,
    settings: Settings | None = None,
) -> LoadReport:
    """Load a vlcli ``.safetensors`` checkpoint or an original VL-T5 / VL-Adapter ``.pth`` into ``model``.

    vlcli checkpoints are first checked against the model (family, vocab size, feat_dim, visual
    reduction; with ``settings`` also the method settings). Original ``.pth`` files go through the
    explicit key map of :mod:`vlcli.model.original`. ``strict`` / ``allow_partial``: see
    :func:`vlcli.model.checkpoint.load_checkpoint`.
    """
    from vlcli.config.load import PTH_SUFFIX
    from vlcli.model.checkpoint import load_checkpoint as _load
    from vlcli.model.checkpoint import read_manifest
    from vlcli.model.manifest import check_manifest
    from vlcli.model.original import original_key_map, original_state_transform

    path = Path(path).expanduser()
    if path.suffix == PTH_SUFFIX:
        return _load(
            model,
            path,
            strict=strict,
            allow_partial=allow_partial,
            key_map=original_key_map(model),
            transform=original_state_transform(model),
        )
    manifest = read_manifest(path) if path.is_file() else None
    if manifest is not None and not allow_partial:
        check_manifest(manifest, model, str(path), settings)
    if manifest is not None:
        from vlcli.model.warmstart import apply_recorded_init

        apply_recorded_init(model, manifest, settings, path)  # a warm-started run: its init first
    return _load(model, path, strict=strict, allow_partial=allow_partial)


def __getattr__(name: str) -> Any:
    """``api.Predictor`` (:mod:`vlcli.predict`), imported on first use (it pulls in torch)."""
    if name == "Predictor":
        from vlcli.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'vlcli.api' has no attribute {name!r}")


__all__ = [
    "Predictor",
    "build_model",
    "build_tokenizer",
    "count_parameters",
    "load_checkpoint",
    "load_settings",
    "save_checkpoint",
]
