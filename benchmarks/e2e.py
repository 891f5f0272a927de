"""End to end: the real ``Engine.fit`` loop vs the pure model step on the same batches, in one process.

    .venv/bin/python benchmarks/e2e.py --device cpu                                   # tiny model, <= 3 min
    python3 benchmarks/e2e.py --device cuda --arch bart-base --batch 500 --bf16       # one GPU, full size

Builds a temporary VQA data root (the original layout: ``vqa/karpathy_*.json``, per-image CLIP h5 files of
49x2048 float16 under ``COCO/clip_features/data_clip_RN50_att/`` and the same features consolidated in one
h5), a random-init backbone of ``--arch`` (``tiny`` = the tests' size; ``t5-base`` / ``bart-base`` = the
presets) and a tokenizer trained here whose vocabulary is padded to the real size (no download). Prints:

- ``host batch prep``: samples/s of one loader process building training batches (dataset + collate),
  per-image and consolidated stores;
- ``loop/step ratio``: the epoch time of ``Engine.fit`` (default settings) / the time of the pure model step
  (forward, backward, optimiser) on the same batches collated beforehand, timed right before and right after
  that epoch (``--repeats`` epochs after the first; the median is printed); ``data wait`` = the difference
  per step;
- ``vlcli step / bare``: the vlcli step vs a bare transformers + peft LoRA step that projects the same features
  with a trained Linear and feeds ``[text; visual]`` as ``inputs_embeds``;
- ``predict/generate ratio``: ``Engine.predict`` on the validation split / generation alone on the same
  batches collated beforehand;
- peak GPU memory on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlcli import api  # noqa: E402
from vlcli.demo.backbone import train_bart_tokenizer, train_t5_tokenizer  # noqa: E402
from vlcli.model.presets import architecture_config, model_class, tiny_config  # noqa: E402
from vlcli.tasks import get_task  # noqa: E402
from vlcli.train.engine import Engine, to_device  # noqa: E402
from vlcli.train.report import SilentReporter  # noqa: E402

hf_logging.disable_progress_bar()  # transformers' loading bars would interleave with the figures

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["cube", "ball", "cone", "ring"]
REAL_VOCAB = {"t5": 32100, "bart": 50265}
EVAL_REPEATS = 15


def corpus() -> list[str]:
    return [f"what color is the {s}?" for s in SHAPES] + [f"is the {s} {c}?" for s in SHAPES for c in COLORS] + \
        [f"a {c} {s}" for c in COLORS for s in SHAPES] + COLORS + SHAPES + ["yes", "no"]


def make_tokenizer(family: str, path: Path, full: bool) -> None:
    """A tokenizer trained on the benchmark's text; with ``full`` its vocabulary is padded to the real size
    with pieces that never occur (the embedding and LM head then have the real shapes)."""
    if family == "t5":
        if not full:
            train_t5_tokenizer(path, corpus())
            return
        import sentencepiece  # noqa: F401  (the trainer needs it)
        from transformers import T5Tokenizer

        small = train_t5_tokenizer(path / "small", corpus())
        scored = json.loads(small.backend_tokenizer.to_str())["model"]["vocab"]  # [[piece, score], ...]
        vocab = [(piece, float(score)) for piece, score in scored if not piece.startswith("<extra_id_")]
        vocab += [(f"\u2581\u3400{i}", -100.0) for i in range(REAL_VOCAB["t5"] - 100 - len(vocab))]
        vocab += [(f"<extra_id_{k}>", 0.0) for k in reversed(range(100))]
        T5Tokenizer(vocab=vocab, extra_ids=100).save_pretrained(str(path))
        return
    tok = train_bart_tokenizer(path, corpus())
    if full:
        from transformers import BartTokenizer

        vocab = dict(tok.get_vocab())
        mask = vocab.pop("<mask>")
        del mask
        for i in range(REAL_VOCAB["bart"] - 1 - len(vocab)):
            vocab[f"\u3400{i}"] = len(vocab)
        vocab["<mask>"] = len(vocab)
        model = json.loads(tok.backend_tokenizer.to_str())["model"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
        BartTokenizer(vocab=vocab, merges=merges).save_pretrained(str(path))


def make_backbone(arch: str, root: Path) -> Path:
    family = "t5" if "t5" in arch else "bart"
    path = root / f"backbone-{arch}"
    make_tokenizer(family, path, full=arch != "tiny" and not arch.startswith("tiny"))
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
    config = tiny_config(family, vocab) if arch.startswith("tiny") else architecture_config(arch)
    config.vocab_size = vocab
    torch.manual_seed(0)
    model_class(family)(config).save_pretrained(str(path))
    return path


def make_data(root: Path, n_train: int, n_valid: int, images: int) -> Path:
    """VQA questions over ``images`` images with 49x2048 float16 CLIP grids, per-image and consolidated."""
    from vlcli.data.features import write_consolidated

    rng = np.random.default_rng(0)
    folder = root / "COCO/clip_features/data_clip_RN50_att"
    folder.mkdir(parents=True)
    arrays = {}
    for split, set_name, n in (("karpathy_train", "train2014", n_train), ("karpathy_val", "val2014", n_valid)):
        rows = []
        for k in range(n):
            image_id = f"COCO_{set_name}_{k % images:012d}"
            if image_id not in arrays:
                feats = rng.normal(0, 1, (49, 2048)).astype(np.float16)
                with h5py.File(folder / f"{image_id}.h5", "w") as f:
                    f.create_dataset("features", data=feats)
                arrays[image_id] = feats
            color, shape = COLORS[k % len(COLORS)], SHAPES[(k // 3) % len(SHAPES)]
            rows.append({"img_id": image_id, "sent": f"what color is the {shape}?", "question_id": k,
                         "label": {color: 1.0}, "answer_type": "other", "question_type": "what color",
                         "answers": [{"answer": color, "answer_id": j + 1} for j in range(10)]})
        (root / "vqa").mkdir(exist_ok=True)
        (root / "vqa" / f"{split}.json").write_text(json.dumps(rows))
    write_consolidated(root / "COCO/clip_features/data_clip_RN50_att.h5", arrays.items())
    return root


def settings_for(args, backbone: Path, data: Path, out: Path, **extra):
    values = dict(task="vqa", backbone=str(backbone), data_root=str(data), feature_type="RN50",
                  batch_size=args.batch, valid_batch_size=args.batch, epochs=1, output=str(out), use_lora=True,
                  valid_topk=args.batch,
                  use_single_lora=True, lora_dim=args.lora_dim, lr=1e-4)
    values.update(extra)
    return api.load_settings(**values)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def host_prep(engine: Engine, batch: int) -> tuple[float, float]:
    """Samples/s of building training batches in this process (what one loader worker does): over the first
    epoch (cold: each image's first read) and over the second (warm: every epoch after the first)."""
    ds = engine.dataset("vqa", "karpathy_train", train=True)
    fetch = getattr(ds, "__getitems__", None)
    rates = []
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(len(ds))
        t0 = time.perf_counter()
        for b in range(0, len(ds), batch):
            idx = order[b:b + batch].tolist()
            ds.collate(fetch(idx) if fetch is not None else [ds[i] for i in idx])
        rates.append(len(ds) / (time.perf_counter() - t0))
    return rates[0], rates[1]


def pure_steps(engine: Engine, batches: list[dict], device: torch.device) -> float:
    """Seconds of forward + backward + optimiser over pre-collated batches (no data loading at all)."""
    from vlcli.train.optim import build_optimizers

    opt = build_optimizers(engine.module, engine.settings)[0]
    engine.module.train()
    task = get_task("vqa")
    on_device = [to_device(b, device) for b in batches]
    sync(device)
    t0 = time.perf_counter()
    for b in on_device:
        with engine._autocast():
            loss = engine.module(**task.model_inputs(b)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


class PurePassBeforeEachEpoch(SilentReporter):
    """Times a pure pass (``run``) at the start of every epoch of ``Engine.fit``, before the epoch's clock starts
    (so every epoch lies between two pure passes: its own and the next epoch's, or one run after ``fit``)."""

    def __init__(self) -> None:
        self.run: Callable[[], float] | None = None
        self.times: list[float] = []

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        assert self.run is not None
        self.times.append(self.run())


def bare_step(engine: Engine, batch: dict, device: torch.device, steps: int) -> float | None:
    """A bare transformers + peft LoRA step with inputs_embeds of the vlcli step's length (None without peft)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return None
    lm = engine.module.lm
    family = engine.module.family
    config = type(lm.config).from_dict(lm.config.to_dict())
    torch.manual_seed(0)
    bare = type(lm)(config).to(device)
    targets = ["q", "v"] if family == "t5" else ["q_proj", "v_proj"]
    bare = get_peft_model(bare, LoraConfig(r=engine.settings.get("lora_dim"), lora_alpha=32, target_modules=targets))
    b = to_device(batch, device)
    # what a bare user writes: a trained projection of the features, concatenated after the text embeddings
    projection = torch.nn.Linear(b["vis_feats"].shape[-1], config.d_model).to(device)
    opt = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad] + list(projection.parameters()), lr=1e-4)
    embed, labels = bare.get_input_embeddings(), b["labels"]

    def step():
        with engine._autocast():
            embeds = torch.cat([embed(b["input_ids"]), projection(b["vis_feats"].float())], dim=1)
            loss = bare(inputs_embeds=embeds, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="tiny", help="tiny (t5 family), tiny-bart, t5-base, bart-base, ...")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=6, help="training steps timed (one epoch)")
    parser.add_argument("--repeats", type=int, default=9, help="epochs timed after the first (each between two pure passes)")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--lora_dim", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="(CUDA) the engine's default bf16 autocast")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.set_num_threads(torch.get_num_threads())
    n_train, n_valid = args.batch * args.steps, args.batch * 2
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{os.cpu_count()} CPU cores'}), "
          f"arch {args.arch}, batch {args.batch}, {args.steps} steps, LoRA r{args.lora_dim}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        backbone = make_backbone(args.arch, root)
        data = make_data(root / "data", n_train, n_valid, args.images)
        print(f"set-up: {time.perf_counter() - t0:.1f} s")

        consolidated = data / "COCO/clip_features/data_clip_RN50_att.h5"
        for store, extra in (("per-image h5", {}), ("consolidated h5", {"data_paths": f"coco.clip={consolidated}"})):
            try:
                s = settings_for(args, backbone, data, root / "prep", **extra)
            except Exception as exc:  # noqa: BLE001 - a store option this version lacks
                print(f"host batch prep ({store}): skipped ({str(exc).splitlines()[0]})")
                continue
            cold, warm = host_prep(Engine(s), args.batch)
            print(f"host batch prep ({store}): {warm:,.0f} samples/s per process "
                  f"(first epoch, each image's first read: {cold:,.0f})")

        s = settings_for(args, backbone, data, root / "run", compile=args.compile, epochs=1 + args.repeats)
        engine = Engine(s, reporter=PurePassBeforeEachEpoch())
        ds = engine.dataset("vqa", "karpathy_train", train=True)
        loader = engine.loader(ds, args.batch, train=True)
        batches = [b for b in loader]
        pure_engine = Engine(s)
        engine.reporter.run = lambda: pure_steps(pure_engine, batches, device)
        pure_steps(pure_engine, batches, device)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        history = engine.fit()
        pures = engine.reporter.times + [engine.reporter.run()]  # one more pure pass after the last epoch
        # each epoch from the second on (the first reads each image cold) against the mean of the pure passes
        # right before and right after it: the machine's speed drifts (load, clocks), and bracketing cancels
        # the drift and any order effect; the median epoch is the figure (a single reading on a shared 2-core
        # machine swings by 10-20 %)
        epochs = [r["epoch_s"] for r in history.records]
        around = [(a + b) / 2 for a, b in zip(pures, pures[1:])]
        ratios = sorted(e / p for e, p in zip(epochs[1:], around[1:], strict=True))
        ratio = ratios[len(ratios) // 2]
        pure, epoch_s = sorted(around[1:])[len(ratios) // 2], sorted(epochs[1:])[len(ratios) // 2]
        print(f"pure model step: {pure / args.steps * 1000:.1f} ms/step ({n_train / pure:,.0f} samples/s)")
        print(f"Engine.fit: {epoch_s / args.steps * 1000:.1f} ms/step ({n_train / epoch_s:,.0f} samples/s, "
              f"num_workers {engine.num_workers}); epoch 1 (each image's first read): {epochs[0] / pures[0]:.2f}x the step")
        print(f"loop/step ratio: {ratio:.2f} (median of {len(ratios)} epochs, each against the pure passes around it; "
              f"all: {' '.join(f'{r:.2f}' for r in ratios)})")
        print(f"data wait: {max(0.0, epoch_s - pure) / args.steps * 1000:.1f} ms/step")
        if device.type == "cuda":
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        bare = bare_step(engine, batches[0], device, min(args.steps, 5))
        if bare is not None:
            print(f"bare transformers+LoRA step: {bare * 1000:.1f} ms/step; vlcli step / bare: "
                  f"{pure / args.steps / bare:.2f}")

        engine.predict("vqa", "karpathy_val", "valid")  # the first validation reads each image once (cold)
        vds = engine.dataset("vqa", "karpathy_val", train=False, role="valid")
        vbatches = [to_device(b, device) for b in engine.loader(vds, args.batch, train=False)]
        task = get_task("vqa")

        def timed_predict() -> float:
            t0 = time.perf_counter()
            engine.predict("vqa", "karpathy_val", "valid")
            return time.perf_counter() - t0

        def timed_generate() -> float:
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                for b in vbatches:
                    with engine._autocast():
                        task.predict(engine.module, b, engine.settings, engine.tokenizer)
            sync(device)
            return time.perf_counter() - t0

        # best of EVAL_REPEATS, alternating: one pass is ~0.4 s on the CPU, where a single reading swings by 20 %
        times = [(timed_predict(), timed_generate()) for _ in range(EVAL_REPEATS)]
        predict_s, generate_s = min(t[0] for t in times), min(t[1] for t in times)
        print(f"eval: predict {predict_s:.2f} s, generate {generate_s:.2f} s on {len(vds)} examples; "
              f"predict/generate ratio: {predict_s / generate_s:.2f}")


if __name__ == "__main__":
    main()
