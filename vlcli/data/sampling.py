"""Multitask batch schedules: which task each step of an epoch trains on (one batch = one task).

Schedules are plain lists of task names computed from the number of batches of each task's loader,
a seed and the epoch, so every process of a distributed run derives the same sequence without
communicating, and single-process runs need nothing distributed at all.

* ``proportional`` — each task appears ``len(loader_t)`` times, shuffled with ``Random(seed + epoch)``:
  one epoch is exactly one pass over every task, tasks interleaved in proportion to their size. This
  is what the original called ``roundrobin`` (it shuffled with ``Random(epoch)``, ignoring ``--seed``).
* ``roundrobin`` — true alternation in task order (t1, t2, t3, t1, ...); a task that has run out of
  batches drops out and the others go on, so the epoch is still one full pass over every task.
* ``balanced`` — every task appears ``⌊Σ_t len_t / #tasks⌋`` times (or ``n_batches`` times), shuffled
  like ``proportional``; a task whose loader runs out is restarted (re-iterated, so a shuffling loader
  reshuffles) instead of ending the epoch as the original's StopIteration did.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch.utils.data import Sampler

from vlcli.errors import VlcliError

SCHEDULES = ("proportional", "roundrobin", "balanced")


class SamplingError(VlcliError):
    """An unknown schedule or an impossible combination of loaders."""


def schedule(
    kind: str, lengths: Mapping[str, int], *, seed: int, epoch: int, n_batches: int | None = None
) -> list[str]:
    """The task of every step of ``epoch`` for loaders of ``lengths`` batches (task order = mapping order)."""
    if kind not in SCHEDULES:
        raise SamplingError(f"--multitask_sampling {kind!r}: unknown schedule; use one of {', '.join(SCHEDULES)}")
    bad = [t for t, n in lengths.items() if n < 0]
    if bad:
        raise SamplingError(f"task {bad[0]!r} has a negative number of batches")
    tasks = [t for t, n in lengths.items() if n > 0]
    if kind == "roundrobin":
        left = {t: lengths[t] for t in tasks}
        out: list[str] = []
        while any(left.values()):
            for t in tasks:
                if left[t]:
                    out.append(t)
                    left[t] -= 1
        return out
    if kind == "proportional":
        out = [t for t in tasks for _ in range(lengths[t])]
    else:
        if not tasks:
            return []
        per_task = n_batches if n_batches is not None else sum(lengths[t] for t in tasks) // len(tasks)
        out = [t for t in tasks for _ in range(per_task)]
    random.Random(seed + epoch).shuffle(out)
    return out


class MultitaskLoader:
    """Iterate several task loaders as one: yields ``(task, batch)`` following :func:`schedule`.

    Call :meth:`set_epoch` before each epoch; it is forwarded to samplers that have it (e.g.
    ``DistributedSampler``) and changes the shuffle of the schedule.
    """

    def __init__(
        self, loaders: Mapping[str, Iterable[Any]], kind: str = "proportional", *, seed: int = 0,
        n_batches: int | None = None,
    ):
        if kind not in SCHEDULES:
            raise SamplingError(f"--multitask_sampling {kind!r}: unknown schedule; use one of {', '.join(SCHEDULES)}")
        if not loaders:
            raise SamplingError("a multitask run needs at least one task loader; set --tasks")
        self.loaders = dict(loaders)
        self.kind = kind
        self.seed = seed
        self.n_batches = n_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for loader in self.loaders.values():
            for sampler in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
                if hasattr(sampler, "set_epoch"):  # the keyed batch sampler, or the epoch / distributed sampler
                    sampler.set_epoch(epoch)

    def lengths(self) -> dict[str, int]:
        return {t: len(loader) for t, loader in self.loaders.items()}  # type: ignore[arg-type]

    def steps(self) -> list[str]:
        """This epoch's task sequence."""
        return schedule(self.kind, self.lengths(), seed=self.seed, epoch=self.epoch, n_batches=self.n_batches)

    def __len__(self) -> int:
        return len(self.steps())

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        iterators: dict[str, Iterator[Any]] = {}
        for task in self.steps():
            if task not in iterators:
                iterators[task] = iter(self.loaders[task])
            try:
                batch = next(iterators[task])
            except StopIteration:
                # only `balanced` can ask a loader for more than one pass: restart it
                iterators[task] = iter(self.loaders[task])
                try:
                    batch = next(iterators[task])
                except StopIteration:
                    raise SamplingError(f"the {task} loader yields no batches; check its split and topk") from None
            yield task, batch


def counts(steps: Sequence[str]) -> dict[str, int]:
    """How many steps each task gets in ``steps`` (first-appearance order)."""
    out: dict[str, int] = {}
    for t in steps:
        out[t] = out.get(t, 0) + 1
    return out


class KeyedBatch(list):
    """A batch's dataset indices plus ``draw_key``: what seeds the batch's random draws (target choice, masking,
    augmentation), so they do not depend on which DataLoader worker reads it or on how many there are."""

    draw_key: tuple[int, ...]

    def __reduce__(self) -> tuple[Any, ...]:  # pickles into worker processes with its key
        return (_keyed_batch, (list(self), self.draw_key))


def _keyed_batch(indices: list[int], key: tuple[int, ...]) -> KeyedBatch:
    batch = KeyedBatch(indices)
    batch.draw_key = key
    return batch


class KeyedBatchSampler(Sampler[KeyedBatch]):
    """Batches of ``batch_size`` indices of ``sampler`` (the last one may be smaller), each a :class:`KeyedBatch`
    keyed by (seed, epoch, rank, pass, batch number). With it, training workers can persist across epochs: the
    draws follow from the key, not from a worker's random stream forked at the start of the epoch; a pass
    counts re-iterations within an epoch (a ``balanced`` schedule restarting a loader)."""

    def __init__(self, sampler: Sampler[int] | Iterable[int], batch_size: int, *, seed: int, rank: int = 0):
        self.sampler, self.batch_size = sampler, batch_size
        self.seed, self.rank = seed % 2**32, rank
        self.epoch, self._passes = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._passes = epoch, 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[KeyedBatch]:
        run = self._passes
        self._passes += 1
        indices = list(self.sampler)
        for number, start in enumerate(range(0, len(indices), self.batch_size)):
            yield _keyed_batch(indices[start:start + self.batch_size], (self.seed, self.epoch, self.rank, run, number))
