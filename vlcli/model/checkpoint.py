"""Saving and loading checkpoints: ``NAME.safetensors`` plus a ``NAME.json`` manifest beside it.

* :func:`save_checkpoint` writes the trainable parameters (adapter-only, the default) or the whole
  ``state_dict()`` (``full=True``). Tensors that share storage (tied embeddings) are saved once; the
  other names are recorded in the manifest under ``tied`` as ``{alias: kept_name}``. Both files are
  written to temporary files in the target folder and moved into place with :func:`os.replace`, the
  tensors first and the manifest last: a manifest means a complete checkpoint.
* :func:`load_checkpoint` reads a vlcli ``.safetensors`` checkpoint or an original VL-T5 / VL-Adapter
  ``.pth`` ``state_dict``, checks it against the model and copies the values into the model's
  existing tensors (their dtype and device are kept).
* :func:`read_manifest` reads and validates the manifest of a checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlcli import __version__
from vlcli.atomic import WriteError, default_mode, write_error
from vlcli.config.load import PTH_SUFFIX, SAFETENSORS_SUFFIX
from vlcli.errors import CheckpointNotFoundError, VlcliError

FORMAT = "vlcli-checkpoint"
FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".json"
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
KINDS = ("adapter", "full")
# Fields that save_checkpoint fills itself; a caller's value for them is replaced.
_OWN_FIELDS = ("format", "format_version", "vlcli_version", "kind", "keys", "tied", "created")
_LIST_LIMIT = 10
_PARTIAL_HINT = "pass allow_partial=True (--allow_partial_load) to load the matching tensors anyway"


class CheckpointError(VlcliError):
    """A checkpoint cannot be written, read, or does not fit the model."""


class CheckpointWriteError(CheckpointError, WriteError):
    """The OS refused to write a checkpoint (full disk, read-only folder, ...); the previous one is intact."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did.

    ``loaded``: model keys whose values were copied; ``missing``: keys the model needed but the
    checkpoint lacks (trainable parameters for an adapter checkpoint, every state key for a full one);
    ``unexpected``: checkpoint keys the model does not have; ``skipped_shape``: ``(key, saved shape,
    model shape)`` of tensors not loaded because the shapes differ; ``manifest``: the checkpoint's
    manifest (None for ``.pth`` files and manifest-less ``.safetensors``).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    manifest: dict | None = None
    kind: str = "adapter"

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.skipped_shape)


# ---------------------------------------------------------------------------------------- paths


def checkpoint_paths(path_stem: str | Path) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for a stem (``out/BEST``) or a ``.safetensors`` path."""
    p = Path(path_stem).expanduser()
    tensors = p if p.suffix == SAFETENSORS_SUFFIX else p.with_name(p.name + SAFETENSORS_SUFFIX)
    return tensors, tensors.with_suffix(MANIFEST_SUFFIX)


def _manifest_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.suffix == MANIFEST_SUFFIX else checkpoint_paths(p)[1]


def _head(names: Iterable[Any], limit: int = _LIST_LIMIT) -> str:
    items = [str(n) for n in names]
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", ... and {len(items) - limit} more"
    return shown


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ------------------------------------------------------------------------------------- manifest


def read_manifest(path: str | Path) -> dict | None:
    """The manifest beside a checkpoint (``path`` is the ``.safetensors``, the ``.json`` or the stem).

    Returns None when there is no manifest file. Raises :class:`CheckpointError` when it is not JSON,
    not a vlcli manifest, or written by a newer format version than this vlcli reads.
    """
    mpath = _manifest_path(path)
    if not mpath.is_file():
        return None
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint manifest {mpath} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint manifest {mpath} is not a JSON object")
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint manifest {mpath} has format {data.get('format')!r}, expected {FORMAT!r}"
        )
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint manifest {mpath} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint manifest {mpath} has format_version {version}, but this vlcli "
            f"({__version__}) reads up to {FORMAT_VERSION}; upgrade vlcli"
        )
    if data.get("kind") not in KINDS:
        raise CheckpointError(
            f"checkpoint manifest {mpath} has kind {data.get('kind')!r}, expected adapter or full"
        )
    keys = data.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(f"checkpoint manifest {mpath} has no list of tensor names in 'keys'")
    tied = data.get("tied", {})
    if not isinstance(tied, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tied.items()
    ):
        raise CheckpointError(f"checkpoint manifest {mpath} has an invalid 'tied' map")
    return data


# ----------------------------------------------------------------------------------------- save


def _adapter_tensors(model: torch.nn.Module, extra_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict(keep_vars=True)
    chosen: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad:
            chosen[name] = param
    for mname, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            continue
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        for stat in BN_STATS:
            key = f"{mname}.{stat}" if mname else stat
            if key in state and state[key] is not None:
                chosen[key] = state[key]
    unknown = [k for k in extra_keys if k not in state]
    if unknown:
        raise CheckpointError(f"extra_keys names tensors the model does not have: {_head(unknown)}")
    for key in extra_keys:
        chosen[key] = state[key]
    return chosen


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous tensors that own their storage; identical views of one storage are saved once."""
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach()
        if t.numel() > 0:
            signature = (
                str(t.device),
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                t.stride(),
                t.dtype,
            )
            if signature in first_of:
                tied[name] = first_of[signature]
                continue
            first_of[signature] = name
        t = t.to("cpu")
        if t.numel() > 0:
            ptr = t.untyped_storage().data_ptr()
            # Another view of a storage already kept, a slice of a larger storage, or strided: copy.
            if ptr in storages or not t.is_contiguous() or t.untyped_storage().nbytes() != t.nbytes:
                t = t.clone(memory_format=torch.contiguous_format)
            storages.add(t.untyped_storage().data_ptr())
        kept[name] = t
    return kept, tied


def _temp_in(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def save_checkpoint(
    model: torch.nn.Module,
    path_stem: str | Path,
    manifest: dict,
    full: bool = False,
    extra_keys: Iterable[str] = (),
    values: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json``; return the ``.safetensors`` path.

    ``manifest`` carries the caller's fields (``backbone``, ``vocab_size``, ``visual``, ``method``,
    ``tasks``, ``extra``); the fields in ``_OWN_FIELDS`` are filled here. Adapter-only (the default)
    saves every parameter with ``requires_grad=True``, the running statistics of BatchNorm modules
    that have trainable parameters, and the state entries named in ``extra_keys``. ``full=True``
    saves the whole ``state_dict()``. An OS refusal is a :class:`CheckpointWriteError` and leaves the
    previous checkpoint as it was. ``values``: the tensor to write for each chosen key (a sharded model's full
    tensors, gathered by the caller); the model still decides which keys are chosen.
    """
    tensors_path, manifest_path = checkpoint_paths(path_stem)
    chosen = _chosen_tensors(model, full, list(extra_keys), tensors_path)
    if values is not None:  # tied parameters take one value object, so they are still saved once
        first: dict[int, str] = {}
        alias = {k: first.setdefault(id(v), k) for k, v in model.state_dict(keep_vars=True).items()}
        chosen = {k: values[alias.get(k, k)] for k in chosen}
    tensors, tied = _dedupe(chosen)
    record = _manifest_record(manifest, full, tensors, tied)
    try:
        manifest_text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the manifest for {manifest_path} is not JSON-serialisable: {exc}") from exc
    _write_pair(tensors, manifest_text, tensors_path, manifest_path)
    return tensors_path


def _chosen_tensors(model: torch.nn.Module, full: bool, extra_keys: list[str], target: Path) -> dict[str, torch.Tensor]:
    """The whole state (``full``) or the trained tensors plus ``extra_keys``; never nothing."""
    if full:
        chosen = dict(model.state_dict())
        unknown = [k for k in extra_keys if k not in chosen]
        if unknown:
            raise CheckpointError(f"extra_keys names tensors the model does not have: {_head(unknown)}")
    else:
        chosen = _adapter_tensors(model, extra_keys)
    if not chosen:
        raise CheckpointError(
            f"nothing to save to {target}: no parameter of the model requires grad; "
            "unfreeze something or save with full=True"
        )
    return chosen


def _manifest_record(manifest: dict, full: bool, tensors: dict[str, torch.Tensor], tied: dict[str, str]) -> dict:
    """The caller's fields (defaults filled in) plus the ones this module owns."""
    record = {"backbone": None, "vocab_size": None, "visual": {}, "method": {}, "tasks": [], "extra": {},
              **manifest}
    record.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        vlcli_version=__version__,
        kind="full" if full else "adapter",
        keys=sorted(tensors),
        tied=dict(sorted(tied.items())),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return record


def _write_pair(tensors: dict[str, torch.Tensor], manifest_text: str, tensors_path: Path, manifest_path: Path) -> None:
    """Both files to temporary names, synced, then moved into place: tensors first, manifest last (a manifest
    means a complete checkpoint). On failure the temporary files are removed and the old pair stays."""
    folder = tensors_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc, CheckpointWriteError) from exc
    temps: list[Path] = []
    try:
        tmp_tensors = _temp_in(folder, tensors_path.name)
        temps.append(tmp_tensors)
        save_file(tensors, str(tmp_tensors), metadata={"format": "pt"})
        _fsync(tmp_tensors)
        tmp_manifest = _temp_in(folder, manifest_path.name)
        temps.append(tmp_manifest)
        with open(tmp_manifest, "w", encoding="utf-8") as fh:
            fh.write(manifest_text)
            fh.flush()
            os.fsync(fh.fileno())
        # An old manifest must not describe the new tensors while they are being swapped in.
        if manifest_path.exists():
            manifest_path.unlink()
        os.chmod(tmp_tensors, default_mode())
        os.chmod(tmp_manifest, default_mode())
        os.replace(tmp_tensors, tensors_path)
        temps.remove(tmp_tensors)
        os.replace(tmp_manifest, manifest_path)
        temps.remove(tmp_manifest)
    except OSError as exc:  # a full disk, a read-only folder: the previous checkpoint stays as it was
        raise write_error(tensors_path, exc, CheckpointWriteError) from exc
    finally:
        for tmp in temps:
            try:
                tmp.unlink()
            except OSError:
                pass


# ----------------------------------------------------------------------------------------- load


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    if path.suffix == SAFETENSORS_SUFFIX:
        manifest = read_manifest(path)
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read the checkpoint {path}: {exc}") from exc
        if manifest is not None and set(manifest["keys"]) != set(state):
            raise CheckpointError(
                f"checkpoint {path} does not match its manifest {_manifest_path(path)}: "
                f"the tensor names differ; the files come from different saves"
            )
        return state, manifest
    if path.suffix == PTH_SUFFIX:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle / zip errors, or objects weights_only refuses
            raise CheckpointError(f"cannot read the checkpoint {path}: {exc}") from exc
        for wrapper in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
        if not isinstance(obj, dict):
            raise CheckpointError(
                f"checkpoint {path} does not hold a state_dict (found {type(obj).__name__})"
            )
        bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"checkpoint {path} holds entries that are not tensors: {_head(bad)}")
        return dict(obj), None
    raise CheckpointError(f"checkpoint {path} is neither a .safetensors nor a .pth file")


def _rename(
    state: dict[str, torch.Tensor], key_map: Callable[[str], str | None] | None, path: Path
) -> dict[str, torch.Tensor]:
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key[len("module.") :] if key.startswith("module.") else key
        if key_map is not None:
            new = key_map(new)
            if new is None:
                continue
        if new in renamed:
            raise CheckpointError(f"checkpoint {path}: keys {origin[new]!r} and {key!r} both map to {new!r}")
        renamed[new] = value
        origin[new] = key
    return renamed


def peft_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the modules vlcli's PEFT injection added (adapters, LoRA, prompts, hyper-networks)."""
    from vlcli.peft import PEFT_GROUPS

    prefixes = [name for name, module in model.named_modules()
                if getattr(module, "parameter_group", None) in PEFT_GROUPS]
    return {key for key in model.state_dict(keep_vars=True)
            if any(key == p or key.startswith(p + ".") for p in prefixes)}


def _needed_keys(model: torch.nn.Module, model_state: dict[str, Any], kind: str, provided: set[str]) -> list[str]:
    """What a checkpoint of ``kind`` must provide: everything (full), the trained set (adapter), or, for an
    original full state dict, everything but the PEFT modules this run adds when the checkpoint has none of
    them (a VL-pretrained backbone); one that has PEFT tensors was trained with them and must have them all."""
    if kind == "full":
        return list(model_state)
    if kind == "original":
        fresh = peft_keys(model)
        if fresh & provided:
            return list(model_state)
        return [k for k in model_state if k not in fresh]
    return [n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]


def load_checkpoint(
    model: torch.nn.Module,
    path: str | Path,
    strict: bool = True,
    allow_partial: bool = False,
    key_map: Callable[[str], str | None] | None = None,
    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> LoadReport:
    """Copy a checkpoint's tensors into ``model`` and report what matched.

    ``path``: a ``.safetensors`` file (its manifest beside it is read when present) or an original
    ``.pth`` ``state_dict`` (optionally wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``). A
    leading ``module.`` (DDP) is stripped from every key, then ``key_map`` renames each key
    (None drops it) and ``transform`` converts the renamed state.

    What must be provided depends on the kind (:func:`_needed_keys`): an adapter checkpoint every
    trainable parameter; a full one every ``state_dict`` key; a manifest-less original ``.pth`` (a full
    state dict) every key except those of the PEFT modules this run adds. Tied tensors count on both
    sides. Missing / unexpected keys raise :class:`CheckpointError` when ``strict`` and not
    ``allow_partial``; shape mismatches raise unless ``allow_partial``. With ``allow_partial`` the
    matching tensors are loaded and the rest is listed in the returned :class:`LoadReport`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    state, manifest = _prepared_state(path, key_map, transform)
    model_state = model.state_dict(keep_vars=True)
    kind = _kind_of(path, manifest, state, model_state)
    report = _match(model, model_state, state, kind)
    report.manifest = manifest
    _refuse_misfit(report, path, strict, allow_partial)
    with torch.no_grad():
        model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)  # model keys only
    return report


def _prepared_state(
    path: Path,
    key_map: Callable[[str], str | None] | None,
    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None,
) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The checkpoint's tensors under the model's key names (renamed, transformed, tied aliases filled in)."""
    state, manifest = _read_tensors(path)
    state = _rename(state, key_map, path)
    if transform is not None:  # layout conversion after renaming (original Hyperformer task embeddings)
        state = transform(state)
    if manifest is not None:
        for alias, kept in manifest.get("tied", {}).items():
            if kept in state and alias not in state:
                state[alias] = state[kept]
    return state, manifest


def _kind_of(path: Path, manifest: dict | None, state: dict[str, Any], model_state: dict[str, Any]) -> str:
    """``adapter`` / ``full`` from the manifest; without one: ``full`` when it covers the model, else
    ``original`` for a ``.pth`` (VL-T5 / VL-Adapter saved full state dicts) and ``adapter`` for a
    ``.safetensors`` whose manifest was lost (vlcli saves adapter-only by default)."""
    if manifest is not None:
        return manifest["kind"]
    if set(model_state) <= set(state):
        return "full"
    return "original" if path.suffix == PTH_SUFFIX else "adapter"


def _match(model: torch.nn.Module, model_state: dict[str, Any], state: dict[str, torch.Tensor], kind: str) -> LoadReport:
    """Which checkpoint tensors fit (``loaded``), which the model lacks, which differ in shape, and which
    tensors of the model a checkpoint of ``kind`` must provide but does not (``missing``)."""
    report = LoadReport(kind=kind)
    report.unexpected = sorted(k for k in state if k not in model_state)
    for key, value in state.items():
        if key not in model_state:
            continue
        target = tuple(model_state[key].shape)
        if tuple(value.shape) == target:
            report.loaded.append(key)
        else:
            report.skipped_shape.append((key, tuple(value.shape), target))
    report.loaded.sort()
    provided = set(report.loaded) | {k for k, _, _ in report.skipped_shape}
    covered = _with_tied(model_state, provided)
    report.missing = sorted(k for k in _needed_keys(model, model_state, kind, provided) if k not in covered)
    return report


def _with_tied(model_state: dict[str, Any], provided: set[str]) -> set[str]:
    """``provided`` plus every model name that is the same tensor as a provided one (tied weights)."""
    groups: dict[int, list[str]] = {}
    for key, tensor in model_state.items():
        if tensor is not None:
            groups.setdefault(id(tensor), []).append(key)
    covered = set(provided)
    for names in groups.values():
        if any(n in provided for n in names):
            covered.update(names)
    return covered


def _refuse_misfit(report: LoadReport, path: Path, strict: bool, allow_partial: bool) -> None:
    """CheckpointError listing missing / unexpected keys (when ``strict``) and shape mismatches, unless
    ``allow_partial``: the first names of each and their count, and the escape hatch."""
    key_problem = strict and bool(report.missing or report.unexpected)
    if allow_partial or not (key_problem or report.skipped_shape):
        return
    missing = report.missing if key_problem else []
    unexpected = report.unexpected if key_problem else []
    skipped = report.skipped_shape
    parts = [_plural(len(missing), "missing key")] if missing else []
    parts += [_plural(len(unexpected), "unexpected key")] if unexpected else []
    parts += [f"{len(skipped)} shape mismatch{'' if len(skipped) == 1 else 'es'}"] if skipped else []
    lines = [f"{report.kind} checkpoint {path} does not fit the model: {', '.join(parts)}"]
    if missing:
        lines.append(f"  missing (model has, checkpoint lacks): {_head(missing)}")
    if unexpected:
        lines.append(f"  unexpected (checkpoint has, model lacks): {_head(unexpected)}")
    if skipped:
        lines.append(f"  shape mismatch: {_head(f'{k} (checkpoint {list(s)}, model {list(m)})' for k, s, m in skipped)}")
    lines.append(f"  {_PARTIAL_HINT}")
    raise CheckpointError("\n".join(lines))
