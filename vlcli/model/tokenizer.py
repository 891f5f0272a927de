"""The VL tokenizer: the backbone's tokenizer plus 100 ``<extra_id_k>`` and 100 ``<vis_extra_id_k>`` tokens.

VL-T5 and VL-BART tie visual object ``k`` to embedding row ``vocab_size - 1 - k``, so the visual
sentinels sit at the very end of the vocabulary in reverse order:

* T5 (sentencepiece model of ``V`` pieces, 32000 for t5-base): ``<extra_id_k>`` = ``V + 99 - k``
  (standard T5), ``<vis_extra_id_k>`` = ``V + 199 - k``; ``len`` = ``V + 200`` (32200).
* BART (byte-level BPE of ``V`` entries, 50265 for bart-base): ``<extra_id_99..0>`` then
  ``<vis_extra_id_99..0>`` are appended as special tokens, giving the same layout:
  ``<extra_id_k>`` = ``V + 99 - k``, ``<vis_extra_id_k>`` = ``V + 199 - k``; ``len`` = ``V + 200``.

:class:`VLTokenizer` is a thin wrapper around the configured transformers tokenizer (``.hf``) rather
than a subclass: transformers 5 has a single tokenizers-backed class per family (``T5Tokenizer``;
``BartTokenizer`` is an alias of ``RobertaTokenizer``), and wrapping keeps ``do_lower_case`` (which
T5 would ignore as a kwarg) and the id conventions in one small, checked place. Generation code uses
``.hf`` directly; text must go through :meth:`VLTokenizer.encode` / :meth:`VLTokenizer.batch_encode`
to get lower-casing. transformers is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcli.errors import VlcliError
from vlcli.model.presets import FAMILIES
from vlcli.paths import exists, is_dir, is_file, user_path

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

N_EXTRA = 100
N_VIS = 100
# Files from which a local directory can provide a tokenizer (any one group suffices).
_TOKENIZER_FILES = {
    "t5": (("tokenizer.json",), ("spiece.model",)),
    "bart": (("tokenizer.json",), ("vocab.json", "merges.txt")),
}


class TokenizerError(VlcliError):
    """A tokenizer cannot be built from the given name, path or family."""


def extra_token(k: int) -> str:
    """The text of T5-style sentinel ``k``."""
    return f"<extra_id_{k}>"


def vis_token(k: int) -> str:
    """The text of visual-object sentinel ``k``."""
    return f"<vis_extra_id_{k}>"


class VLTokenizer:
    """A backbone tokenizer with the VL sentinels, optional lower-casing and tensor batching."""

    def __init__(self, hf: PreTrainedTokenizerBase, family: str, do_lower_case: bool = False):
        self.hf = hf
        self.family = family
        self.do_lower_case = do_lower_case

    def __len__(self) -> int:
        return len(self.hf)

    def __repr__(self) -> str:
        return (
            f"VLTokenizer(family={self.family!r}, vocab_size={self.vocab_size}, lower={self.do_lower_case})"
        )

    @property
    def vocab_size(self) -> int:
        """Total number of ids including all added tokens (32200 for t5-base)."""
        return len(self.hf)

    @property
    def pad_token_id(self) -> int:
        """Id of the padding token."""
        return int(self.hf.pad_token_id)

    @property
    def eos_token_id(self) -> int:
        """Id of the end-of-sequence token."""
        return int(self.hf.eos_token_id)

    def vis_token_id(self, k: int) -> int:
        """Id of ``<vis_extra_id_k>`` (== vocab_size - 1 - k)."""
        _check_index(k, N_VIS)
        return int(self.hf.convert_tokens_to_ids(vis_token(k)))

    def extra_token_id(self, k: int) -> int:
        """Id of ``<extra_id_k>`` (== vocab_size - 101 - k)."""
        _check_index(k, N_EXTRA)
        return int(self.hf.convert_tokens_to_ids(extra_token(k)))

    def prepare(self, text: str) -> str:
        """The text as it is tokenised (lower-cased when ``do_lower_case``)."""
        return text.lower() if self.do_lower_case else text

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Ids of ``text`` with the family's special tokens, ending with EOS, at most ``max_length`` long."""
        self._check_max_length(max_length)
        enc = self.hf(self.prepare(text), truncation=max_length is not None, max_length=max_length)
        return list(enc["input_ids"])

    def encode_many(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """:meth:`encode` of every text in one tokenizer call (the same ids, without the per-call overhead)."""
        self._check_max_length(max_length)
        if not texts:
            return []
        enc = self.hf([self.prepare(t) for t in texts], truncation=max_length is not None, max_length=max_length)
        return [list(ids) for ids in enc["input_ids"]]

    def batch_encode(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """LongTensor ``input_ids`` and ``attention_mask`` of ``texts``, padded to the longest one."""
        self._check_max_length(max_length)
        enc = self.hf(
            [self.prepare(t) for t in texts],
            padding="longest",
            truncation=max_length is not None,
            max_length=max_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (surrounding whitespace stripped)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens).strip()

    def decode_many(self, rows: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        """:meth:`decode` of every row; a device tensor is copied to the host once (not a sync per row)."""
        rows = rows.tolist() if hasattr(rows, "tolist") else [list(r) for r in rows]
        return [text.strip() for text in self.hf.batch_decode(rows, skip_special_tokens=skip_special_tokens)]

    def _check_max_length(self, max_length: int | None) -> None:
        if max_length is None:
            return
        need = self.hf.num_special_tokens_to_add(pair=False) + 1
        if max_length < need:
            raise TokenizerError(
                f"max_length {max_length}: too small for the {self.family} tokenizer; use at least {need}"
            )


def _check_index(k: int, n: int) -> None:
    if not 0 <= k < n:
        raise IndexError(f"sentinel index {k} out of range 0..{n - 1}")


def _looks_local(name_or_path: str) -> bool:
    """True when ``name_or_path`` is a filesystem path rather than a hub id like ``facebook/bart-base``."""
    if exists(user_path(name_or_path)):
        return True
    return (
        Path(name_or_path).is_absolute()
        or name_or_path.startswith((".", "~"))
        or "\\" in name_or_path
        or name_or_path.count("/") > 1
    )


def _load_hf(name_or_path: str, family: str, option: str = "--tokenizer") -> PreTrainedTokenizerBase:
    """Load the plain backbone tokenizer, offline for local directories; errors name ``option``."""
    from transformers import AutoTokenizer, BartTokenizer, T5Tokenizer

    family_cls = T5Tokenizer if family == "t5" else BartTokenizer
    arg = f"{option} {name_or_path}"
    if _looks_local(name_or_path):
        path = user_path(name_or_path)
        if not is_dir(path):
            what = "is a file, not a directory" if exists(path) else "no such directory"
            raise TokenizerError(f"{arg}: {what}; pass a directory saved with save_pretrained or a hub name")
        if not any(all(is_file(path / f) for f in group) for group in _TOKENIZER_FILES[family]):
            wanted = " or ".join("+".join(g) for g in _TOKENIZER_FILES[family])
            raise TokenizerError(f"{arg}: no {family} tokenizer files in the directory; it needs {wanted}")
        loader = AutoTokenizer if is_file(path / "tokenizer_config.json") else family_cls
        kwargs: dict[str, Any] = {"local_files_only": True}
        source = str(path)
    else:
        loader, kwargs, source = AutoTokenizer, {}, name_or_path
    try:
        hf = loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(
            f"{arg}: cannot load a tokenizer ({first}); pass a local directory or a cached hub name"
        ) from exc
    if not isinstance(hf, family_cls):
        raise TokenizerError(
            f"{arg}: holds a {type(hf).__name__}, not a {family} tokenizer; pick the tokenizer of the {family} backbone"
        )
    return hf


def build_vl_tokenizer(
    name_or_path: str, family: str, do_lower_case: bool = False, option: str = "--tokenizer"
) -> VLTokenizer:
    """Load the ``family`` ("t5" or "bart") tokenizer ``name_or_path`` and add the VL sentinels.

    ``option`` is the setting the name came from (``--backbone`` when no ``--tokenizer`` was given), so
    that an error names what the user typed.
    """
    if family not in FAMILIES:
        raise TokenizerError(f"family {family!r}: unknown tokenizer family; use one of {', '.join(FAMILIES)}")
    hf = _load_hf(name_or_path, family, option)
    # Reverse order so that sentinel k ends up at (end of its block) - k, as in VL-T5 / VL-BART.
    missing_extra = [extra_token(k) for k in reversed(range(N_EXTRA)) if extra_token(k) not in hf.get_vocab()]
    if missing_extra:
        hf.add_special_tokens({"extra_special_tokens": missing_extra}, replace_extra_special_tokens=False)
    missing_vis = [vis_token(k) for k in reversed(range(N_VIS)) if vis_token(k) not in hf.get_vocab()]
    if missing_vis:
        hf.add_special_tokens({"extra_special_tokens": missing_vis}, replace_extra_special_tokens=False)
    tok = VLTokenizer(hf, family, do_lower_case)
    _verify_layout(tok, f"{option} {name_or_path}")
    return tok


def _verify_layout(tok: VLTokenizer, arg: str) -> None:
    """Raise unless the sentinels sit at the end of the vocabulary in the VL-T5 order."""
    n = tok.vocab_size
    bad = [k for k in range(N_VIS) if tok.vis_token_id(k) != n - 1 - k]
    bad_extra = [k for k in range(N_EXTRA) if tok.extra_token_id(k) != n - N_VIS - 1 - k]
    if bad or bad_extra:
        which = f"<vis_extra_id_{bad[0]}>" if bad else f"<extra_id_{bad_extra[0]}>"
        raise TokenizerError(
            f"{arg}: {which} is not where VL-T5/VL-BART expect it (ids must end the vocabulary "
            f"in reverse order); use the plain backbone tokenizer, not one with sentinels added in another order"
        )
    if tok.hf.pad_token_id is None or tok.hf.eos_token_id is None:
        raise TokenizerError(
            f"{arg}: has no pad or eos token; use the backbone's own tokenizer"
        )
