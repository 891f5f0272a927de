"""Tiny, locally trained tokenizers for tests (no network, well under a second each).

``make_t5_tokenizer_dir`` trains a sentencepiece unigram model with T5's layout (``<pad>``=0,
``</s>``=1, ``<unk>``=2, no BOS, then the pieces, then ``<extra_id_99>`` .. ``<extra_id_0>``), so
``<extra_id_k>`` = ``vocab_size + 99 - k`` exactly as in t5-base (``vocab_size`` = 32000 there).
``make_bart_tokenizer_dir`` trains a byte-level BPE with BART's layout (``<s>``=0, ``<pad>``=1,
``</s>``=2, ``<unk>``=3, ``<mask>`` last). Both save with ``save_pretrained`` (tokenizer.json +
tokenizer_config.json), so ``AutoTokenizer.from_pretrained(path)`` works offline.
"""

from __future__ import annotations

import random
from pathlib import Path

COLORS = "red blue green yellow purple gray brown cyan black white orange pink".split()
SHAPES = "circle square triangle cube sphere cylinder box ball".split()
SIZES = "small large big tiny".split()
MATERIALS = "rubber metal shiny matte".split()
NUMBERS = "zero one two three four five six seven eight nine ten".split()


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Short lower-case English sentences about coloured shapes, counts, yes/no and true/false answers.

    "true" and "false" are in the corpus so every tokenizer trained on it gives them different first
    tokens (NLVR2 and VCR score those); without them the split into pieces depended on library versions.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c1, c2 = rng.choice(COLORS), rng.choice(COLORS)
        s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
        templates = [
            f"what color is the {s1}",
            f"a {c1} {s1} left of a {c2} {s2}",
            f"how many {s1}s are there",
            f"there are {rng.choice(NUMBERS)} {c1} {s1}s",
            f"is the {s1} {c1}",
            "yes",
            "no",
            f"is there a {c2} {s2}",
            f"the {c1} {s1} is right of the {s2}",
            str(rng.randint(0, 99)),
            f"the {rng.choice(SIZES)} {rng.choice(MATERIALS)} {s1} is behind the {s2}",
            f"are there more {s1}s than {s2}s",
            f"what shape is the {c1} object in front of the {rng.choice(SIZES)} {s2}",
        ]
        out.append(rng.choice(templates))
    return out + ["true", "false"] * 20


def make_t5_tokenizer_dir(path: str | Path, vocab_size: int = 100) -> Path:
    """Train a T5-style sentencepiece unigram tokenizer of exactly ``vocab_size`` pieces (+100 sentinels)
    into ``path`` (the corpus supports up to about 115); ``len`` of the saved tokenizer is ``vocab_size + 100``."""
    from vlcli.demo.backbone import train_t5_tokenizer

    train_t5_tokenizer(Path(path), corpus(), pieces=vocab_size, exact=True)
    return Path(path)


def make_bart_tokenizer_dir(path: str | Path, vocab_size: int = 500) -> Path:
    """Train a BART-style byte-level BPE tokenizer of at most ``vocab_size`` entries into ``path``.

    The corpus is small, so the BPE trainer may stop below ``vocab_size``; read the real size from
    ``len(AutoTokenizer.from_pretrained(path))``.
    """
    from vlcli.demo.backbone import train_bart_tokenizer

    train_bart_tokenizer(Path(path), corpus(), vocab_size=vocab_size, both_spellings=False)
    return Path(path)


def make_backbone_dir(path: str | Path, family: str, seed: int = 0) -> Path:
    """A tiny random-initialised T5 / BART (d_model 32) plus its tokenizer, saved with save_pretrained.

    The model's vocabulary is the plain tokenizer's length, so loading it as a vlcli backbone
    exercises the resize to the VL tokenizer (+100 ``<vis_extra_id_k>``, +200 sentinels for BART).
    """
    import torch
    from transformers import AutoTokenizer

    from vlcli.model.presets import model_class, tiny_config

    path = Path(path)
    (make_t5_tokenizer_dir if family == "t5" else make_bart_tokenizer_dir)(path)
    vocab = len(AutoTokenizer.from_pretrained(str(path)))
    torch.manual_seed(seed)
    model = model_class(family)(tiny_config(family, vocab))
    model.save_pretrained(str(path))
    return path
