"""Tiny random-initialised T5 and BART backbones with tokenizers trained on the demo world's text.

Saved with ``save_pretrained`` under ``<root>/backbones/{t5-demo,bart-demo}``; their ``config.json``
carries ``model_type`` so ``--backbone <dir>`` is recognised as T5 or BART. No network is needed.
The sizes (:data:`DEMO_SIZES`) are documented in docs/demo.md.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

from vlcli.demo.world import DemoWorldError

DEMO_SIZES: dict[str, dict[str, int]] = {
    "t5": {"d_model": 128, "d_ff": 256, "d_kv": 32, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2},
    "bart": {
        "d_model": 128,
        "encoder_ffn_dim": 256,
        "decoder_ffn_dim": 256,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "max_position_embeddings": 128,
    },
}
"""Overrides applied on top of :func:`vlcli.model.presets.tiny_config` (all other fields are its values)."""

T5_PIECES = 200
"""Upper bound of sentencepiece pieces of the demo T5 tokenizer (the world's text may support fewer)."""
BART_VOCAB = 400
"""Upper bound of the byte-level BPE vocabulary of the demo BART tokenizer (256 bytes + merges + specials)."""
DIR_NAMES: dict[str, str] = {"t5": "t5-demo", "bart": "bart-demo"}


def train_t5_tokenizer(path: Path, corpus: Sequence[str], pieces: int = T5_PIECES, exact: bool = False):
    """A T5-layout sentencepiece unigram tokenizer (<pad>=0, </s>=1, <unk>=2, pieces, <extra_id_99..0>).

    ``exact``: exactly ``pieces`` pieces (an error if the corpus cannot support them); otherwise at most.
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus)),
        model_writer=buf,
        vocab_size=pieces,
        hard_vocab_limit=exact,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=1.0,
        normalization_rule_name="identity",
        minloglevel=2,
        num_threads=1,
        seed_sentencepiece_size=100_000,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab += [(f"<extra_id_{k}>", 0.0) for k in reversed(range(100))]
    tok = T5Tokenizer(vocab=vocab, extra_ids=100)
    Path(path).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(path))
    return tok


def train_bart_tokenizer(path: Path, corpus: Sequence[str], vocab_size: int = BART_VOCAB, both_spellings: bool = True):
    """A BART-layout byte-level BPE tokenizer (<s>=0, <pad>=1, </s>=2, <unk>=3, ..., <mask> last), at most
    ``vocab_size`` entries. ``both_spellings``: also train on each text with a leading space (as BART sees
    words mid-sentence)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BartTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # room for <mask>
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [t for text in corpus for t in ((text, " " + text) if both_spellings else (text,))]
    bpe.train_from_iterator(texts, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    vocab["<mask>"] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = BartTokenizer(vocab=vocab, merges=merges)
    Path(path).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(path))
    return tok


def demo_config(family: str, vocab_size: int):
    """The demo T5Config / BartConfig: ``tiny_config(family, vocab_size)`` with :data:`DEMO_SIZES` applied."""
    from vlcli.model.presets import tiny_config

    base = tiny_config(family, vocab_size)
    data = base.to_dict()
    data.update(DEMO_SIZES[family])
    return type(base).from_dict(data)


def _save_quietly(model, path: Path) -> None:
    """``save_pretrained`` without transformers' progress bar (library code does not print)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(path))
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def make_backbones(
    root: Path, corpus: list[str], *, seed: int = 0, families: Sequence[str] = ("t5", "bart")
) -> dict[str, Path]:
    """Write ``root/backbones/{t5-demo,bart-demo}`` (model + tokenizer) and return family -> directory.

    The model's vocabulary is the plain tokenizer's length; vlcli resizes it to the VL tokenizer
    (+100 ``<vis_extra_id_k>``, and +100 ``<extra_id_k>`` for BART) when it loads the backbone.
    """
    import torch
    from transformers import AutoTokenizer

    from vlcli.model.presets import model_class

    if not corpus:
        raise DemoWorldError("empty corpus for the demo tokenizers; fix: make the world first (world_corpus(root))")
    out: dict[str, Path] = {}
    for family in families:
        if family not in DIR_NAMES:
            raise DemoWorldError(f"unknown demo backbone family {family!r}; fix: use t5 or bart")
        path = Path(root) / "backbones" / DIR_NAMES[family]
        path.mkdir(parents=True, exist_ok=True)
        (train_t5_tokenizer if family == "t5" else train_bart_tokenizer)(path, corpus)
        vocab = len(AutoTokenizer.from_pretrained(str(path), local_files_only=True))
        torch.manual_seed(seed)
        model = model_class(family)(demo_config(family, vocab))
        _save_quietly(model, path)
        out[family] = path
    return out
