"""The training / evaluation engine behind ``vlcli finetune``, ``vlcli eval --load`` and ``vlcli submit``.

One process by default (CPU or one GPU); under ``torchrun`` / ``accelerate launch`` the model is
wrapped in DDP, training batches are sharded by ``DistributedSampler`` and evaluation predictions are
gathered from every rank and de-duplicated by id. Rank 0 alone reports and writes.

A run directory (``--output``) holds ``config.json`` (the resolved settings), ``metrics.jsonl`` (one
JSON object per epoch / evaluation), ``BEST`` and ``LAST`` checkpoints (``.safetensors`` + ``.json``),
``LAST.state.pt`` (optimiser, schedule, scaler, RNG states and the position in the epoch, for
``--resume``), predictions, submissions and ``curves.png``. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Hashable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from vlcli import api
from vlcli.atomic import atomic_write, write_json
from vlcli.config.settings import FIELDS
from vlcli.data.sampling import MultitaskLoader
from vlcli.errors import VlcliError
from vlcli.tasks import get_task
from vlcli.tasks.base import TaskDataset, seed_worker
from vlcli.train import dist
from vlcli.train.optim import build_optimizers, linear_schedule, total_steps
from vlcli.train.scoring import score, selection_score

STATE_SUFFIX = ".state.pt"
ROLES = ("train", "valid", "test", "submit")


class TrainingError(VlcliError):
    """The run cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class Interrupted(VlcliError):
    """Ctrl-C during training: LAST and its resume state were saved first."""

    exit_code = 130


# ------------------------------------------------------------------------------------ reporting


class Reporter(Protocol):
    """How the engine reports progress (the CLI renders it with rich; library use can stay silent)."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, done: int, loss: float, lr: float, samples_per_s: float) -> None: ...
    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None: ...
    def evaluating(self, task: str, split: str, batches: int) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, done: int, loss: float, lr: float, samples_per_s: float) -> None:
        pass

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        pass

    def evaluating(self, task: str, split: str, batches: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass


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


def splits_for(settings: Any, task: str) -> dict[str, str]:
    """Split of each role: the task's defaults (spec), or ``--train/--valid/--test`` in single-task runs."""
    splits = dict(get_task(task).splits)
    if not settings.derived.multitask:
        for role in ("train", "valid", "test"):
            value = settings.get(role)
            if value is not None and value != FIELDS[role].default:
                splits[role] = value
    return splits


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------- engine


@dataclass
class History:
    """Per-epoch records (also appended to metrics.jsonl) and the best score so far."""

    records: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None


class Engine:
    """Builds tokenizer, model, data and optimiser from validated settings; trains, evaluates, predicts."""

    def __init__(self, settings: Any, reporter: Reporter | None = None, ctx: dist.Context | None = None,
                 epoch_checkpoints: bool = False, command: str = "finetune"):
        """``epoch_checkpoints``: also keep ``EpochNN`` (NN = epoch + 1, two digits) after every epoch
        (pretraining, as the original); ``command`` names the CLI command in messages."""
        self.settings = settings
        self.epoch_checkpoints = epoch_checkpoints
        self.command = command
        if settings.get("deepspeed"):  # before anything expensive is built
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise VlcliError(f"--deepspeed {settings.get('deepspeed')}: the deepspeed package is not installed; "
                                 "`pip install deepspeed`, or drop --deepspeed")
            from vlcli.errors import NotImplementedYetError

            raise NotImplementedYetError("not yet: --deepspeed (through accelerate) is not part of this version; "
                                         "drop it to train with DDP")
        self.reporter = reporter or SilentReporter()
        self.ctx = ctx or dist.setup()
        self.out = Path(settings.get("output"))
        self.tasks: list[str] = list(settings.derived.tasks)
        self.tokenizer = api.build_tokenizer(settings)
        seed_everything(settings.get("seed"))
        self.model = api.build_model(settings, device=self.ctx.device, tokenizer=self.tokenizer)
        self.module = self.model  # the VLModel (self.model may become a DDP wrapper)
        self.history = History()
        self._datasets: dict[tuple[str, str, bool], TaskDataset] = {}
        cuda = self.ctx.device.type == "cuda"
        self.amp_dtype = torch.float16 if settings.get("fp16") else (
            torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None)
        if settings.get("fp16") and not cuda:
            self.reporter.message("--fp16 ignored on CPU: training in float32")
            self.amp_dtype = None
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

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
        workers = self.settings.get("num_workers")
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=False,
                          collate_fn=dataset.collate, num_workers=workers,
                          worker_init_fn=seed_worker if workers else None, pin_memory=self.ctx.device.type == "cuda")

    def train_loader(self) -> MultitaskLoader:
        loaders = {}
        for task in self.tasks:
            split = splits_for(self.settings, task)["train"]
            ds = self.dataset(task, split, train=True)
            loaders[task] = self.loader(ds, self.settings.derived.per_task[task].batch_size, train=True)
        return MultitaskLoader(loaders, self.settings.get("multitask_sampling"), seed=self.settings.get("seed"))

    # ------------------------------------------------------------------------------- checkpoints

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        """``NAME.safetensors`` + manifest (+ ``NAME.state.pt`` for resuming); rank 0 only."""
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        api.save_checkpoint(self.module, self.out / name, full=self.settings.get("save_full"), settings=self.settings)
        if state is not None:
            atomic_torch_save(self.out / f"{name}{STATE_SUFFIX}", state)

    def load_weights(self, path: str | Path) -> None:
        report = api.load_checkpoint(self.module, path, allow_partial=self.settings.get("allow_partial_load"),
                                     settings=self.settings)
        skipped = len(report.missing) + len(report.unexpected) + len(report.skipped_shape)
        if skipped:
            self.reporter.message(
                f"partial load of {path}: {len(report.loaded)} tensors loaded, {len(report.missing)} missing, "
                f"{len(report.unexpected)} unexpected, {len(report.skipped_shape)} with another shape")

    # ---------------------------------------------------------------------------------- training

    def _wrap(self) -> None:
        if self.ctx.distributed and self.model is self.module:
            from torch.nn.parallel import DistributedDataParallel

            per_task = len(self.tasks) > 1  # per-task modules idle on other tasks' batches
            self.model = DistributedDataParallel(
                self.module, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                find_unused_parameters=per_task)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def fit(self, resume: bool = False, stop_after_steps: int | None = None) -> History:
        """Train for ``epochs`` with validation, BEST / LAST checkpoints and metrics.jsonl.

        ``resume``: continue from ``LAST`` + ``LAST.state.pt`` in the run directory.
        ``stop_after_steps`` (tests): behave as if Ctrl-C came after that many optimiser steps.
        """
        s = self.settings
        self._wrap()
        train = self.train_loader()
        accumulation = s.get("gradient_accumulation_steps")
        epochs = s.get("epochs")
        steps_total = total_steps(len(train), accumulation, epochs)
        optimizers = build_optimizers(self.module, s)
        schedulers = [linear_schedule(o, steps_total, s.get("warmup_ratio")) for o in optimizers]
        start_epoch, skip_batches, global_step = 0, 0, 0
        saved_rng = None
        if resume:
            state_path = self.out / f"LAST{STATE_SUFFIX}"
            if not state_path.is_file():
                raise TrainingError(f"--resume: {state_path} does not exist; there is no interrupted run to resume")
            state = torch.load(state_path, map_location="cpu", weights_only=False)
            self.load_weights(self.out / "LAST.safetensors")
            for opt, st in zip(optimizers, state["optimizers"], strict=True):
                opt.load_state_dict(st)
            for sch, st in zip(schedulers, state["schedulers"], strict=True):
                sch.load_state_dict(st)
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            start_epoch, skip_batches, global_step = state["epoch"], state["batches_done"], state["global_step"]
            self.history = History(state["history"], state["best"], state["best_epoch"])
            saved_rng = state["rng"]
        elif s.get("dry"):
            record = {"epoch": -1, **self._evaluate_all("valid")}
            self.history.records.append(record)
            self._append_metrics(record)

        clip = s.get("clip_grad_norm")
        params = [p for p in self.module.parameters() if p.requires_grad]
        for epoch in range(start_epoch, epochs):
            train.set_epoch(epoch)
            for task in self.tasks:
                train.loaders[task].dataset.reseed(s.get("seed") * 1000 + epoch)
            self.model.train()
            n_batches = len(train)
            self.reporter.epoch_start(epoch, epochs, n_batches)
            losses: list[float] = []
            seen, t0 = 0, time.perf_counter()
            log_accuracy = bool(s.get("log_train_accuracy"))
            train_correct = train_total = 0
            batches_done = 0  # batches consumed up to the last optimiser step (the resume position)
            interrupted = False
            try:
                for index, (task, batch) in enumerate(train):
                    if index < skip_batches:  # replay the data order (and the datasets' draws) of a resumed epoch
                        continue
                    if saved_rng is not None:
                        set_rng_state(saved_rng)
                        saved_rng = None
                    batch = to_device(batch, self.ctx.device)
                    with self._autocast():
                        out = self.model(**get_task(task).model_inputs(batch))
                    loss = out.loss
                    if dist.broadcast_flag(self.ctx, not bool(torch.isfinite(loss.detach()).all())):
                        raise TrainingError(
                            f"non-finite loss ({loss.item()}) at epoch {epoch} step {index} on task {task}; "
                            "stopped, the last good checkpoint is kept (try a lower --lr or --clip_grad_norm)")
                    if log_accuracy and "labels" in batch:
                        correct, total = get_task(task).train_accuracy(out.logits, batch)
                        train_correct += correct
                        train_total += total
                    scaled = loss / accumulation
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                    losses.append(loss.item())
                    seen += len(batch["ids"])
                    window_end = (index + 1) % accumulation == 0 or index + 1 == n_batches
                    if window_end:
                        for opt in optimizers:
                            if self.scaler:
                                self.scaler.unscale_(opt)
                        if clip and clip > 0:
                            torch.nn.utils.clip_grad_norm_(params, clip)
                        for opt in optimizers:
                            if self.scaler:
                                self.scaler.step(opt)
                            else:
                                opt.step()
                            opt.zero_grad(set_to_none=True)
                        if self.scaler:
                            self.scaler.update()
                        for sch in schedulers:
                            sch.step()
                        global_step += 1
                        batches_done = index + 1
                        elapsed = max(time.perf_counter() - t0, 1e-9)
                        self.reporter.step(index + 1, losses[-1], schedulers[0].get_last_lr()[0], seen / elapsed)
                        if stop_after_steps is not None and global_step >= stop_after_steps:
                            raise KeyboardInterrupt
            except KeyboardInterrupt:
                interrupted = True
            if dist.broadcast_flag(self.ctx, interrupted):
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                self.save("LAST", self._state(optimizers, schedulers, epoch, batches_done, global_step))
                raise Interrupted(
                    f"interrupted at epoch {epoch}, batch {batches_done}; saved {self.out / 'LAST.safetensors'} "
                    f"with its resume state: continue with `vlcli {self.command} ... --output {self.out} --resume`")
            skip_batches = 0
            record: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None,
                                      "lr": schedulers[0].get_last_lr()[0], "samples_per_s": seen / max(
                                          time.perf_counter() - t0, 1e-9)}
            if log_accuracy and train_total:
                record["train_accuracy"] = round(100.0 * train_correct / train_total, 2)
            record.update(self._evaluate_all("valid"))
            score_now = record.get("score")
            if score_now is not None and (self.history.best is None or score_now > self.history.best):
                self.history.best, self.history.best_epoch = score_now, epoch
                self.save("BEST")
            self.history.records.append(record)
            self.save("LAST", self._state(optimizers, schedulers, epoch + 1, 0, global_step))
            if self.epoch_checkpoints:
                self.save(f"Epoch{epoch + 1:02d}")
            self._append_metrics(record)
            self.reporter.epoch_end(epoch, record)
        if self.history.best is None:  # no validation score at all: LAST is the best we have
            self.save("BEST")
        dist.barrier(self.ctx)
        return self.history

    def _state(self, optimizers, schedulers, epoch: int, batches_done: int, global_step: int) -> dict[str, Any]:
        return {
            "optimizers": [o.state_dict() for o in optimizers],
            "schedulers": [s.state_dict() for s in schedulers],
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": epoch,
            "batches_done": batches_done,
            "global_step": global_step,
            "history": self.history.records,
            "best": self.history.best,
            "best_epoch": self.history.best_epoch,
            "rng": rng_state(),
        }

    def _append_metrics(self, record: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")

    # -------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def predict(self, task: str, split: str, role: str | None = None) -> tuple[dict[Hashable, Any], TaskDataset]:
        """Predictions of every example of ``split`` (gathered from all ranks, each id once)."""
        ds = self.dataset(task, split, train=False, role=role)
        batch_size = self.settings.derived.per_task[task].valid_batch_size
        loader = self.loader(ds, batch_size, train=False)
        self.module.eval()
        self.reporter.evaluating(task, split, len(loader))
        pairs: list[tuple[Hashable, Any]] = []
        for batch in loader:
            batch = to_device(batch, self.ctx.device)
            with self._autocast():
                pairs += list(get_task(task).predict(self.module, batch, self.settings, self.tokenizer).items())
        return dist.gather_pairs(self.ctx, pairs), ds

    def evaluate(self, task: str, role: str) -> tuple[dict[str, Any], dict[Hashable, Any], TaskDataset]:
        split = splits_for(self.settings, task)[role]
        predictions, ds = self.predict(task, split, role)
        metrics = score(task, predictions, ds.references, self.settings) if self.ctx.is_main else {}
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

    def submit(self) -> dict[str, tuple[Path, int]]:
        """Leaderboard files of every task's submission split (coverage-checked); rank 0 writes."""
        written: dict[str, tuple[Path, int]] = {}
        for task in self.tasks:
            split = splits_for(self.settings, task)["submit"]
            predictions, ds = self.predict(task, split, "submit")
            if self.ctx.is_main:
                impl = get_task(task)
                path = self.out / f"{task}_{impl.submission_file}"
                written[task] = (path, impl.write_submission(predictions, ds, path))
        return written


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
