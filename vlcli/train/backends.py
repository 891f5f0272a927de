"""Training backends the engine's named parts call: DeepSpeed (``--deepspeed``).

The default (no backend object) is vlcli's own loop: DDP under a distributed launch, torch optimisers, its gradient
scaler. :class:`DeepSpeedBackend` hands the model, optimiser and schedule to ``deepspeed.initialize``; DeepSpeed then does
the loss scaling for accumulation, the clipping, the optimiser and schedule steps, and keeps its own engine state
(``LAST.deepspeed/`` beside ``LAST``, written to a temporary folder then renamed) for ``--resume``. Checkpoints are saved in
vlcli's format from the full parameters (gathered from the ZeRO-3 shards while rank 0 writes them).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vlcli.config import deepspeed as dsc
from vlcli.errors import VlcliError

ENGINE_STATE_SUFFIX = ".deepspeed"
TAG = "engine"


class DeepSpeedBackend:
    """One DeepSpeed engine for a training run."""

    def __init__(self, settings: Any, ctx: Any):
        value = settings.get("deepspeed")
        if importlib.util.find_spec("deepspeed") is None:
            raise VlcliError(dsc.missing_message(value))
        try:
            raw = dsc.load_config(value)
        except dsc.DeepSpeedConfigError as e:
            raise VlcliError(f"--deepspeed {value}: {e}") from None
        if ctx.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        fp16 = bool(settings.get("fp16")) and ctx.device.type == "cuda"
        batch = min(p.batch_size for p in settings.derived.per_task.values())
        self.config = dsc.resolve(raw, fp16=fp16, batch_size=batch,
                                  accumulation=settings.get("gradient_accumulation_steps"),
                                  clip=settings.get("clip_grad_norm"))
        self.stage = int((self.config.get("zero_optimization") or {}).get("stage", 0))
        self.settings, self.ctx, self.engine = settings, ctx, None

    def wrap(self, module: torch.nn.Module, optimizers: list, schedulers: list) -> Any:
        """``deepspeed.initialize`` on the model, its optimiser and schedule; returns the engine (the model to call)."""
        if len(optimizers) != 1:
            raise VlcliError("--deepspeed takes one optimiser: drop --use_separate_optimizer_for_visual")
        import deepspeed

        # DeepSpeed's ZeRO collectives call torch names that torch 2.14 deprecates: one warning per call, not ours to fix
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)",
                                category=FutureWarning)
        if not torch.distributed.is_initialized():  # one process: DeepSpeed still wants a process group
            for key, val in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                             ("MASTER_PORT", str(_free_port()))):
                os.environ.setdefault(key, val)
            deepspeed.init_distributed(dist_backend="gloo" if self.ctx.device.type == "cpu" else "nccl",
                                       auto_mpi_discovery=False)
        self.engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizers[0], lr_scheduler=schedulers[0],
                                                    config=self.config, dist_init_required=False)
        return self.engine

    def backward(self, loss: torch.Tensor, window_end: bool) -> None:
        """DeepSpeed divides by the accumulation steps (as vlcli's own loop does) and reduces at the window end."""
        self.engine.set_gradient_accumulation_boundary(window_end)
        self.engine.backward(loss)

    def step(self) -> None:
        """Clipping, optimiser and schedule step, zeroed gradients: by DeepSpeed, at the window end."""
        self.engine.step()

    @contextmanager
    def full_params(self, module: torch.nn.Module, modify: bool = False):
        """Every rank enters: the ZeRO-3 shards gathered into full parameters (to save, predict, or ``modify``: load
        weights, rank 0's values partitioned again on exit)."""
        if self.stage < 3:
            yield
            return
        import deepspeed

        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None):
            yield

    def save_state(self, out: Path, name: str) -> None:
        """DeepSpeed's engine state (optimiser shards, schedule, scaler) as ``NAME.deepspeed/``: a temporary folder renamed
        into place by rank 0 once every rank has written its part (the folder must be shared by all ranks)."""
        final = out / f"{name}{ENGINE_STATE_SUFFIX}"
        tmp = out / f".{name}{ENGINE_STATE_SUFFIX}.tmp"
        if self.ctx.is_main and tmp.exists():
            shutil.rmtree(tmp)
        _barrier(self.ctx)
        self.engine.save_checkpoint(str(tmp), tag=TAG, save_latest=False)
        _barrier(self.ctx)
        if self.ctx.is_main:
            old = out / f".{name}{ENGINE_STATE_SUFFIX}.old"
            if final.exists():
                if old.exists():
                    shutil.rmtree(old)
                final.rename(old)
            tmp.rename(final)
            if old.exists():
                shutil.rmtree(old)
        _barrier(self.ctx)

    def load_state(self, out: Path, name: str) -> None:
        folder = out / f"{name}{ENGINE_STATE_SUFFIX}"
        if not folder.is_dir():
            raise VlcliError(f"--resume: {folder} does not exist; the run was not trained with --deepspeed, "
                             "or its DeepSpeed state is lost (drop --resume to start again)")
        path, _ = self.engine.load_checkpoint(str(folder), tag=TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise VlcliError(f"--resume: {folder} holds no DeepSpeed engine state; drop --resume to start again")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _barrier(ctx: Any) -> None:
    if ctx.distributed and torch.distributed.is_initialized():
        torch.distributed.barrier()


def for_settings(settings: Any, ctx: Any) -> DeepSpeedBackend | None:
    return DeepSpeedBackend(settings, ctx) if settings.get("deepspeed") else None
