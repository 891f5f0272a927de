"""The training / evaluation engine behind ``vlcli finetune``, ``vlcli pretrain``, ``eval --load`` and ``submit``.

One process by default (CPU or one GPU); under ``torchrun`` / ``accelerate launch`` the model is
wrapped in DDP, training batches are sharded by ``DistributedSampler`` and evaluation predictions are
gathered from every rank and de-duplicated by id. Rank 0 alone reports and writes.

:meth:`Engine.fit` reads top to bottom: plan the run, restore or start the position, then per epoch
:meth:`Engine._train_epoch` (steps; a stop request ends it at an optimiser-step boundary) and
:meth:`Engine._end_epoch` (validation, BEST / LAST, metrics). The run directory it writes into holds
``metrics.jsonl`` (every record of the run with a timestamp), ``BEST`` / ``LAST`` checkpoints
(``.safetensors`` + ``.json``) and ``LAST.state.pt`` (optimisers, schedules, scaler, RNG states and the
position, for ``--resume``); every file is written atomically. The directory contract itself (refusing
to touch existing runs, the lock, ``config.json``) is :mod:`vlcli.train.rundir`.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import time
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from vlcli import api
from vlcli.atomic import atomic_write, write_json
from vlcli.config.settings import FIELDS
from vlcli.data.sampling import KeyedBatchSampler, MultitaskLoader
from vlcli.errors import VlcliError
from vlcli.tasks import get_task
from vlcli.tasks.base import TaskDataset, seed_worker
from vlcli.train import backends, dist
from vlcli.train.optim import build_optimizers, linear_schedule, total_steps
from vlcli.train.report import Reporter, SilentReporter, plot_curves
from vlcli.train.rundir import now_iso
from vlcli.train.scoring import score, selection_score
from vlcli.train.state import (
    EpochTally,
    Position,
    StopRequest,
    kill_point,
    rng_state,
    seed_everything,
    set_rng_state,
)

STATE_SUFFIX = ".state.pt"
ROLES = ("train", "valid", "test", "submit")
TIMING_KEYS = ("time", "elapsed_s", "epoch_s", "samples_per_s")
"""Keys of a metrics.jsonl record that measure time (they differ between otherwise identical runs)."""

__all__ = ["Engine", "History", "Interrupted", "Reporter", "SilentReporter", "TrainingError", "plot_curves",
           "splits_for", "tests_enabled"]


class TrainingError(VlcliError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class Interrupted(VlcliError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143) during training: LAST and its resume state were saved first."""

    exit_code = 130

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


# ------------------------------------------------------------------------------------- helpers


class EpochSampler(Sampler[int]):
    """A random permutation per epoch, fixed by ``(seed, epoch)`` (so a resumed run sees the same order)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def atomic_json(path: Path, data: Any) -> None:
    write_json(path, data, indent=1)


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def splits_for(settings: Any, task: str) -> dict[str, str]:
    """Split of each role: the task's defaults (spec), or ``--train/--valid/--test`` in single-task runs."""
    splits = dict(get_task(task).splits)
    if not settings.derived.multitask:
        for role in ("train", "valid", "test"):
            value = settings.get(role)
            if value is not None and value != FIELDS[role].default:
                splits[role] = value
    return splits


def tests_enabled(settings: Any) -> bool:
    """False when the user said ``--test none`` (the default, none, means the task's test split)."""
    explicit = settings.derived.explicit if settings.derived is not None else []
    return not ("test" in explicit and settings.get("test") is None)


def resolve_workers(value: int | str, ctx: dist.Context) -> int:
    """``--num_workers``: a count, or ``auto`` = the CPU cores per process less one for the training process,
    at most 8, and 0 on CPU-only runs (the loader would take cores from the model's own computation)."""
    if value != "auto":
        return int(value)
    if ctx.device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, torch.cuda.device_count() if ctx.distributed else 1) - 1))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device`` (asynchronously from pinned memory). Float16 features stay float16: the model's
    visual embedding casts them (``VLModel.embed_visual``), so the cast is device work inside the step."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def prefetched(batches: Iterable[Any], device: torch.device, tagged: bool = False) -> Iterator[Any]:
    """Batches on ``device``; on CUDA the next batch's copy runs on a side stream while this one trains.

    ``tagged``: the items are ``(task, batch)`` pairs (the multitask loader's).
    """
    def move(item: Any) -> Any:
        return (item[0], to_device(item[1], device)) if tagged else to_device(item, device)

    if device.type != "cuda":
        for item in batches:
            yield move(item)
        return
    stream, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    pending = None
    for item in batches:
        with torch.cuda.stream(stream):
            moved = move(item)
            for value in (moved[1] if tagged else moved).values():
                if isinstance(value, torch.Tensor):
                    value.record_stream(main)  # used on the main stream: keep the allocator from reusing it early
        if pending is not None:
            yield pending
        main.wait_stream(stream)
        pending = moved
    if pending is not None:
        yield pending


@contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keep the objects that exist when training starts (the model, tokenizer, datasets: millions with
    transformers loaded) out of Python's full garbage collections while it runs: each such collection walked
    them all, ~200 ms at a time, at moments set by the loop's allocations (up to 5 % of an epoch of 750 ms steps
    on the CPU). They are given back to the collector afterwards, unless the caller had frozen objects itself.
    Workers forked meanwhile also share those objects' pages instead of copying them when the collector runs."""
    ours = gc.get_freeze_count() == 0
    gc.freeze()
    try:
        yield
    finally:
        if ours:
            gc.unfreeze()


# ---------------------------------------------------------------------------------------- engine


@dataclass
class History:
    """Per-epoch records (also in metrics.jsonl) and the best score so far."""

    records: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None


@dataclass
class TrainingPlan:
    """What a run trains with: the data, the optimisers and their schedules."""

    loader: MultitaskLoader
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    epochs: int
    accumulation: int


class DeviceTally:
    """The epoch's loss sum and first non-finite batch, kept on the device between host syncs.

    The sum is float64 and accumulated in batch order, so a resumed epoch (which starts from the saved
    float) adds exactly what the uninterrupted one did.
    """

    def __init__(self, loss_sum: torch.Tensor, first_bad: torch.Tensor):
        self._sum, self._bad = loss_sum, first_bad

    @classmethod
    def start(cls, tally: EpochTally, device: torch.device) -> DeviceTally:
        return cls(torch.tensor(tally.loss_sum, dtype=torch.float64, device=device),
                   torch.tensor(-1, dtype=torch.int64, device=device))

    def add(self, loss: torch.Tensor, index: int) -> None:
        self._sum += loss.to(torch.float64)
        self._bad = torch.where((self._bad < 0) & ~torch.isfinite(loss), torch.full_like(self._bad, index), self._bad)

    def loss_sum(self) -> float:
        return float(self._sum.item())

    def first_bad_index(self) -> int | None:
        value = int(self._bad.item())
        return value if value >= 0 else None


class Engine:
    """Builds tokenizer, data, model and optimiser from validated settings; trains, evaluates, predicts."""

    def __init__(self, settings: Any, reporter: Reporter | None = None, ctx: dist.Context | None = None,
                 epoch_checkpoints: bool = False, command: str = "finetune", roles: tuple[str, ...] = ()):
        """``epoch_checkpoints``: also keep ``EpochNN`` (NN = epoch + 1, two digits) after every epoch
        (pretraining, as the original); ``command`` names the CLI command in messages; ``roles``: the
        datasets built (and checked non-empty) before the model, e.g. ``("train", "valid")``."""
        self.settings = settings
        self.epoch_checkpoints = epoch_checkpoints
        self.command = command
        check_deepspeed(settings)
        self.ctx = ctx or dist.setup()
        self.reporter: Reporter = (reporter or SilentReporter()) if self.ctx.is_main else SilentReporter()
        self.out = Path(settings.get("output"))
        self.tasks: list[str] = list(settings.derived.tasks)
        self.tokenizer = api.build_tokenizer(settings)
        self._datasets: dict[tuple[str, str, bool, str | None], TaskDataset] = {}
        for task in self.tasks:  # data first: a missing or empty split fails before any model is built
            for role in roles:
                self.dataset(task, splits_for(settings, task)[role], train=role == "train", role=role)
        seed_everything(settings.get("seed"))
        self.model = api.build_model(settings, device=self.ctx.device, tokenizer=self.tokenizer)
        self.module = self.model  # the VLModel (self.model may become a DDP wrapper)
        self.history = History()
        self.position = Position()
        self._resume_rng: dict[str, Any] | None = None
        self._eval_loaders: dict[tuple[str, str, str | None], tuple[DataLoader, TaskDataset]] = {}
        self._compiled = False
        self.score_options: dict[str, dict[str, Any]] = {}  # per task, e.g. {"vqa": {"mode": "official"}}
        self._t0 = time.perf_counter()
        self.num_workers = resolve_workers(settings.get("num_workers"), self.ctx)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.backend = backends.for_settings(settings, self.ctx)  # DeepSpeed, FSDP2, or vlcli's own loop (DDP)
        if self.backend.owns_step:
            self.scaler = None  # precision, scaling and clipping are DeepSpeed's
        if settings.get("fsdp") and not self.ctx.distributed:
            self.reporter.message("--fsdp has nothing to shard in one process: training without it "
                                  "(launch with torchrun --nproc_per_node N)")

    def _amp_dtype(self) -> torch.dtype | None:
        cuda = self.ctx.device.type == "cuda"
        if self.settings.get("fp16") and not cuda:
            self.reporter.message("--fp16 ignored on CPU: training in float32")
            return None
        if self.settings.get("fp16"):
            return torch.float16
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    # ------------------------------------------------------------------------------------ data

    def dataset(self, task: str, split: str, train: bool, role: str | None = None) -> TaskDataset:
        """``split`` of ``task`` in a role (train / valid / test / submit: which topk option applies)."""
        role = role or ("train" if train else None)
        key = (task, split, train, role)
        if key not in self._datasets:
            impl = get_task(task)
            store = impl.open_store(self.settings, split, train=train)
            self._datasets[key] = impl.build_dataset(self.settings, split, self.tokenizer, store, train=train,
                                                     role=role)
        return self._datasets[key]

    def loader(self, dataset: TaskDataset, batch_size: int, train: bool) -> DataLoader:
        seed = self.settings.get("seed")
        if self.ctx.distributed:
            from torch.utils.data.distributed import DistributedSampler

            sampler: Sampler[int] = DistributedSampler(dataset, num_replicas=self.ctx.world_size,
                                                       rank=self.ctx.rank, shuffle=train, seed=seed)
        elif train:
            sampler = EpochSampler(len(dataset), seed)
        else:
            sampler = None  # type: ignore[assignment]
        workers = self.num_workers
        common = {"collate_fn": dataset.collate, "num_workers": workers, "pin_memory": self.ctx.device.type == "cuda"}
        if workers:  # workers persist across epochs and validations, each preparing --prefetch batches ahead
            common.update(persistent_workers=True, prefetch_factor=self.settings.get("prefetch"), worker_init_fn=seed_worker)
        if train and workers:
            # each batch's draws are seeded by its key (seed, epoch, rank, number), not by the worker reading it:
            # the same for any number of workers, and a persistent worker needs no reseed at each epoch
            batches = KeyedBatchSampler(sampler, batch_size, seed=seed, rank=self.ctx.rank)
            return DataLoader(dataset, batch_sampler=batches, **common)
        # without workers, training draws follow the dataset's stream, reseeded each epoch (as the original)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False, **common)

    def eval_loader(self, task: str, split: str, role: str | None) -> tuple[DataLoader, TaskDataset]:
        """The evaluation loader of a split, made once (its workers persist across validations)."""
        key = (task, split, role)
        if key not in self._eval_loaders:
            ds = self.dataset(task, split, train=False, role=role)
            batch_size = self.settings.derived.per_task[task].valid_batch_size
            self._eval_loaders[key] = (self.loader(ds, batch_size, train=False), ds)
        return self._eval_loaders[key]

    def train_loader(self) -> MultitaskLoader:
        loaders = {}
        for task in self.tasks:
            split = splits_for(self.settings, task)["train"]
            ds = self.dataset(task, split, train=True)
            loaders[task] = self.loader(ds, self.settings.derived.per_task[task].batch_size, train=True)
        return MultitaskLoader(loaders, self.settings.get("multitask_sampling"), seed=self.settings.get("seed"))

    # ------------------------------------------------------------------------------- checkpoints

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        """``NAME.safetensors`` + manifest (+ ``NAME.state.pt`` for resuming); rank 0 writes.

        Under a sharding backend every rank calls it (the full tensors are gathered from the shards)."""
        values = self.backend.full_state(self.module)
        with self.backend.full_params(self.module):
            self._save_files(name, state, values)
        if state is not None:
            self.backend.save_state(self.out, name)

    def _save_files(self, name: str, state: dict[str, Any] | None, values: dict[str, torch.Tensor] | None = None) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        api.save_checkpoint(self.module, self.out / name, full=self.settings.get("save_full"), settings=self.settings,
                            values=values)
        if state is not None:
            atomic_torch_save(self.out / f"{name}{STATE_SUFFIX}", state)

    def load_weights(self, path: str | Path) -> None:
        """Weights from a vlcli checkpoint (every rank; under ZeRO-3 into the gathered parameters)."""
        with self.backend.full_params(self.module, modify=True):
            self._load_weights(path)

    def _load_weights(self, path: str | Path) -> None:
        report = api.load_checkpoint(self.module, path, allow_partial=self.settings.get("allow_partial_load"),
                                     settings=self.settings)
        skipped = len(report.missing) + len(report.unexpected) + len(report.skipped_shape)
        if skipped:
            self.reporter.message(
                f"partial load of {path}: {len(report.loaded)} tensors loaded, {len(report.missing)} missing, "
                f"{len(report.unexpected)} unexpected, {len(report.skipped_shape)} with another shape")

    def _state(self, plan: TrainingPlan) -> dict[str, Any]:
        """Everything ``--resume`` needs besides the LAST weights."""
        return {
            "optimizers": self.backend.optimizer_states(self.module, plan.optimizers),
            "schedulers": [s.state_dict() for s in plan.schedulers],
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "position": {**self.position.to_dict(),  # every rank's share of the epoch (rank 0 resumes with all of it)
                         "tally": dataclasses.asdict(self._reduce(self.position.tally))},
            "history": self.history.records,
            "best": self.history.best,
            "best_epoch": self.history.best_epoch,
            "rng": rng_state(),
            "draws": self._draws(),
        }

    def _draws(self) -> str:
        """Where training draws come from: the dataset's stream (no workers) or each batch's key (workers)."""
        return "keyed" if self.num_workers else "stream"

    def _restore(self, plan: TrainingPlan) -> None:
        """Weights, optimisers, schedules, scaler, position and RNG from ``LAST`` of the run directory.

        The epoch-start RNG state is restored now, before the epoch's data iterator draws from it; the
        save point's state after the epoch's consumed batches have been replayed (see :mod:`state`).
        """
        state_path = self.out / f"LAST{STATE_SUFFIX}"
        if not state_path.is_file():
            raise TrainingError(f"--resume: {state_path} does not exist; there is no interrupted run to resume")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if self.backend.owns_step:
            self.backend.load_state(self.out, "LAST")  # weights, optimiser, schedule: DeepSpeed's own state
        else:
            self.load_weights(self.out / "LAST.safetensors")
            self.backend.load_optimizer_states(self.module, plan.optimizers, state["optimizers"])
        for sch, st in zip(plan.schedulers, state["schedulers"], strict=True):
            sch.load_state_dict(st)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.position = Position.from_dict(state["position"])
        if not self.ctx.is_main:  # the saved tally already sums every rank's part
            self.position.tally = EpochTally(seconds=self.position.tally.seconds)
        self.history = History(state["history"], state["best"], state["best_epoch"])
        if state.get("draws", self._draws()) != self._draws():
            self.reporter.message(
                f"--num_workers {self.num_workers}: the run was interrupted with "
                f"{'workers' if state.get('draws') == 'keyed' else 'no workers'}, and training draws (VQA / GQA targets, "
                "masking, augmentation) come from one stream without workers but from per-batch keys with them; the "
                "run goes on, but not bit-identical to an uninterrupted one (resume with the same choice for that)")
        set_rng_state(self.position.rng_epoch_start or state["rng"])
        self._resume_rng = state["rng"] if self.position.batches_done else None

    # ---------------------------------------------------------------------------------- training

    def _wrap(self) -> None:
        if self.ctx.distributed and self.model is self.module and not self.backend.shards:
            from torch.nn.parallel import DistributedDataParallel

            per_task = len(self.tasks) > 1  # per-task modules idle on other tasks' batches
            self.model = DistributedDataParallel(
                self.module, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                find_unused_parameters=per_task)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def _store_frozen(self) -> None:
        """``--frozen_dtype bf16``: the frozen weights stored in bfloat16 (half their memory) when training in
        bfloat16 anyway; the trained ones stay float32 for the optimiser."""
        if self.settings.get("frozen_dtype") != "bf16":
            return
        if self.amp_dtype != torch.bfloat16:
            self.reporter.message("--frozen_dtype bf16 ignored: it needs bfloat16 training (a GPU with bf16, "
                                  "without --fp16); the frozen weights stay float32")
            return
        for param in self.module.parameters():
            if not param.requires_grad and param.is_floating_point():
                param.data = param.data.to(torch.bfloat16)

    def _plan(self) -> TrainingPlan:
        s = self.settings
        self._store_frozen()
        self._wrap()
        if s.get("compile") and not self._compiled and not self.backend.owns_step:  # DeepSpeed: rule R32 warns
            self.model = torch.compile(self.model)
            self._compiled = True
        loader = self.train_loader()
        accumulation, epochs = s.get("gradient_accumulation_steps"), s.get("epochs")
        self.backend.shard(self.module, self.amp_dtype)  # FSDP2: the optimiser must see the sharded parameters
        optimizers = build_optimizers(self.module, s)
        steps = total_steps(len(loader), accumulation, epochs)
        schedulers = [linear_schedule(o, steps, s.get("warmup_ratio")) for o in optimizers]
        if self.backend.shards:  # DeepSpeed: its engine is the model, and it steps the optimiser
            self.model, optimizers = self.backend.wrap(self.module, optimizers, schedulers)
        return TrainingPlan(loader, optimizers, schedulers, epochs, accumulation)

    def fit(self, resume: bool = False, stop_after_steps: int | None = None) -> History:
        """Train for ``epochs`` with validation, BEST / LAST checkpoints and metrics.jsonl.

        ``resume``: continue from ``LAST`` + ``LAST.state.pt`` in the run directory (bit-identical on CPU).
        ``stop_after_steps`` (tests): behave as if Ctrl-C came after that many optimiser steps.
        """
        plan = self._plan()
        if resume:
            self._restore(plan)
        elif self.settings.get("dry"):
            self._record({"epoch": -1, **self._evaluate_all("valid")})
        stop = StopRequest()
        with stop.installed(), long_lived_objects_frozen():
            for epoch in range(self.position.epoch, plan.epochs):
                self._train_epoch(plan, epoch, stop, stop_after_steps)
                self._end_epoch(plan, epoch)
                self._stop_if_requested(stop, plan, saved=True)
        if self.history.best is None:
            self.save("BEST")  # no validation score at all: LAST is the best we have
        dist.barrier(self.ctx)
        return self.history

    def _train_epoch(self, plan: TrainingPlan, epoch: int, stop: StopRequest, stop_after: int | None) -> None:
        """One epoch of optimiser steps; a stop request ends it at a step boundary with LAST saved.

        The host waits for the device only every ``sync_every`` optimiser steps (and at the epoch end):
        the loss sum and the non-finite check stay on the device in between.
        """
        pos, loader = self.position, plan.loader
        loader.set_epoch(epoch)
        for task in self.tasks:
            loader.loaders[task].dataset.reseed(self.settings.get("seed") * 1000 + epoch)
        self.model.train()
        n_batches, skip = len(loader), pos.batches_done
        self.reporter.epoch_start(epoch, plan.epochs, n_batches)
        if not skip:
            pos.rng_epoch_start, pos.tally = rng_state(), EpochTally()
        tally = copy.deepcopy(pos.tally)
        device = DeviceTally.start(tally, self.ctx.device)
        t0 = time.perf_counter()
        for index, (task, batch) in enumerate(prefetched(loader, self.ctx.device, tagged=True)):
            if index < skip:  # replay the data order (and the datasets' draws) of a resumed epoch
                if index == skip - 1 and self._resume_rng is not None:
                    set_rng_state(self._resume_rng)  # the RNG as it was right after the last saved step
                    self._resume_rng = None
                continue
            window_end = (index + 1) % plan.accumulation == 0 or index + 1 == n_batches
            self._step(plan, index, task, batch, window_end, tally, device)
            if not window_end:
                continue
            pos.global_step += 1
            pos.batches_done = index + 1
            kill_point(f"step:{pos.global_step}")
            if stop_after is not None and pos.global_step >= stop_after:
                stop.request()
            due = pos.global_step % self.settings.get("sync_every") == 0 or index + 1 == n_batches
            if due or (stop.requested and not self.ctx.distributed):
                tally.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self._sync(plan, epoch, tally, device, stop)

    def _sync(self, plan: TrainingPlan, epoch: int, tally: EpochTally, device: DeviceTally, stop: StopRequest) -> None:
        """Wait for the device: non-finite losses stop the run, the tally becomes the resume point, progress
        is reported, and a stop request (on any rank) saves LAST and ends the run."""
        bad, stopping = dist.any_flags(self.ctx, [device.first_bad_index() is not None, stop.requested])
        if bad:
            where = device.first_bad_index()
            raise TrainingError(
                f"non-finite loss at epoch {epoch}" + (f" batch {where}" if where is not None else " (another rank)")
                + f" (checked every {self.settings.get('sync_every')} steps, --sync_every); stopped, the last good "
                "checkpoint is kept (try a lower --lr or --clip_grad_norm)")
        tally.loss_sum = device.loss_sum()
        self.position.tally = copy.deepcopy(tally)  # what a resume from here continues with
        pos = self.position
        self.reporter.step(pos.batches_done, tally.loss_sum / max(tally.loss_count, 1),
                           plan.schedulers[0].get_last_lr()[0], tally.seen / max(tally.seconds, 1e-9),
                           global_step=pos.global_step)
        if stopping:
            if not stop.requested:  # asked on another rank
                stop.request()
            self._stop_if_requested(stop, plan, saved=False)

    def _step(self, plan: TrainingPlan, index: int, task: str, batch: dict[str, Any], window_end: bool,
              tally: EpochTally, device: DeviceTally) -> None:
        """Forward and backward of one batch (on the device); at the end of an accumulation window, the optimiser step."""
        sync = window_end or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        with (nullcontext() if sync else self.model.no_sync()):
            with self._autocast():
                out = self._forward(task, batch)
            loss = out.loss
            device.add(loss.detach(), index)
            if self.settings.get("log_train_accuracy") and "labels" in batch:
                correct, total = get_task(task).train_accuracy(out.logits, batch)
                tally.correct += correct
                tally.total += total
            if self.backend.owns_step:
                self.backend.backward(loss, window_end)
            else:
                scaled = loss / plan.accumulation
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        tally.loss_count += 1
        tally.seen += len(batch["ids"])
        if window_end:
            self._optimizer_step(plan)

    def _forward(self, task: str, batch: dict[str, Any]) -> Any:
        """The model's forward (loss inside, so DDP hooks run); a compiled model that fails falls back to eager."""
        inputs = get_task(task).model_inputs(batch)
        if not self._compiled:
            return self.model(**inputs)
        try:
            return self.model(**inputs)
        except VlcliError:
            raise
        except Exception as exc:  # torch.compile cannot handle this model / platform: warn once, go on eagerly
            self.reporter.message(f"--compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                                  "training without torch.compile")
            self.model = self.model._orig_mod  # type: ignore[attr-defined]
            self._compiled = False
            return self.model(**inputs)

    def _optimizer_step(self, plan: TrainingPlan) -> None:
        if self.backend.owns_step:
            self.backend.step()
            return
        clip = self.settings.get("clip_grad_norm")
        if self.scaler:
            for opt in plan.optimizers:
                self.scaler.unscale_(opt)
        if clip and clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], clip)
        for opt in plan.optimizers:
            self.scaler.step(opt) if self.scaler else opt.step()
            opt.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.update()
        for sch in plan.schedulers:
            sch.step()

    def _stop_if_requested(self, stop: StopRequest, plan: TrainingPlan, saved: bool) -> None:
        """Ctrl-C / SIGTERM on any rank: save LAST with its resume state (unless just saved), then stop."""
        if not dist.broadcast_flag(self.ctx, stop.requested):
            return
        if not saved:
            for opt in plan.optimizers:
                opt.zero_grad(set_to_none=True)
            self.save("LAST", self._state(plan))
        pos = self.position
        raise Interrupted(
            f"interrupted at epoch {pos.epoch}, batch {pos.batches_done}; saved {self.out / 'LAST.safetensors'} "
            f"with its resume state: continue with `vlcli {self.command} --output {self.out} --resume`",
            exit_code=stop.exit_code)

    def _end_epoch(self, plan: TrainingPlan, epoch: int) -> None:
        """Validation, BEST / LAST (/ EpochNN) checkpoints and the epoch's record."""
        tally = self._reduce(self.position.tally)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": tally.mean_loss(),
                                  "lr": plan.schedulers[0].get_last_lr()[0],
                                  "train_samples": tally.seen, "samples_per_s": tally.seen / max(tally.seconds, 1e-9),
                                  "epoch_s": tally.seconds}
        if self.settings.get("log_train_accuracy") and tally.total:
            record["train_accuracy"] = round(100.0 * tally.correct / tally.total, 2)
        record.update(self._evaluate_all("valid"))
        score_now = dist.broadcast_object(self.ctx, record.get("score"))  # one BEST decision on every rank
        if score_now is not None and (self.history.best is None or score_now > self.history.best):
            self.history.best, self.history.best_epoch = score_now, epoch
            self.save("BEST")
            kill_point(f"best:{epoch}")
        self.position.elapsed_s += tally.seconds
        self._record(record)
        self.position = Position(epoch + 1, 0, self.position.global_step, EpochTally(), self.position.elapsed_s,
                                 rng_epoch_start=rng_state())
        self.save("LAST", self._state(plan))
        kill_point(f"last:{epoch}")
        if self.epoch_checkpoints:
            self.save(f"Epoch{epoch + 1:02d}")
        self.reporter.epoch_end(epoch, record)

    def _reduce(self, tally: EpochTally) -> EpochTally:
        """The epoch's tally over every rank: losses averaged over all batches, samples summed."""
        if not self.ctx.distributed:
            return tally
        t = torch.tensor([tally.loss_sum, tally.loss_count, tally.seen, tally.correct, tally.total],
                         dtype=torch.float64, device=self.ctx.device)
        torch.distributed.all_reduce(t)
        return EpochTally(float(t[0]), int(t[1]), int(t[2]), tally.seconds, int(t[3]), int(t[4]))

    def _record(self, record: dict[str, Any]) -> None:
        """Add a record to the history (with its time) and rewrite metrics.jsonl to match it (rank 0)."""
        record["time"] = now_iso()
        record["elapsed_s"] = round(self.position.elapsed_s, 3)
        self.history.records.append(record)
        if self.ctx.is_main:
            lines = "".join(json.dumps(r, default=str) + "\n" for r in self.history.records)
            atomic_write(self.out / "metrics.jsonl", lambda tmp: tmp.write_text(lines, encoding="utf-8"))


    # -------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def predict(self, task: str, split: str, role: str | None = None) -> tuple[dict[Hashable, Any], TaskDataset]:
        """Predictions of every example of ``split`` (gathered from all ranks, each id once)."""
        loader, ds = self.eval_loader(task, split, role)
        self.module.eval()
        self.reporter.evaluating(task, split, len(loader))
        pairs: list[tuple[Hashable, Any]] = []
        # ZeRO-3: the full parameters gathered once (a rank's generation length must not drive collectives)
        with self.backend.full_params(self.module):
            for batch in prefetched(loader, self.ctx.device):
                with self._autocast():
                    pairs += list(get_task(task).predict(self.module, batch, self.settings, self.tokenizer).items())
        return dist.gather_pairs(self.ctx, pairs), ds

    def evaluate(self, task: str, role: str) -> tuple[dict[str, Any], dict[Hashable, Any], TaskDataset]:
        split = splits_for(self.settings, task)[role]
        predictions, ds = self.predict(task, split, role)
        options = self.score_options.get(task, {})
        metrics = score(task, predictions, ds.references, self.settings, **options) if self.ctx.is_main else {}
        return metrics, predictions, ds

    def _evaluate_all(self, role: str, write: bool = False) -> dict[str, Any]:
        per_task: dict[str, dict[str, Any]] = {}
        for task in self.tasks:
            metrics, predictions, ds = self.evaluate(task, role)
            per_task[task] = metrics
            if write and self.ctx.is_main:
                split = splits_for(self.settings, task)[role]
                atomic_json(self.out / f"{task}_{split.replace(',', '+')}_predictions.json",
                            [{"id": k, "prediction": v} for k, v in predictions.items()])
        out: dict[str, Any] = {f"{role}/{t}": m for t, m in per_task.items()}
        out["score"] = selection_score(per_task, self.settings.get("best_metric"))
        return out

    def test(self) -> dict[str, Any]:
        """Evaluate the test split of every task with the current weights; predictions + metrics written."""
        result = self._evaluate_all("test", write=True)
        if self.ctx.is_main:
            atomic_json(self.out / "test_metrics.json", result)
        return result

    def submit(self, paths: dict[str, Path] | None = None) -> dict[str, tuple[Path, int]]:
        """Leaderboard files of every task's submission split (coverage-checked); rank 0 writes.

        ``paths``: where each task's file goes (default ``OUTPUT/<task>_<official name>``)."""
        written: dict[str, tuple[Path, int]] = {}
        for task in self.tasks:
            split = splits_for(self.settings, task)["submit"]
            predictions, ds = self.predict(task, split, "submit")
            if self.ctx.is_main:
                impl = get_task(task)
                path = (paths or {}).get(task) or self.out / f"{task}_{impl.submission_file}"
                written[task] = (path, impl.write_submission(predictions, ds, path))
        return written


def check_deepspeed(settings: Any) -> None:
    """--deepspeed without the package is refused before anything expensive is built (its config: rule R32)."""
    if not settings.get("deepspeed"):
        return
    import importlib.util

    from vlcli.config.deepspeed import missing_message

    if importlib.util.find_spec("deepspeed") is None:
        raise VlcliError(missing_message(settings.get("deepspeed")))
