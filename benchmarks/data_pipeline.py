"""Feature-loading throughput: per-image CLIP h5 files vs one consolidated h5, through a DataLoader.

Builds a temporary CLIP-style store (default 512 images of 49x2048 float16) in both layouts, reads it
with a torch DataLoader (batch 64, num_workers 0 and 2, a collate that stacks features and boxes into
tensors) and prints samples/s, next to the samples/s of a forward+backward of a small linear layer and of
a full vlcli training step (t5-small architecture, random weights, AdamW) on batches of the same size:
the ratios say whether data loading would starve training.

    .venv/bin/python benchmarks/data_pipeline.py [--images 512] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlcli.data.features import CLIPStore, ConsolidatedStore, FeatureStore, write_consolidated

TOKENS, DIM, BATCH = 49, 2048, 64


class StoreDataset(Dataset):
    """Image ids -> (features, boxes) from a feature store."""

    def __init__(self, store: FeatureStore, ids: list[str]):
        self.store = store
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store.get(self.ids[index])


def collate(batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.from_numpy(np.stack([f for f, _ in batch]))
    boxes = torch.from_numpy(np.stack([b for _, b in batch]))
    return feats, boxes


def build(root: Path, n: int) -> tuple[Path, Path, list[str]]:
    rng = np.random.default_rng(0)
    ids = [f"COCO_val2014_{i:012d}" for i in range(n)]
    per_image = root / "data_clip_RN101_att"
    per_image.mkdir()
    items = {}
    for image_id in ids:
        feats = rng.standard_normal((TOKENS, DIM), dtype=np.float32).astype(np.float16)
        items[image_id] = feats
        with h5py.File(per_image / f"{image_id}.h5", "w") as f:
            f.create_group(image_id)["features"] = feats
    consolidated = root / "clip_RN101.h5"
    write_consolidated(consolidated, items)
    return per_image, consolidated, ids


def loader_rate(store: FeatureStore, ids: list[str], workers: int, epochs: int) -> float:
    loader = DataLoader(
        StoreDataset(store, ids),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up epoch: worker start-up and page cache
        pass
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for feats, _boxes in loader:
            seen += feats.shape[0]
    return seen / (time.perf_counter() - start)


def model_rate(steps: int = 10, hidden: int = 768) -> float:
    """Samples/s of forward+backward of Linear(2048 -> hidden) on (64, 49, 2048) batches."""
    layer = torch.nn.Linear(DIM, hidden)
    x = torch.randn(BATCH, TOKENS, DIM)
    layer(x).square().mean().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        layer.zero_grad()
        layer(x).square().mean().backward()
    return steps * BATCH / (time.perf_counter() - start)


def train_step_rate(backbone: str = "t5-small", steps: int = 3) -> float:
    """Samples/s of a vlcli training step (VLModel forward + loss + backward + AdamW) on batches of BATCH
    examples with TOKENS visual tokens of DIM features and 20 text tokens; random weights, no download."""
    from vlcli.model.build import vl_vocab_size
    from vlcli.model.presets import PRESETS, architecture_config, model_class
    from vlcli.model.visual import VisualConfig
    from vlcli.model.vl import VLModel

    family = PRESETS[backbone].family
    lm = model_class(family)(architecture_config(backbone))
    lm.resize_token_embeddings(vl_vocab_size(backbone, family), mean_resizing=False)
    model = VLModel(lm, family, VisualConfig(feat_dim=DIM)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(3, 30000, (BATCH, 20))
    labels = torch.randint(3, 30000, (BATCH, 5))
    feats, boxes = torch.randn(BATCH, TOKENS, DIM), torch.zeros(BATCH, TOKENS, 4)

    def step() -> None:
        model(ids, None, feats, boxes, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        per_image, consolidated, ids = build(Path(tmp), args.images)
        size = sum(p.stat().st_size for p in per_image.iterdir()) / 2**20
        print(f"built {args.images} images of {TOKENS}x{DIM} float16 ({size:.0f} MiB per layout) in {time.perf_counter() - t0:.1f}s")
        rows = []
        for name, store in (("per-image h5 (CLIPStore)", CLIPStore(per_image)), ("consolidated h5", ConsolidatedStore(consolidated))):
            for workers in (0, 2):
                rows.append((name, workers, loader_rate(store, ids, workers, args.epochs)))
        base = model_rate()
        step = train_step_rate()
    print(f"\n{'layout':<26} {'workers':>7} {'samples/s':>10} {'x linear f+b':>13} {'x train step':>13}")
    for name, workers, rate in rows:
        print(f"{name:<26} {workers:>7} {rate:>10.0f} {rate / base:>13.2f} {rate / step:>13.2f}")
    print(f"{'linear 2048->768 fwd+bwd':<26} {'-':>7} {base:>10.0f} {1:>13.2f} {base / step:>13.2f}")
    print(f"{'vlcli train step t5-small':<26} {'-':>7} {step:>10.1f} {step / base:>13.2f} {1:>13.2f}")


if __name__ == "__main__":
    main()
