"""Interruption and resume state of a training run: RNG states, the position in the run, stop signals.

A resumed run must continue bit-identically (on CPU) from any interruption point. Two RNG states make
that possible: the one just before the epoch's data iterator was created (creating it draws the
workers' base seed from torch's global RNG) and the one at the save point. Resuming restores the first
before the iterator exists, replays the epoch's consumed batches, then restores the second.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

SIGTERM_EXIT = 143  # 128 + SIGTERM, what SLURM / Kubernetes expect from a pre-empted job
SIGINT_EXIT = 130


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class EpochTally:
    """What one epoch has accumulated so far (kept in the resume state so a resumed epoch reports all of it)."""

    loss_sum: float = 0.0
    loss_count: int = 0
    seen: int = 0
    seconds: float = 0.0
    correct: int = 0
    total: int = 0

    def mean_loss(self) -> float | None:
        return self.loss_sum / self.loss_count if self.loss_count else None


@dataclass
class Position:
    """Where a run stands: the epoch, the batches of it consumed up to the last optimiser step, the step count."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    tally: EpochTally = field(default_factory=EpochTally)
    elapsed_s: float = 0.0  # training wall time of the whole run, over every resume
    rng_epoch_start: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tally"] = asdict(self.tally)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Position:
        tally = EpochTally(**data.get("tally", {}))
        return cls(data["epoch"], data["batches_done"], data["global_step"], tally, data.get("elapsed_s", 0.0),
                   data.get("rng_epoch_start"))


class StopRequest:
    """Ctrl-C / SIGTERM during training: remembered, acted on at the next optimiser-step boundary.

    The first signal asks for a clean stop (LAST and its resume state are saved); a second Ctrl-C
    aborts at once without saving.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return SIGTERM_EXIT if self.signum == signal.SIGTERM else SIGINT_EXIT

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, nothing saved
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Route SIGINT and SIGTERM here while training (main thread only; elsewhere signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


KILL_AT_ENV = "VLCLI_KILL_AT"
"""Crash testing: the process SIGKILLs itself at the named point (``step:N``, ``best:E``, ``last:E``)."""
INTERRUPT_AT_ENV = "VLCLI_INTERRUPT_AT"
"""Interruption testing: the process sends itself SIGINT (a Ctrl-C) at the named point."""


def kill_point(name: str) -> None:
    """Die here (as a power cut or the OOM killer would) or get a Ctrl-C, when the environment names this point."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(INTERRUPT_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGINT)
