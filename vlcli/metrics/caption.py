"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, optional SPICE) through ``pycocoevalcap``.

Same pipeline as the caption evaluator of VL-T5 / VL-Adapter (spec §4.5): the Stanford PTB tokenizer
(``-preserveLines -lowerCase``, punctuation tokens dropped), then the scorers of the COCO caption toolkit.
Values are the toolkit's fractions (CIDEr can exceed 1). The PTB tokenizer, METEOR and SPICE run on Java;
``tokenizer="simple"`` is a Java-free fallback (lower-case word tokens) that reports BLEU, ROUGE-L and CIDEr
only, and its numbers are not comparable with the PTB ones.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from vlcli.metrics.base import MetricsInputError, preview

# Tokens the COCO toolkit drops after PTB tokenisation (pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS).
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_SIMPLE_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


class JavaMissingError(MetricsInputError):
    """The PTB tokenizer, METEOR and SPICE need a Java runtime on PATH."""


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH."""
    return shutil.which("java") is not None


def _require_java(what: str) -> None:
    if not java_available():
        raise JavaMissingError(
            f"{what} needs Java (the PTB tokenizer and METEOR are Java programs) and no `java` is on PATH; "
            "install a Java runtime >= 8 (e.g. `apt-get install default-jre-headless`) and retry"
        )


def simple_tokenize(text: str) -> str:
    """Java-free tokenisation: lower-case word tokens joined by spaces (punctuation dropped)."""
    return " ".join(_SIMPLE_TOKEN.findall(text.lower()))


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """The COCO toolkit's tokenisation: Stanford PTBTokenizer (lower-case, one line per sentence), then
    punctuation tokens dropped. Runs the jar shipped with ``pycocoevalcap`` quietly (its stderr is captured)."""
    _require_java("the PTB tokenizer")
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar = Path(ptb.__file__).parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    text = "\n".join(s.replace("\n", " ").replace("\r", " ") for s in sentences)
    with tempfile.TemporaryDirectory(prefix="vlcli-ptb-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
             str(src)],
            capture_output=True, check=False,
        )
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MetricsInputError(f"the PTB tokenizer (Java) failed: {detail[-1] if detail else proc.returncode}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(sentences):
        raise MetricsInputError(f"the PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATION) for line in lines[: len(sentences)]]


def _spice_ready() -> Path | None:
    import pycocoevalcap.spice.spice as spice_module

    jar = Path(spice_module.__file__).parent / "lib" / "stanford-corenlp-3.6.0.jar"
    return jar if jar.is_file() else None


def caption_metrics(
    predictions: Mapping[Any, str],
    references: Mapping[Any, Sequence[str]],
    spice: bool = False,
    tokenizer: Literal["ptb", "simple"] = "ptb",
) -> dict[str, float]:
    """Score one generated caption per image against that image's reference captions.

    ``predictions``: image id -> caption; ``references``: image id -> list of captions. Both must cover
    the same images. Returns ``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` (and ``SPICE`` when
    asked), named as the COCO toolkit names them.
    """
    unknown = [i for i in predictions if i not in references]
    if unknown:
        raise MetricsInputError(f"{len(unknown)} prediction(s) for images without references: {preview(unknown)}")
    missing = [i for i in references if i not in predictions]
    if missing:
        raise MetricsInputError(f"{len(missing)} image(s) have no predicted caption: {preview(missing)}")
    empty = [i for i, refs in references.items() if not refs]
    if empty:
        raise MetricsInputError(f"{len(empty)} image(s) have no reference caption: {preview(empty)}")
    if not predictions:
        raise MetricsInputError("no captions to score")
    if tokenizer not in ("ptb", "simple"):
        raise MetricsInputError(f"unknown caption tokenizer {tokenizer!r}; use ptb or simple")
    if tokenizer == "simple" and spice:
        raise MetricsInputError("SPICE needs Java and the PTB tokenizer; drop spice or use tokenizer='ptb'")
    if tokenizer == "ptb":
        _require_java("caption evaluation")
    if spice and _spice_ready() is None:
        raise MetricsInputError(
            "SPICE needs Stanford CoreNLP 3.6.0 in pycocoevalcap/spice/lib (run "
            "`python -m pycocoevalcap.spice.get_stanford_models` once, with network access), or leave SPICE off"
        )

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = list(references)
    if tokenizer == "ptb":
        # An empty caption would shift the PTB output lines, so it becomes a lone period (dropped again).
        flat = [c or "." for i in ids for c in references[i]] + [predictions[i] or "." for i in ids]
        tokens = ptb_tokenize(flat)
        gts, pos = {}, 0
        for i in ids:
            gts[str(i)] = tokens[pos:pos + len(references[i])]
            pos += len(references[i])
        res = {str(i): [tokens[pos + k]] for k, i in enumerate(ids)}
    else:
        gts = {str(i): [simple_tokenize(c) for c in references[i]] for i in ids}
        res = {str(i): [simple_tokenize(predictions[i])] for i in ids}

    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the toolkit prints progress; library code must not
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for n, value in enumerate(bleu, start=1):
            scores[f"Bleu_{n}"] = float(value)
        if tokenizer == "ptb":
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
            finally:
                del meteor
        scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
        if spice:
            from pycocoevalcap.spice.spice import Spice

            scores["SPICE"] = float(Spice().compute_score(gts, res)[0])
    return scores
