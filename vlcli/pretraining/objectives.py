"""The text side of each pretraining objective (spec data-and-eval §1.8): ``(input text, target text)``.

Every random choice (masked words, the sampled answer, the ITM coin and negative, the grounded box)
comes from the ``numpy.random.Generator`` passed in, so the dataset decides whether it changes per
read (training) or is fixed (validation).

=================  ==============================================  ======================================
objective          input                                           target
=================  ==============================================  ======================================
lm (T5)            ``span prediction: a <extra_id_0> cube ...``    ``<extra_id_0> red <extra_id_1> ...``
lm (BART)          ``denoise text: a <mask> cube ...``             the sentence
qa                 ``{source}: {question}`` (``vqa: `` shared)     an answer drawn ∝ its score
itm                ``image text match: {caption}``                 ``true`` / ``false`` (p = 0.5)
ground_caption     ``caption region: <vis_extra_id_k>``            ``{attr} {obj}`` of box k
refer              ``visual grounding: {attr} {obj}``              ``<vis_extra_id_k>``
caption            ``caption:``                                    the caption
=================  ==============================================  ======================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vlcli.model.tokenizer import N_EXTRA, N_VIS, extra_token, vis_token

OBJECTIVES = ("lm", "qa", "itm", "ground_caption", "refer", "caption")
GROUNDING = ("ground_caption", "refer")
SPAN_PREFIX = "span prediction:"
DENOISE_PREFIX = "denoise text:"
ITM_PREFIX = "image text match:"
GROUND_PREFIX = "caption region:"
REFER_PREFIX = "visual grounding:"
# vlcli's choice for the objective the original lists but never built (spec §9 item 13): the
# captioning prompt of vlcli's caption task.
CAPTION_PREFIX = "caption:"
SINGLE_QA_PREFIX = "vqa"
BART_MASK = "<mask>"
MATCH, MISMATCH = "true", "false"


def _join(prefix: str | None, text: str) -> str:
    return text if prefix is None else f"{prefix} {text}"


# --------------------------------------------------------------------------------------- masking


def mask_count(n_words: int, rate: float) -> int:
    """Words masked in a sentence of ``n_words``: ``max(1, int(rate * n_words))`` (the original's count)."""
    return max(1, int(rate * n_words))


def mask_spans(n_words: int, rate: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``[start, end)`` word spans to mask: :func:`mask_count` random positions, adjacent ones merged."""
    if n_words < 1:
        raise ValueError("cannot mask an empty sentence")
    picked = sorted(int(i) for i in rng.permutation(n_words)[: mask_count(n_words, rate)])
    spans: list[list[int]] = []
    for i in picked:
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(s, e) for s, e in spans]


def _replace_spans(words: Sequence[str], spans: Sequence[tuple[int, int]], marker) -> list[str]:
    """``words`` with each span replaced by ``marker(j)`` for the j-th span."""
    out: list[str] = []
    pos = 0
    for j, (start, end) in enumerate(spans):
        out.extend(words[pos:start])
        out.append(marker(j))
        pos = end
    out.extend(words[pos:])
    return out


def corrupt_spans(
    sentence: str, rate: float, rng: np.random.Generator, prefix: str | None = SPAN_PREFIX
) -> tuple[str, str]:
    """T5 span prediction: masked spans become ``<extra_id_j>``; the target lists each sentinel, its words."""
    words = sentence.split()
    spans = mask_spans(len(words), rate, rng)[:N_EXTRA]  # at most the 100 sentinels the tokenizer has
    masked = _replace_spans(words, spans, extra_token)
    target: list[str] = []
    for j, (start, end) in enumerate(spans):
        target.append(extra_token(j))
        target.extend(words[start:end])
    return _join(prefix, " ".join(masked)), " ".join(target)


def corrupt_bart(
    sentence: str, rate: float, rng: np.random.Generator, prefix: str | None = DENOISE_PREFIX
) -> tuple[str, str]:
    """BART denoising: each masked span becomes one ``<mask>``; the target is the sentence itself."""
    words = sentence.split()
    masked = _replace_spans(words, mask_spans(len(words), rate, rng), lambda _j: BART_MASK)
    return _join(prefix, " ".join(masked)), sentence


# -------------------------------------------------------------------------------------------- qa


def question_input(question: str, source: str, single_prefix: bool) -> str:
    """``{source}: {question}``, or ``vqa: {question}`` for every source with ``--single_vqa_prefix``."""
    return f"{SINGLE_QA_PREFIX if single_prefix else source}: {question}"


def sample_answer(label: Mapping[str, float], rng: np.random.Generator) -> str:
    """One answer of ``label`` drawn with probability ∝ its score (the only one when there is one)."""
    answers = list(label)
    if not answers:
        raise ValueError("a QA example needs at least one answer")
    if len(answers) == 1:
        return answers[0]
    scores = np.asarray([label[a] for a in answers], dtype=np.float64)
    return answers[int(rng.choice(len(answers), p=scores / scores.sum()))]


# ------------------------------------------------------------------------------------------- itm


def image_text_match(caption: str, negative: str | None) -> tuple[str, str]:
    """``image text match: {caption}`` -> ``true``; with a ``negative`` (another image's) -> ``false``."""
    if negative is None:
        return f"{ITM_PREFIX} {caption}", MATCH
    return f"{ITM_PREFIX} {negative}", MISMATCH


# ------------------------------------------------------------------------------------- grounding


def region_captions(
    obj_ids: Sequence[int], attr_ids: Sequence[int], objects: Sequence[str], attributes: Sequence[str]
) -> list[str]:
    """``"{attr} {obj}"`` of every box from the VG vocabularies (indices already checked by the caller)."""
    return [f"{attributes[a]} {objects[o]}" for o, a in zip(obj_ids, attr_ids, strict=True)]


def _ground_indices(n_regions: int, n_ground: int, rng: np.random.Generator) -> list[int]:
    """``n_ground`` distinct random boxes, in random order (the original did not sort them)."""
    if n_regions < 1:
        raise ValueError("grounding needs at least one box")
    # <vis_extra_id_k> exists for k < 100 only; the visual tokens past it have no sentinel to name them.
    return [int(i) for i in rng.permutation(min(n_regions, N_VIS))[:n_ground]]


def ground_caption(captions: Sequence[str], n_ground: int, rng: np.random.Generator) -> tuple[str, str]:
    """Grounded captioning: ``caption region: <vis_extra_id_k>`` -> ``{attr} {obj}`` of box k.

    With ``n_ground > 1`` the input names several boxes and the target is
    ``<extra_id_0> cap <extra_id_1> cap ...``.
    """
    picked = _ground_indices(len(captions), n_ground, rng)
    source = [GROUND_PREFIX] + [vis_token(k) for k in picked]
    if n_ground == 1:
        return " ".join(source), captions[picked[0]]
    target: list[str] = []
    for j, k in enumerate(picked):
        target += [extra_token(j), captions[k]]
    return " ".join(source), " ".join(target)


def refer_expression(captions: Sequence[str], n_ground: int, rng: np.random.Generator) -> tuple[str, str]:
    """Referring expressions: ``visual grounding: {attr} {obj}`` -> ``<vis_extra_id_k>`` of that box.

    With ``n_ground > 1``: ``visual grounding: <extra_id_0> cap <extra_id_1> cap ...`` ->
    ``<vis_extra_id_k> ...``.
    """
    picked = _ground_indices(len(captions), n_ground, rng)
    if n_ground == 1:
        return f"{REFER_PREFIX} {captions[picked[0]]}", vis_token(picked[0])
    source = [REFER_PREFIX]
    for j, k in enumerate(picked):
        source += [extra_token(j), captions[k]]
    return " ".join(source), " ".join(vis_token(k) for k in picked)


# ------------------------------------------------------------------------------------- caption


def caption_pair(sentence: str) -> tuple[str, str]:
    """Captioning (vlcli's reading of the original's unbuilt ``caption`` objective): ``caption:``."""
    return CAPTION_PREFIX, sentence


# ------------------------------------------------------------------------------------------- tags


def with_tags(text: str, object_names: Sequence[str]) -> str:
    """``--oscar_tags``: ``{text} tags: obj1 obj2 ...`` with each detected object name once, in box order."""
    tokens = [text, "tags:"]
    for name in object_names:
        if name not in tokens:
            tokens.append(name)
    return " ".join(tokens)
