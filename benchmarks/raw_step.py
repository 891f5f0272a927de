"""Training step on raw images (in-model CLIP RN50 + visual adapters) vs the same step on precomputed features.

    .venv/bin/python benchmarks/raw_step.py --batch 4 --steps 3 --image_size 224            # CPU
    python3 benchmarks/raw_step.py --batch 64 --steps 10 --device cuda --bf16               # GPU

Both steps use the same randomly initialised t5-base-sized VL-T5 with bottleneck adapters (the LM frozen,
AdamW on the trainable set). "features" feeds a precomputed (B, 49, 2048) grid; "raw" feeds (B, 3, S, S)
pixels through the frozen open_clip ModifiedResNet-50 with middle-bottleneck visual adapters (the
original's VL-Adapter image setting), so the difference is the cost of running and back-propagating
through the CLIP encoder. Prints s/step, images/s and the ratio raw / features.
"""

from __future__ import annotations

import argparse
import time

import torch

from vlcli.model.build import vl_vocab_size
from vlcli.model.image_encoder import ImageEncoderConfig, build_image_encoder
from vlcli.model.presets import architecture_config, model_class
from vlcli.model.visual import VisualConfig
from vlcli.model.vl import VLModel
from vlcli.peft.adapters import AdapterController, AdapterSpec
from vlcli.peft.slots import adapter_slots, as_peft_linear
from vlcli.peft.visual_adapters import inject_visual_adapters

TEXT, TARGET = 20, 5


def timed(step, steps: int, device: torch.device) -> float:
    step()
    step()  # warm-up: optimiser state, cuDNN autotuning
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def build(raw: bool, image_size: int, device: torch.device) -> VLModel:
    config = architecture_config("t5-base")
    torch.manual_seed(0)
    lm = model_class("t5")(config)
    lm.resize_token_embeddings(vl_vocab_size("t5-base", "t5"), mean_resizing=False)
    n_boxes = min(36, (image_size // 32) ** 2)  # the paper's 6x6 after pooling (smaller test images: all)
    model = VLModel(lm, "t5", VisualConfig(feat_dim=2048, n_boxes=n_boxes, reduction="downsample"))
    spec = AdapterSpec(kind="adapter", tasks=("vqa",), d_model=config.d_model, reduction_factor=8, single=True)
    for slot in adapter_slots(lm, "t5", False):
        as_peft_linear(slot.linear).vl_adapter = AdapterController(spec, model.router, None)
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        if "adapter" in name or name.startswith("visual_embedding."):
            p.requires_grad_(True)
    if raw:
        model.visual_encoder = build_image_encoder(ImageEncoderConfig("RN50", image_size, random_init=True))
        inject_visual_adapters(model.visual_encoder.tower, "middle-bottleneck", 2, False)
    return model.to(device).train()


def measure(model: VLModel, vis: torch.Tensor, ids, mask, labels, args) -> tuple[float, float | None]:
    """Seconds per optimiser step and peak GPU memory (GiB) of ``model`` on one batch."""
    device = vis.device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(ids, mask, vis, None, labels=labels, task="vqa").loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, args.steps, device)
    return seconds, (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the GPU default of vlcli)")
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    b = args.batch
    ids = torch.randint(3, 30000, (b, TEXT), generator=g).to(device)
    mask = torch.ones_like(ids)
    labels = torch.randint(3, 30000, (b, TARGET), generator=g).to(device)
    grid = (args.image_size // 32) ** 2
    inputs = {
        "features": torch.randn(b, grid, 2048, generator=g).to(device),
        "raw": torch.randn(b, 3, args.image_size, args.image_size, generator=g).to(device),
    }
    results = {kind: measure(build(kind == "raw", args.image_size, device), inputs[kind], ids, mask, labels, args)
               for kind in ("features", "raw")}
    print(f"t5-base + adapters, batch {b}, image {args.image_size}px ({grid} tokens -> {min(36, grid)}), "
          f"{'bf16' if args.bf16 else 'fp32'}, {device}")
    print(f"{'':10}{'s/step':>10}{'images/s':>12}{'peak GiB':>10}")
    for kind, (t, mem) in results.items():
        print(f"{kind:10}{t:10.4f}{b / t:12.1f}{(f'{mem:.2f}' if mem is not None else '-'):>10}")
    print(f"ratio raw / features: {results['raw'][0] / results['features'][0]:.2f}")


if __name__ == "__main__":
    main()
