"""What the launcher asked for, checked against what vlcli will do (``accelerate launch``, ``mpirun``).

vlcli reads its processes from torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and its training
options from its own flags. ``accelerate launch`` passes its options as environment variables that
``Accelerator`` reads and vlcli does not build one, so :func:`check_launcher` turns each such variable into
what vlcli does with it: honoured when it matches vlcli's own behaviour, a warning where vlcli's behaviour
is the sensible one, and a one-line error (:class:`~vlcli.errors.VlcliError`, exit 2) naming the variable
and the vlcli flag to use where it would change training. It also refuses a launch that asked for several
processes but started one (``accelerate launch --cpu --num_processes 2``: accelerate's simple launcher
runs the script once and sets no ``WORLD_SIZE``). ``docs/distributed.md`` has the table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from vlcli.errors import VlcliError

# How accelerate 1.x spells its settings in the launched process's environment (accelerate/utils/launch.py).
PRECISIONS = ("no", "fp16", "bf16", "fp8")
MPI_SIZES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")

Parent = tuple[Sequence[str] | None, Mapping[str, str] | None]


def _plain(flag: str = "", n: int | str = "N") -> str:
    """The launches vlcli reads: torchrun, or accelerate's torchrun-based launcher."""
    tail = f" {flag}" if flag else ""
    return (f"`torchrun --nproc_per_node {n} -m vlcli ...{tail}` or "
            f"`accelerate launch --multi_gpu --num_processes {n} -m vlcli ...{tail}`")


def _true(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _flag(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_launcher(settings: Any, env: Mapping[str, str] | None = None, *, cuda: bool | None = None,
                   bf16: bool | None = None, parent: Parent | None = None,
                   own_args: Sequence[str] | None = None) -> list[str]:
    """Warnings for launcher settings vlcli does not apply but that do not change the run; raises
    :class:`VlcliError` (one line, every refused setting) for those that would.

    ``env`` defaults to ``os.environ``; ``cuda`` / ``bf16`` (the device this process will train on) to what
    torch reports; ``parent`` (the launcher's command line and environment) to ``/proc/<ppid>``;
    ``own_args`` to ``sys.argv[1:]``.
    """
    env = os.environ if env is None else env
    refused: list[str] = []
    notes: list[str] = []
    if _launched_by_accelerate(env):
        if cuda is None or bf16 is None:
            import torch

            cuda = torch.cuda.is_available() if cuda is None else cuda
            bf16 = (cuda and torch.cuda.is_bf16_supported()) if bf16 is None else bf16
        _check_backends(settings, env, refused)
        _check_precision(settings, env, bool(cuda), bool(bf16), refused, notes)
        _check_compile(settings, env, refused, notes)
        _check_optimiser(settings, env, refused)
        _check_device(env, bool(cuda), refused)
        for name, what in (("ACCELERATE_DEBUG_MODE", "accelerate's debug checks of collective shapes (--debug)"),
                           ("ACCELERATE_CPU_AFFINITY", "accelerate's CPU affinity (--enable_cpu_affinity)")):
            if _true(env.get(name)):
                notes.append(f"{name}={env[name]}: {what} is not applied by vlcli")
    problem, note = _one_process_problem(env, parent, own_args)
    if problem:
        refused.insert(0, problem)
    if note:
        notes.append(note)
    if refused:
        raise VlcliError("; ".join(refused))
    return notes


def _launched_by_accelerate(env: Mapping[str, str]) -> bool:
    return any(k.startswith("ACCELERATE_") or k.startswith("FSDP_") for k in env)


def _check_backends(settings: Any, env: Mapping[str, str], refused: list[str]) -> None:
    if _true(env.get("ACCELERATE_USE_FSDP")):
        refused.append(f"ACCELERATE_USE_FSDP={env['ACCELERATE_USE_FSDP']} (accelerate launch --use_fsdp): vlcli does not "
                       "read accelerate's FSDP settings (FSDP_*); shard with vlcli's own --fsdp (FSDP2) under a plain "
                       f"launch: {_plain('--fsdp')}")
    if _true(env.get("ACCELERATE_USE_DEEPSPEED")):
        config = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        value = config or {"2": "zero2", "3": "zero3"}.get(str(stage), "zero2|zero3|CONFIG.json")
        note = "" if config or str(stage) in ("2", "3") or stage is None else \
            f" (ZeRO stage {stage}: a DeepSpeed JSON config with zero_optimization.stage {stage})"
        refused.append(f"ACCELERATE_USE_DEEPSPEED={env['ACCELERATE_USE_DEEPSPEED']} (accelerate launch --use_deepspeed): "
                       "vlcli does not read accelerate's DeepSpeed settings (ACCELERATE_DEEPSPEED_*); pass "
                       f"--deepspeed {value}{note} to vlcli under a plain launch: {_plain(f'--deepspeed {value}')}")
    if _true(env.get("ACCELERATE_USE_MEGATRON_LM")):
        refused.append("ACCELERATE_USE_MEGATRON_LM=true (accelerate launch --use_megatron_lm): vlcli has no Megatron-LM "
                       "tensor / pipeline parallelism; use --fsdp or --deepspeed under a plain launch")
    if _true(env.get("ACCELERATE_USE_PARALLELISM_CONFIG")):
        refused.append("ACCELERATE_USE_PARALLELISM_CONFIG=true (accelerate launch --use_parallelism_config): vlcli has no "
                       "tensor / context / sequence parallelism; --fsdp shards over all processes")


def _check_precision(settings: Any, env: Mapping[str, str], cuda: bool, bf16: bool, refused: list[str],
                     notes: list[str]) -> None:
    """ACCELERATE_MIXED_PRECISION against vlcli's own choice: float32 on CPU, --fp16 on a GPU, else bfloat16
    autocast on a GPU that supports it (float32 on one that does not); under --deepspeed, --fp16 and the
    DeepSpeed config decide."""
    name = "ACCELERATE_MIXED_PRECISION"
    raw = env.get(name)
    if raw is None:
        return
    value = raw.strip().lower()
    fp16, deepspeed = bool(settings.get("fp16")), bool(settings.get("deepspeed"))
    said = f"{name}={raw} (accelerate launch --mixed_precision {value})"
    if value not in PRECISIONS:
        refused.append(f"{name}={raw}: not a precision accelerate knows ({', '.join(PRECISIONS)})")
    elif value == "fp8":
        refused.append(f"{said}: vlcli has no fp8 training; launch with --mixed_precision bf16 (its GPU default) "
                       "or fp16 together with vlcli's --fp16")
    elif not cuda and value in ("fp16", "bf16"):
        refused.append(f"{said}: this process sees no CUDA GPU and vlcli trains in float32 on a CPU; launch with "
                       "--mixed_precision no")
    elif value == "fp16" and not fp16:
        refused.append(f"{said}: vlcli does not take its precision from accelerate; add --fp16 to the vlcli command "
                       "(float16 with a gradient scaler), or launch with --mixed_precision bf16 (vlcli's GPU default)")
    elif value == "bf16" and fp16:
        refused.append(f"{said} contradicts vlcli's --fp16; drop one of them")
    elif value == "bf16" and deepspeed:
        notes.append(f"{said}: under --deepspeed the precision is --fp16 or the DeepSpeed config's bf16.enabled, "
                     "not accelerate's")
    elif value == "bf16" and not bf16:
        refused.append(f"{said}: this GPU has no bfloat16 support; add --fp16 (and launch with --mixed_precision "
                       "fp16) or launch with --mixed_precision no (float32)")
    elif value == "no" and fp16:
        notes.append(f"{said} is not applied: vlcli's --fp16 trains in float16")
    elif value == "no" and bf16 and not deepspeed:
        notes.append(f"{said} (accelerate's default) is not applied: vlcli trains with bfloat16 autocast on this GPU "
                     "(it has no float32 GPU mode); launch with --mixed_precision bf16 to say so")


def _check_compile(settings: Any, env: Mapping[str, str], refused: list[str], notes: list[str]) -> None:
    backend = str(env.get("ACCELERATE_DYNAMO_BACKEND", "NO")).strip().upper()
    if backend in ("NO", ""):
        return
    said = f"ACCELERATE_DYNAMO_BACKEND={env['ACCELERATE_DYNAMO_BACKEND']} (accelerate launch --dynamo_backend " \
           f"{backend.lower()})"
    if backend != "INDUCTOR":
        refused.append(f"{said}: vlcli compiles only through its own --compile (torch.compile, inductor); launch with "
                       "--dynamo_backend no and add --compile")
        return
    if not settings.get("compile"):
        refused.append(f"{said}: vlcli does not compile through accelerate; add --compile to the vlcli command "
                       "(torch.compile, inductor)")
        return
    defaults = {"ACCELERATE_DYNAMO_MODE": "default", "ACCELERATE_DYNAMO_USE_FULLGRAPH": "false",
                "ACCELERATE_DYNAMO_USE_DYNAMIC": None, "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION": "false"}
    changed = [f"{k}={env[k]}" for k, default in defaults.items()
               if k in env and str(env[k]).strip().lower() not in (default, "none")]
    if changed:
        notes.append(f"{', '.join(changed)}: not applied; vlcli's --compile calls torch.compile with its defaults")


def _check_optimiser(settings: Any, env: Mapping[str, str], refused: list[str]) -> None:
    """accelerate's --gradient_accumulation_steps / --gradient_clipping (DeepSpeed launches) against vlcli's."""
    for name, flag in (("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "gradient_accumulation_steps"),
                       ("ACCELERATE_GRADIENT_CLIPPING", "clip_grad_norm")):
        if name not in env:
            continue
        ours = settings.get(flag)
        try:
            same = float(env[name]) == float(ours)
        except (TypeError, ValueError):
            same = False
        if not same:
            refused.append(f"{name}={env[name]}: vlcli does not read it (it trains with --{flag} {_flag(ours)}); "
                           f"pass --{flag} {env[name]} to vlcli instead")


def _check_device(env: Mapping[str, str], cuda: bool, refused: list[str]) -> None:
    if cuda and _true(env.get("ACCELERATE_USE_CPU")):
        refused.append(f"ACCELERATE_USE_CPU={env['ACCELERATE_USE_CPU']} (accelerate launch --cpu): vlcli trains on the GPU "
                       "whenever one is visible; to train on the CPU hide the GPUs (CUDA_VISIBLE_DEVICES= accelerate "
                       "launch ...)")


# ------------------------------------------------------------------------------------------ one process


def _one_process_problem(env: Mapping[str, str], parent: Parent | None,
                         own_args: Sequence[str] | None) -> tuple[str | None, str | None]:
    """``(error, note)`` when the launcher asked for several processes but this one runs alone (no WORLD_SIZE > 1).

    accelerate's simple launcher (``--cpu``, or no GPU and no ``--multi_gpu``) runs the script once whatever
    ``--num_processes`` says; it passes no process count, but sets ``ACCELERATE_USE_CPU`` (it alone does) and
    ``MASTER_ADDR`` / ``MASTER_PORT`` (only when asked for several processes or machines). The count itself is
    on its command line (``/proc/<ppid>/cmdline``); a ``MASTER_PORT`` its own environment lacks was set by it.
    """
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world > 1:
        return None, None
    for name in MPI_SIZES:
        try:
            size = int(env.get(name, "1"))
        except ValueError:
            continue
        if size > 1:
            return (f"{name}={size}: started as one of {size} MPI processes, but vlcli takes its processes from "
                    "torchrun's RANK / WORLD_SIZE, so each would train alone; launch one torchrun per node "
                    "(torchrun --nnodes M --nproc_per_node G ..., docs/distributed.md)"), None
    if "ACCELERATE_USE_CPU" not in env:  # set by accelerate's simple (one-process) launcher only
        return None, None
    cmdline, parent_env = _read_parent() if parent is None else parent
    asked = _asked_for(cmdline, sys.argv[1:] if own_args is None else own_args)
    processes, machines = asked if asked else (None, None)
    if (machines or 1) > 1:
        fix = ("launch one `torchrun --nnodes M --node_rank R --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint "
               "HOST:PORT -m vlcli ...` per node, or `accelerate launch --multi_gpu --num_machines M ...` "
               "(docs/distributed.md)")
    else:
        fix = f"launch the processes with {_plain(n=processes if (processes or 1) > 1 else 'N')} (gloo on CPUs)"
    started = "started ONE process (its --cpu / single-device launcher sets no WORLD_SIZE), so this run would train alone"
    if (processes or 1) > 1 or (machines or 1) > 1:
        what = " ".join(f"--num_{k} {v}" for k, v in (("processes", processes), ("machines", machines)) if (v or 1) > 1)
        return f"accelerate launch {what} {started}; {fix}", None
    if "MASTER_ADDR" in env and "MASTER_PORT" in env and (parent_env is None or "MASTER_PORT" not in parent_env):
        why = ("accelerate launch set MASTER_ADDR / MASTER_PORT, which it does only when asked for several processes or "
               "machines (--num_processes, --num_machines or its config file), but")
        if parent_env is not None:
            return f"{why} {started}; {fix}", None
        return None, (f"{why.replace(', but', '')}; this process runs alone (no WORLD_SIZE; the launcher's environment "
                      f"is unreadable, so it may come from yours); if several were meant, {fix}")
    return None, None


def _read_parent() -> Parent:
    """The launcher's command line and environment from ``/proc/<ppid>`` (None where unreadable)."""
    ppid = os.getppid()
    cmdline: list[str] | None = None
    environ: dict[str, str] | None = None
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as fh:
            cmdline = [x.decode(errors="replace") for x in fh.read().split(b"\0") if x]
    except OSError:
        pass
    try:
        with open(f"/proc/{ppid}/environ", "rb") as fh:
            pairs = (x.decode(errors="replace").partition("=") for x in fh.read().split(b"\0") if x)
            environ = {k: v for k, _, v in pairs}
    except OSError:
        pass
    return cmdline, environ


def _asked_for(cmdline: Sequence[str] | None, own_args: Sequence[str]) -> tuple[int | None, int | None] | None:
    """``(--num_processes, --num_machines)`` from an ``accelerate launch`` command line (None: not accelerate's;
    a value None: not on the command line)."""
    if not cmdline:
        return None
    tokens = list(cmdline)
    start = None
    for i, token in enumerate(tokens):
        base = os.path.basename(token)
        if base in ("accelerate-launch", "accelerate.commands.launch"):
            start = i + 1
        elif token == "launch" and i > 0 and os.path.basename(tokens[i - 1]).startswith("accelerate"):
            start = i + 1
        if start is not None:
            break
    if start is None:
        return None
    args = tokens[start:]
    own = list(own_args)
    if own and len(args) > len(own) and args[-len(own):] == own:
        args = args[:-len(own) - 1]  # the script's own arguments and the script / module name
    elif "-m" in args or "--module" in args:
        args = args[:min(args.index(m) for m in ("-m", "--module") if m in args)]
    values: dict[str, int | None] = {"num_processes": None, "num_machines": None}
    for i, token in enumerate(args):
        name, eq, value = token.lstrip("-").replace("-", "_").partition("=")
        if not token.startswith("--") or name not in values:
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        try:
            values[name] = int(value)
        except ValueError:
            pass
    return values["num_processes"], values["num_machines"]
