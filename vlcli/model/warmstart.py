"""Warm start: initialise a training run from a checkpoint (``finetune`` / ``pretrain --load``).

The paper's workflow: take a VL-pretrained checkpoint (``vlcli pretrain``, a full fine-tuning run, an
original VL-T5 ``Epoch30.pth`` / VL-BART ``.pth``), add adapters / LoRA / prompts, train a few percent of
the weights. A warm start therefore differs from the exact load of ``eval`` / ``submit`` / ``--resume``
(:func:`vlcli.api.load_checkpoint`) in one way: the PEFT modules this run adds may be absent from the
checkpoint and start from their initialisation. Everything else is checked:

* every tensor of the checkpoint lands in the model (no unexpected key, no shape mismatch);
* what the checkpoint claims to hold is complete: a full state dict (``full`` manifests, original ``.pth``)
  holds the whole model but this run's PEFT modules; an adapter-only checkpoint holds every tensor its run
  trained (the ``method`` recorded in its manifest says which), the rest comes from ``--backbone``;
* per-task modules change task only through an explicit ``--init_task_map SRC=DST`` (``pretrain=vqa``).

``--allow_partial_load`` loads what matches and lists the rest instead of refusing (the exotic cases).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcli.config.load import PTH_SUFFIX
from vlcli.errors import CheckpointNotFoundError
from vlcli.model.checkpoint import (
    CheckpointError,
    _head,
    _prepared_state,
    _with_tied,
    peft_keys,
    read_manifest,
)
from vlcli.model.params import BACKBONE_GROUP, _groups, group_of

FRESH = "fresh"
LOADED = "loaded"
FROM_BACKBONE = "backbone"


class WarmStartError(CheckpointError):
    """A ``--load`` checkpoint does not fit the run it should initialise."""


@dataclass
class WarmStart:
    """What :func:`warm_start` did: per parameter group, tensors / parameters loaded, fresh (this run's
    PEFT modules, from their initialisation) and kept from ``--backbone``; ``ignored`` (only with
    ``allow_partial``) the checkpoint tensors that were not loaded, with the reason."""

    path: Path
    sha256: str
    kind: str
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    task_map: dict[str, list[str]] = field(default_factory=dict)

    def total(self, status: str) -> int:
        return sum(g.get(status, 0) for g in self.groups.values())

    def reference(self) -> dict[str, Any]:
        """What a checkpoint manifest records to redo this warm start (path, sha256, task map)."""
        return {"path": str(self.path), "sha256": self.sha256, "task_map": self.task_map,
                "partial": bool(self.ignored)}

    def record(self) -> dict[str, Any]:
        """The ``init`` entry of the run's config.json."""
        return {"path": str(self.path), "sha256": self.sha256, "kind": self.kind,
                "loaded_tensors": self.total(LOADED), "fresh_tensors": self.total(FRESH),
                "fresh_groups": sorted(g for g, c in self.groups.items() if c.get(FRESH)),
                "ignored": len(self.ignored), "task_map": self.task_map}


def parse_task_map(text: str | None) -> dict[str, list[str]]:
    """``"pretrain=vqa,pretrain=gqa"`` -> ``{"pretrain": ["vqa", "gqa"]}`` (ValueError naming a bad pair)."""
    out: dict[str, list[str]] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        src, sep, dst = (s.strip() for s in part.partition("="))
        if not sep or not src or not dst:
            raise ValueError(f"{part.strip()!r} is not SOURCE=TARGET (e.g. pretrain=vqa)")
        if dst in out.get(src, []):
            raise ValueError(f"{part.strip()!r} is given twice")
        out.setdefault(src, []).append(dst)
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


INIT_ATTR = "vlcli_init"
"""Attribute of a warm-started model holding its :meth:`WarmStart.reference`; the manifests of its checkpoints
record it, so an adapter-only checkpoint (which lacks the warm-started weights) is loaded over the same init."""


def warm_start(model: nn.Module, path: str | Path, settings: Any, *, allow_partial: bool = False,
               task_map: Mapping[str, list[str]] | None = None, sha256: str | None = None) -> WarmStart:
    """Initialise ``model`` (built and ``set_trainable`` for this run) from the checkpoint at ``path``
    (``sha256``: the file's digest when the caller has just computed it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"--load {path}: the checkpoint does not exist")
    task_map = dict(task_map) if task_map is not None else parse_task_map(settings.get("init_task_map"))
    state, manifest, kind = _read(model, path)
    state = map_tasks(state, task_map)
    model_state = model.state_dict(keep_vars=True)
    fresh = peft_keys(model)
    unexpected = sorted(k for k in state if k not in model_state)
    shapes = sorted((k, tuple(v.shape), tuple(model_state[k].shape)) for k, v in state.items()
                    if k in model_state and tuple(v.shape) != tuple(model_state[k].shape))
    fit = [k for k in state if k in model_state and k not in {s[0] for s in shapes}]
    covered = _with_tied(model_state, set(fit))
    missing = sorted(k for k in _claimed(model, model_state, kind, manifest, settings) - fresh if k not in covered)
    if (unexpected or shapes or missing) and not allow_partial:
        raise WarmStartError(_misfit_message(path, kind, manifest, settings, unexpected, shapes, missing))
    with torch.no_grad():
        model.load_state_dict({k: state[k] for k in fit}, strict=False)
    ignored = [f"{k} (model has no such tensor)" for k in unexpected]
    ignored += [f"{k} (checkpoint {list(s)}, model {list(m)})" for k, s, m in shapes]
    ignored += [f"{k} (checkpoint lacks it)" for k in missing]
    report = WarmStart(path=path.resolve(), sha256=sha256 or sha256_of(path), kind=kind, ignored=ignored,
                       task_map=task_map)
    report.groups = _group_counts(model, model_state, covered, fresh)
    setattr(model, INIT_ATTR, report.reference())
    return report


def apply_recorded_init(model: nn.Module, manifest: Mapping[str, Any], settings: Any, checkpoint: Path) -> None:
    """Before an exact load of an adapter-only checkpoint of a warm-started run: the same warm start again
    (the file must still be there, unchanged), so the weights the checkpoint does not hold are the run's."""
    init = manifest.get("init")
    if not isinstance(init, dict) or manifest.get("kind") != "adapter":
        return
    path = Path(str(init.get("path")))
    if not path.is_file():
        raise WarmStartError(f"{checkpoint} was trained from {path} (warm start), which no longer exists; its "
                             "adapter-only checkpoint needs it: put it back, or save runs with --save_full")
    digest = sha256_of(path)
    if digest != init.get("sha256"):
        raise WarmStartError(f"{checkpoint} was trained from {path} (warm start), which has changed since "
                             f"(sha256 {init.get('sha256', '?')[:12]} expected); restore that file")
    warm_start(model, path, settings, allow_partial=bool(init.get("partial")), task_map=init.get("task_map") or {},
               sha256=digest)


def _read(model: nn.Module, path: Path) -> tuple[dict[str, torch.Tensor], dict | None, str]:
    """The checkpoint's tensors under the model's names, its manifest, and its kind (full / adapter / original)."""
    if path.suffix == PTH_SUFFIX:
        from vlcli.model.original import original_key_map, original_state_transform

        state, _ = _prepared_state(path, original_key_map(model), original_state_transform(model))
        return state, None, "original"
    manifest = read_manifest(path)
    if manifest is not None:
        from vlcli.model.manifest import check_manifest

        check_manifest(manifest, model, str(path))  # family, vocabulary, feat_dim, visual reduction
    state, manifest = _prepared_state(path, None, None)
    return state, manifest, manifest["kind"] if manifest else "adapter"


_PER_TASK_CONTAINERS = ("adapters", "pairs", "prompts")
"""ModuleDict attributes of the PEFT modules whose keys are task names (``shared`` in single mode)."""


def map_tasks(state: dict[str, torch.Tensor], task_map: Mapping[str, list[str]]) -> dict[str, torch.Tensor]:
    """Rename per-task module keys ``….adapters.SRC.…`` to each of ``task_map[SRC]`` (copies for several)."""
    if not task_map:
        return state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        hit = next((i for i in range(1, len(parts)) if parts[i - 1] in _PER_TASK_CONTAINERS
                    and parts[i] in task_map), None)
        if hit is None:
            out.setdefault(key, value)
            continue
        for target in task_map[parts[hit]]:
            out[".".join(parts[:hit] + [target] + parts[hit + 1:])] = value
    return out


class _MethodView:
    """Settings as the checkpoint's run had them: its recorded method section over this run's settings."""

    def __init__(self, method: Mapping[str, Any], settings: Any) -> None:
        self.method, self.settings = method, settings

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.method:
            return self.method[name]
        return self.settings.get(name, default) if self.settings is not None else default


def _claimed(model: nn.Module, model_state: dict[str, Any], kind: str, manifest: dict | None, settings: Any) -> set[str]:
    """The model keys the checkpoint says it holds: all of them for a full state dict; for an adapter-only
    checkpoint those its run trained (its manifest's method applied to this model) and the buffers
    adapter checkpoints carry; nothing for a manifest-less ``.safetensors``."""
    if kind in ("full", "original"):
        return set(model_state)
    method = (manifest or {}).get("method")
    if not isinstance(method, dict):
        return set()
    from vlcli.model.params import set_trainable

    before = {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}
    try:
        set_trainable(model, _MethodView(method, settings))
        trained = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    finally:
        for name, param in model.named_parameters(remove_duplicate=False):
            param.requires_grad_(before[name])
    buffers = getattr(model, "checkpoint_buffers", lambda: [])()
    return trained | set(buffers)


def _group_counts(model: nn.Module, model_state: dict[str, Any], covered: set[str], fresh: set[str]) -> dict[str, dict[str, int]]:
    groups = _groups(model)
    out: dict[str, dict[str, int]] = {}
    seen: set[int] = set()
    for key, tensor in model_state.items():
        if tensor is None or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        status = LOADED if key in covered else FRESH if key in fresh else FROM_BACKBONE
        entry = out.setdefault(group_of(key, groups), {})
        entry[status] = entry.get(status, 0) + 1
        entry[status + "_params"] = entry.get(status + "_params", 0) + tensor.numel()
    return out


def _misfit_message(path: Path, kind: str, manifest: dict | None, settings: Any, unexpected: list[str],
                    shapes: list[tuple[str, tuple, tuple]], missing: list[str]) -> str:
    lines = [f"--load {path}: the {kind} checkpoint does not fit this run"]
    if unexpected:
        lines.append(f"  {len(unexpected)} tensor(s) the model does not have: {_head(unexpected, 3)}")
        lines += _unexpected_hints(unexpected, manifest, settings)
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatch(es): "
                     f"{_head(f'{k} (checkpoint {list(s)}, model {list(m)})' for k, s, m in shapes)}")
    if missing:
        lines.append(f"  {len(missing)} tensor(s) the checkpoint should hold but lacks: {_head(missing)}")
    lines.append("  only the PEFT modules this run adds may start fresh; --allow_partial_load loads what matches "
                 "and lists the rest")
    return "\n".join(lines)


def _unexpected_hints(unexpected: list[str], manifest: dict | None, settings: Any) -> list[str]:
    """Why tensors do not land: per-task modules of another task, or modules of a method this run lacks."""
    tasks = set(settings.derived.tasks) if getattr(settings, "derived", None) else set()
    foreign = sorted({parts[i] for k in unexpected for parts in [k.split(".")]
                      for i in range(1, len(parts)) if parts[i - 1] in _PER_TASK_CONTAINERS
                      and parts[i] not in tasks and parts[i] != "shared"})
    hints = []
    if foreign:
        target = sorted(tasks)[0] if tasks else "TASK"
        hints.append(f"  per-task modules of {', '.join(foreign)}: map them with --init_task_map "
                     f"{foreign[0]}={target} (docs/pretraining.md)")
    method = (manifest or {}).get("method")
    if isinstance(method, dict):
        differ = [f"{k}={v}" for k, v in method.items()
                  if k.startswith("use_") and v and settings is not None and not settings.get(k)]
        if differ:
            hints.append(f"  the checkpoint's run used {', '.join(differ)}; this run does not")
    return hints


def group_rows(report: WarmStart) -> list[tuple[str, str, str, str]]:
    """(group, loaded, starts fresh, from --backbone) rows for the report table, backbone first."""
    def cell(counts: dict[str, int], status: str) -> str:
        n = counts.get(status, 0)
        return f"{n} ({counts.get(status + '_params', 0):,})" if n else "-"

    order = sorted(report.groups, key=lambda g: (g != BACKBONE_GROUP, g))
    return [(g, cell(report.groups[g], LOADED), cell(report.groups[g], FRESH), cell(report.groups[g], FROM_BACKBONE))
            for g in order]
