"""Per-rank model-state memory of DDP, ZeRO-2, ZeRO-3 and FSDP2, measured on the live tensors after one training step.

    python benchmarks/distributed_memory.py                       # t5-base, 2 CPU processes, full and LoRA
    python benchmarks/distributed_memory.py --arch facebook/bart-large --engines ddp,zero2 --methods full

For each engine x method it launches ``torchrun --nproc_per_node N`` of this file on a random-initialised backbone of
the preset's real size (no download: architecture from the presets, a locally trained tokenizer padded to the real
vocabulary, see ``benchmarks/e2e.py``), trains one optimiser step through vlcli's Engine (``stop_after_steps=1``) and
sums, on every rank, the bytes of the distinct tensors the run holds between steps:

- ``weights``: the module's parameters as this rank stores them (a DTensor's local shard, a ZeRO-3 partition);
- ``optimiser``: the optimiser's state (AdamW moments) and, for DeepSpeed, its fp32 master partitions.

Gradients are freed at each step's end (``zero_grad(set_to_none=True)``); during the step they add one trained
parameter's worth per rank for DDP, a partition for ZeRO-2/3 and FSDP2. Activations are not counted. Prints one
table row per run (the largest rank) and the ratio to DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENGINES = {"ddp": [], "zero2": ["--deepspeed", "zero2"], "zero3": ["--deepspeed", "zero3"], "fsdp": ["--fsdp"]}
METHODS = {"full": {"unfreeze_language_model": True}, "lora": {"use_lora": True, "use_single_lora": True}}


def _tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages among ``tensors`` (DTensors by their local shard)."""
    import torch
    from torch.distributed.tensor import DTensor

    seen: dict[int, int] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if isinstance(t, DTensor):
            t = t.to_local()
        if t.numel() == 0:
            continue
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


def _state_tensors(optimizer) -> list:
    return [v for state in optimizer.state.values() for v in state.values()]


def measure(engine) -> dict[str, int]:
    """The model state this rank holds: weights and optimiser (see the module docstring)."""
    module = engine.module
    weights = [getattr(p, "ds_tensor", p) for p in module.parameters()]
    optimiser: list = []
    ds = getattr(engine.backend, "engine", None)
    if ds is not None:  # DeepSpeed: the ZeRO optimiser wraps the torch one and keeps fp32 master partitions
        zero = ds.optimizer
        optimiser += _state_tensors(zero.optimizer)
        for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
            optimiser += list(getattr(zero, name, None) or [])
    else:
        for opt in engine.last_plan.optimizers:
            optimiser += _state_tensors(opt)
    return {"weights": _tensor_bytes(weights), "optimiser": _tensor_bytes(optimiser)}


def child(args) -> None:
    """One rank: build the run, train one step, report this rank's model state on stdout (JSON)."""
    from vlcli import api
    from vlcli.train.engine import Engine, Interrupted

    extra = {"deepspeed": args.engine if args.engine.startswith("zero") else None, "fsdp": args.engine == "fsdp",
             **METHODS[args.method]}
    settings = api.load_settings(task="vqa", backbone=args.backbone, data_root=args.data, feature_type="RN50",
                                 batch_size=args.batch, epochs=1, output=args.output, sync_every=1, **extra)
    engine = Engine(settings, roles=("train",))
    plan_of = engine._plan

    def remember():  # the plan (its optimisers) for measuring after the step
        engine.last_plan = plan_of()
        return engine.last_plan

    engine._plan = remember
    try:
        engine.fit(stop_after_steps=1)
    except Interrupted:
        pass
    print("MEMORY " + json.dumps({"rank": engine.ctx.rank, **measure(engine)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="t5-base")
    parser.add_argument("--engines", default="ddp,zero2,zero3,fsdp")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "METHOD"))
    parser.add_argument("--backbone")
    parser.add_argument("--data")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.child:
        args.engine, args.method = args.child
        child(args)
        return

    from benchmarks.e2e import make_backbone, make_data

    with tempfile.TemporaryDirectory(prefix="vlcli-distmem-") as tmp:  # runs write GiB of checkpoints: all removed
        root = Path(tmp)
        backbone = make_backbone(args.arch, root)
        data = make_data(root / "data", n_train=8 * args.nproc * args.batch, n_valid=2, images=8)
        print(f"{args.arch}, {args.nproc} processes, batch {args.batch} per process; MiB per rank (largest rank)")
        print(f"{'engine':8} {'method':6} {'weights':>10} {'optimiser':>10} {'total':>10} {'vs DDP':>7}")
        for method in args.methods.split(","):
            base = None
            for name in args.engines.split(","):
                worst = run_one(args, name, method, backbone, data, root / f"run-{name}-{method}")
                if worst is None:
                    continue
                total = worst["weights"] + worst["optimiser"]
                base = base or (total if name == "ddp" else None)
                ratio = f"{total / base:.2f}" if base else "-"
                mib = 2 ** 20
                print(f"{name:8} {method:6} {worst['weights'] / mib:10.1f} {worst['optimiser'] / mib:10.1f} "
                      f"{total / mib:10.1f} {ratio:>7}", flush=True)


def run_one(args, name: str, method: str, backbone: Path, data: Path, out: Path) -> dict[str, int] | None:
    """One torchrun of :func:`child`; the largest rank's figures (None, with the reason printed, if it failed)."""
    from vlcli.train.dist import free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
           "--master_port", str(free_port()), __file__, "--child", name, method, "--backbone", str(backbone),
           "--data", str(data), "--output", str(out), "--batch", str(args.batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    shutil.rmtree(out, ignore_errors=True)  # its checkpoints are not needed (GiB at full size)
    found = [json.loads(m) for m in re.findall(r"MEMORY (\{[^}]*\})", proc.stdout)]  # ranks' lines may interleave
    if proc.returncode != 0 or not found:
        print(f"{name:8} {method:6} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        return None
    return max(found, key=lambda r: r["weights"] + r["optimiser"])

if __name__ == "__main__":
    main()
