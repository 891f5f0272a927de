"""CLIP feature-extraction throughput: random-initialised RN50 at 224 px over generated JPEGs.

Writes N generated 640x480 JPEGs to a temporary folder, runs the same code path as
`vlcli extract-features --feature_type RN50 --random_init` (per-image h5 output, float16) and prints
images/s of the load + forward + write loop (the model build is timed separately). Random weights
cost the same as CLIP's, so the figure holds for real extraction on the same machine.

    .venv/bin/python benchmarks/extract.py [--images 64] [--batch N] [--workers 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlcli.features.clip import ClipExtraction, ClipGridEncoder, Weights, build_tower, extract_clip
from vlcli.features.images import list_images


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    for i in range(n):
        # cheap variation: roll the base image so every file decodes to different pixels
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(folder / f"img_{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on the CPU, 32 on a GPU (as the CLI)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--feature_type", default="RN50")
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        make_images(root / "images", args.images)
        t0 = time.perf_counter()
        tower, _ = build_tower(args.feature_type, Weights("random", seed=0))
        encoder = ClipGridEncoder(tower, args.image_size)
        build_s = time.perf_counter() - t0
        job = ClipExtraction(
            feature_type=args.feature_type,
            images=list_images(root / "images"),
            out=root / "out",
            weights=Weights("random", seed=0),
            image_size=args.image_size,
            batch_size=args.batch,
            num_workers=args.workers,
            device=args.device,
            precision=args.precision,
        )
        result = extract_clip(job, encoder=encoder)
        assert result.written == args.images and not result.failed
        print(
            f"{args.feature_type} random-init, {args.image_size} px, {args.images} images, batch {args.batch or 'auto'}, "
            f"workers {args.workers}, {result.device} {result.precision}, torch threads {torch.get_num_threads()}: "
            f"{result.images_per_s:.1f} images/s (loop {result.loop_seconds:.2f} s; model build {build_s:.2f} s)"
        )


if __name__ == "__main__":
    main()
