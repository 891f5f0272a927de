"""Experiment tracking (``--report_to none|tensorboard|wandb``, several allowed): trackers are reporters.

Each tracker receives what the engine reports (per optimiser step: loss, learning rate, samples/s; per
epoch: the whole record) plus, at the start, the resolved configuration and the trainable-parameter
table. Rank 0 alone tracks. TensorBoard and W&B are optional extras (``pip install -e ".[tracking]"``).
"""

from __future__ import annotations

import importlib.util
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from vlcli.errors import VlcliError

TRACKERS = ("none", "tensorboard", "wandb")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def parse_report_to(value: str) -> list[str]:
    """``tensorboard,wandb`` -> the trackers; one-line error for unknown or missing packages."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise VlcliError(f"--report_to {value}: unknown tracker {unknown[0]!r}; use none, tensorboard, wandb "
                         "(comma-separated for several)")
    names = [n for n in dict.fromkeys(names) if n != "none"]
    for name in names:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise VlcliError(f"--report_to {name}: the {_PACKAGES[name]} package is not installed; "
                             f"`pip install -e \".[tracking]\"` (or `pip install {_PACKAGES[name]}`)")
    return names


def run_name(settings: Any) -> str:
    """``run_name``, or automatic: the output folder's name, the start time and ``comment``."""
    if settings.get("run_name"):
        return str(settings.get("run_name"))
    parts = [Path(settings.get("output")).name, datetime.now().strftime("%Y%m%d-%H%M%S"), settings.get("comment")]
    return "-".join(p for p in parts if p)


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"valid/vqa": {"accuracy": 40}}`` -> ``{"valid/vqa/accuracy": 40.0}`` (numbers only)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name not in ("epoch", "time"):
            out[name] = float(value)
    return out


def parameter_markdown(counts: dict[str, Any]) -> str:
    lines = ["| group | total | trainable |", "|---|---:|---:|"]
    for group, row in (counts.get("groups") or {}).items():
        lines.append(f"| {group} | {row.get('total', 0):,} | {row.get('trainable', 0):,} |")
    lines.append(f"| **all** | {counts['total']:,} | {counts['trainable']:,} ({counts['percent']:.2f} %) |")
    return "\n".join(lines)


class Tracker:
    """A reporter that forwards to an experiment tracker; subclasses implement ``_scalars`` and ``_text``."""

    def start(self, config: dict[str, Any], counts: dict[str, Any]) -> None: ...
    def _scalars(self, values: dict[str, float], step: int) -> None: ...
    def finish(self) -> None: ...

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, done: int, loss: float, lr: float, samples_per_s: float, global_step: int = 0) -> None:
        self._scalars({"train/loss": loss, "train/lr": lr, "train/samples_per_s": samples_per_s}, global_step)

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self._scalars({f"epoch/{k}": v for k, v in _flat(record).items()}, epoch + 1)

    def evaluating(self, task: str, split: str, batches: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files under ``OUTPUT/tensorboard/<run name>``."""

    def __init__(self, out: Path, name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard" / name))

    def start(self, config: dict[str, Any], counts: dict[str, Any]) -> None:
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)
        self.writer.add_text("parameters", parameter_markdown(counts), 0)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run in ``OUTPUT/wandb`` (``WANDB_MODE=offline`` works without a network)."""

    def __init__(self, out: Path, name: str):
        import wandb

        self.wandb = wandb
        self.out, self.name, self.run = out, name, None

    def start(self, config: dict[str, Any], counts: dict[str, Any]) -> None:
        self.run = self.wandb.init(project="vlcli", name=self.name, dir=str(self.out), config=config,
                                   reinit="finish_previous")
        self.run.summary.update({"parameters/total": counts["total"], "parameters/trainable": counts["trainable"],
                                 "parameters/percent": counts["percent"]})

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def build_trackers(settings: Any, out: Path) -> list[Tracker]:
    """The trackers ``--report_to`` asks for (call on rank 0 only)."""
    name = run_name(settings)
    kinds = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    return [kinds[k](out, name) for k in parse_report_to(settings.get("report_to"))]


class FanOut:
    """One reporter that forwards every call to several (the console and the trackers)."""

    def __init__(self, *reporters: Any):
        self.reporters = reporters

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            for r in self.reporters:
                getattr(r, name)(*args, **kwargs)

        return call
