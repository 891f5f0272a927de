"""Training backends the engine's named parts call: DeepSpeed (``--deepspeed``) and FSDP2 (``--fsdp``).

:class:`Backend` itself is vlcli's own loop: DDP under a distributed launch, torch optimisers, its gradient scaler. The
engine calls a backend's methods at fixed points (plan, step, save, restore, predict), so each engine's details stay
here.

- :class:`DeepSpeedBackend` hands the model, optimiser and schedule to ``deepspeed.initialize``; DeepSpeed then does the
  loss scaling for accumulation, the clipping, the optimiser and schedule steps, and keeps its own engine state
  (``LAST.deepspeed/`` beside ``LAST``, written to a temporary folder then renamed) for ``--resume``.
- :class:`FSDPBackend` shards each transformer block and the root with FSDP2 ``fully_shard``; vlcli's own loop, optimiser
  and schedule run on the sharded parameters. The optimiser state is saved consolidated in ``LAST.state.pt``.

Either way checkpoints are vlcli's own (adapter-only or full safetensors + manifest) from the full parameters, gathered
from the shards while rank 0 writes them, so ``eval`` / ``submit`` / ``predict`` load them like any run.
"""

from __future__ import annotations

import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vlcli.config import deepspeed as dsc
from vlcli.errors import VlcliError
from vlcli.train import dist

ENGINE_STATE_SUFFIX = ".deepspeed"
TAG = "engine"


class Backend:
    """What the engine asks a backend; the defaults are vlcli's own loop (the methods every backend may keep)."""

    owns_step = False
    """True: the backend does backward, clipping, the optimiser and schedule steps, and keeps their state."""
    shards = False
    """True: the backend distributes the model itself (no DDP wrapper)."""

    def shard(self, module: torch.nn.Module, amp_dtype: torch.dtype | None) -> None:
        """Before the optimiser is built (it must see the sharded parameters)."""

    def wrap(self, module: torch.nn.Module, optimizers: list, schedulers: list) -> tuple[Any, list]:
        """The model to call for training, and the optimisers the engine steps itself."""
        return module, optimizers

    def backward(self, loss: torch.Tensor, window_end: bool) -> None:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    @contextmanager
    def full_params(self, module: torch.nn.Module, modify: bool = False):
        """Every rank enters: full parameters inside (to predict, save, or ``modify``: load weights)."""
        yield

    def full_state(self, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """Every rank calls: the full tensors of ``module.state_dict()`` on rank 0 (None: read the module itself)."""
        return None

    def optimizer_states(self, module: torch.nn.Module, optimizers: list) -> list:
        """Every rank calls: the optimisers' states for LAST.state.pt."""
        return [o.state_dict() for o in optimizers]

    def load_optimizer_states(self, module: torch.nn.Module, optimizers: list, states: list) -> None:
        for opt, state in zip(optimizers, states, strict=True):
            opt.load_state_dict(state)

    def save_state(self, out: Path, name: str) -> None:
        """Every rank calls after ``NAME`` is written: the backend's own resume state beside it."""

    def load_state(self, out: Path, name: str) -> None:
        """``--resume`` of an ``owns_step`` backend: weights, optimiser and schedule from its own state."""
        raise NotImplementedError


class DeepSpeedBackend(Backend):
    """One DeepSpeed engine for a training run."""

    owns_step = True
    shards = True

    def __init__(self, settings: Any, ctx: Any):
        value = settings.get("deepspeed")  # the package is there: Engine's check_deepspeed ran first
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

    def wrap(self, module: torch.nn.Module, optimizers: list, schedulers: list) -> tuple[Any, list]:
        """``deepspeed.initialize`` on the model, its optimiser and schedule: the engine is the model to call, and
        DeepSpeed steps the optimiser."""
        if len(optimizers) != 1:
            raise VlcliError("--deepspeed takes one optimiser: drop --use_separate_optimizer_for_visual")
        import deepspeed

        # DeepSpeed's ZeRO collectives call torch names that torch 2.14 deprecates: one warning per call, not ours to fix
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)",
                                category=FutureWarning)
        if not torch.distributed.is_initialized():  # one process: DeepSpeed still wants a process group
            for key, val in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                             ("MASTER_PORT", str(dist.free_port()))):
                os.environ.setdefault(key, val)
            deepspeed.init_distributed(dist_backend="gloo" if self.ctx.device.type == "cpu" else "nccl",
                                       auto_mpi_discovery=False)
        self.engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizers[0], lr_scheduler=schedulers[0],
                                                    config=self.config, dist_init_required=False)
        return self.engine, []

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
        dist.barrier(self.ctx)
        self.engine.save_checkpoint(str(tmp), tag=TAG, save_latest=False)
        dist.barrier(self.ctx)
        if self.ctx.is_main:
            old = out / f".{name}{ENGINE_STATE_SUFFIX}.old"
            if final.exists():
                if old.exists():
                    shutil.rmtree(old)
                final.rename(old)
            tmp.rename(final)
            if old.exists():
                shutil.rmtree(old)
        dist.barrier(self.ctx)

    def load_state(self, out: Path, name: str) -> None:
        folder = out / f"{name}{ENGINE_STATE_SUFFIX}"
        if not folder.is_dir():
            raise VlcliError(f"--resume: {folder} does not exist; the run was not trained with --deepspeed, "
                             "or its DeepSpeed state is lost (drop --resume to start again)")
        path, _ = self.engine.load_checkpoint(str(folder), tag=TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise VlcliError(f"--resume: {folder} holds no DeepSpeed engine state; drop --resume to start again")


class FSDPBackend(Backend):
    """FSDP2: ``fully_shard`` on every transformer block (the language model's ``_no_split_modules``) and on the root."""

    shards = True

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def shard(self, module: torch.nn.Module, amp_dtype: torch.dtype | None) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.ctx.device.type, (self.ctx.world_size,))
        # parameters gathered in the training precision, gradients reduced in float32
        policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32 if amp_dtype else None)
        names = set(getattr(module.lm, "_no_split_modules", None) or ())
        blocks = [m for m in module.modules() if type(m).__name__ in names]
        if not blocks:
            raise VlcliError(f"--fsdp: no transformer blocks ({', '.join(sorted(names)) or 'none named'}) found in the "
                             "model; drop --fsdp")
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(module, mesh=mesh, mp_policy=policy)
        module.register_load_state_dict_pre_hook(_shard_full_tensors)
        _root_lazy_init(module)

    @contextmanager
    def full_params(self, module: torch.nn.Module, modify: bool = False):
        """Predicting: every sharded module gathered once and kept whole until the end (generation calls the
        encoder and decoder directly, and a rank's generation length must not drive collectives)."""
        if modify:  # loading: full tensors become this rank's shards in the load_state_dict pre-hook
            yield
            return
        sharded = _fsdp_modules(module)
        for m in sharded:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield
        finally:
            for m in sharded:
                m.reshard()
                m.set_reshard_after_forward(m is not module, recurse=False)

    def full_state(self, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_states(self, module: torch.nn.Module, optimizers: list) -> list:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return [get_optimizer_state_dict(module, opt, options=options) for opt in optimizers]

    def load_optimizer_states(self, module: torch.nn.Module, optimizers: list, states: list) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        for opt, state in zip(optimizers, states, strict=True):  # every rank read the full state: no broadcast
            set_optimizer_state_dict(module, opt, state, options=StateDictOptions(full_state_dict=True))


def _fsdp_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _root_lazy_init(module: torch.nn.Module) -> None:
    """FSDP2 takes the first module to run forward as its root; make it the whole model now (evaluation before any
    training step calls the encoder and decoder directly)."""
    module._get_fsdp_state()._lazy_init()  # torch 2.6-2.14: FSDPModule's state; no public call does this


def _shard_full_tensors(module: torch.nn.Module, state: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: a full tensor for a sharded (DTensor) parameter becomes this rank's shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    current = module.state_dict()
    for key, value in list(state.items()):
        target = current.get(key[len(prefix):]) if key.startswith(prefix) else None
        if isinstance(target, DTensor) and not isinstance(value, DTensor):
            state[key] = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements,
                                           src_data_rank=None)


def for_settings(settings: Any, ctx: Any) -> Backend:
    """The run's backend: DeepSpeed, FSDP2 (under a distributed launch), or vlcli's own loop (DDP)."""
    if settings.get("deepspeed"):
        return DeepSpeedBackend(settings, ctx)
    if settings.get("fsdp") and ctx.distributed:
        return FSDPBackend(ctx)
    return Backend()
