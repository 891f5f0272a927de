"""One vlcli training step vs a bare transformers step with the same model, batch and precision.

    .venv/bin/python benchmarks/train_step.py --backbone facebook/bart-base --batch 8 --steps 5
    .venv/bin/python benchmarks/train_step.py --backbone t5-base --batch 300 --device cuda --bf16

Both sides start from the same randomly initialised architecture (no download) and update every
parameter with AdamW. The bare step feeds transformers' model ``inputs_embeds`` of the same total length
([20 text; 36 visual] tokens); the vlcli step runs VLModel.forward (visual embedding, the text-only
position-bias override, the loss) exactly as training does. Prints samples/s of both and the ratio
vlcli / bare time (target: <= 1.10), plus peak GPU memory on CUDA.
"""

from __future__ import annotations

import argparse
import time

import torch

from vlcli.model.build import vl_vocab_size
from vlcli.model.presets import PRESETS, architecture_config, model_class
from vlcli.model.visual import VisualConfig
from vlcli.model.vl import VLModel

TEXT, VISUAL, TARGET, FEAT = 20, 36, 5, 2048


def timed(step, steps: int, device: torch.device) -> float:
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="facebook/bart-base", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the GPU default of vlcli)")
    args = parser.parse_args()
    device = torch.device(args.device)
    family = PRESETS[args.backbone].family
    torch.manual_seed(0)
    config = architecture_config(args.backbone)
    vocab = vl_vocab_size(args.backbone, family)

    def fresh_lm():
        torch.manual_seed(0)
        lm = model_class(family)(config)
        lm.resize_token_embeddings(vocab, mean_resizing=False)
        return lm.to(device).train()

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab - 300, (args.batch, TEXT), generator=g).to(device)
    mask = torch.ones_like(ids)
    feats = torch.randn(args.batch, VISUAL, FEAT, generator=g).to(device)
    boxes = torch.rand(args.batch, VISUAL, 4, generator=g).to(device)
    labels = torch.randint(3, vocab - 300, (args.batch, TARGET), generator=g).to(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else None

    bare = fresh_lm()
    bare_opt = torch.optim.AdamW(bare.parameters(), lr=1e-5)
    embeds = torch.randn(args.batch, TEXT + VISUAL, config.d_model, generator=g).to(device)
    full_mask = torch.ones(args.batch, TEXT + VISUAL, dtype=torch.long, device=device)

    def bare_step():
        with autocast() if autocast else torch.enable_grad():
            loss = bare(inputs_embeds=embeds, attention_mask=full_mask, labels=labels).loss
        loss.backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed(bare_step, 1, device)  # extra warm-up: the first steps allocate optimiser state and thread pools
    t_bare = timed(bare_step, args.steps, device)
    mem_bare = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    bare = bare_opt = None  # free the bare model before building the vlcli one

    model = VLModel(fresh_lm(), family, VisualConfig(feat_dim=FEAT)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def vlcli_step():
        with autocast() if autocast else torch.enable_grad():
            loss = model(ids, mask, feats, boxes, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_vl = timed(vlcli_step, args.steps, device)
    mem_vl = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    print(f"backbone {args.backbone}, batch {args.batch}, {TEXT}+{VISUAL} encoder tokens, "
          f"{'bf16' if args.bf16 else 'fp32'}, {device}")
    print(f"{'':10}{'s/step':>10}{'samples/s':>12}{'peak GiB':>10}")
    for name, t, mem in (("bare HF", t_bare, mem_bare), ("vlcli", t_vl, mem_vl)):
        print(f"{name:10}{t:10.4f}{args.batch / t:12.1f}{(f'{mem:.2f}' if mem is not None else '-'):>10}")
    print(f"ratio vlcli / bare: {t_vl / t_bare:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
