"""How the engine reports progress, and the run's ``curves.png``.

Library code does not print: the engine calls a :class:`Reporter` (the CLI renders it with rich; library
use stays silent). Only rank 0 reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from vlcli.atomic import atomic_write


class Reporter(Protocol):
    """How the engine reports progress."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, done: int, loss: float, lr: float, samples_per_s: float, global_step: int = 0) -> None: ...
    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None: ...
    def evaluating(self, task: str, split: str, batches: int) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    """Reports nothing (library use, and every rank but 0)."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, done: int, loss: float, lr: float, samples_per_s: float, global_step: int = 0) -> None:
        pass

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        pass

    def evaluating(self, task: str, split: str, batches: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass


def plot_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """``curves.png``: train loss, learning rate and the validation metrics per epoch; False if nothing to plot."""
    rows = [r for r in records if isinstance(r.get("epoch"), int) and r["epoch"] >= 0]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r.get("train_loss") or math.nan for r in rows], marker="o")
    axes[0].set_title("train loss")
    axes[1].plot(epochs, [r.get("lr") or math.nan for r in rows], marker="o")
    axes[1].set_title("learning rate (end of epoch)")
    for key in sorted({k for r in rows for k in r if k.startswith("valid/")}):
        metric_values = [r.get(key, {}) for r in rows]
        for name in sorted({m for mv in metric_values for m in mv}):
            axes[2].plot(epochs, [mv.get(name, math.nan) for mv in metric_values], marker="o",
                         label=f"{key[6:]} {name}")
    axes[2].set_title("validation")
    if axes[2].lines:
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return True
