"""VCR accuracies Q→A, QA→R and Q→AR (spec data-and-eval §4.7).

* ``q_a``: the chosen answer equals ``answer_label``;
* ``qa_r``: the rationale chosen *given the gold answer* equals ``rationale_label``;
* ``q_ar``: both are right (the leaderboard's headline number; selects BEST).

All three are percentages of the scored questions. A prediction is the dict :class:`vlcli.tasks.vcr.VCRTask`
produces: ``answer_probs`` (4 values) and ``rationale_probs`` (4 values conditioned on the gold answer, or a
4×4 matrix with one row per answer, of which the gold answer's row is used); ``answer`` / ``rationale``
indices stand in where the probabilities are absent.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from vlcli.metrics.base import MetricsInputError, check_ids, official_round

N_CHOICES = 4
METRIC_KEYS = ("q_a", "qa_r", "q_ar")


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value (the first one on ties, like ``torch.argmax``)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _probs(value: Any, what: str, qid: Hashable) -> list[float]:
    """``value`` as a list of 4 finite numbers; MetricsInputError otherwise."""
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        raise MetricsInputError(
            f"VCR prediction {qid!r}: {what} must be {N_CHOICES} numbers; got {value!r}"
        ) from None
    if len(out) != N_CHOICES or any(v != v for v in out):
        raise MetricsInputError(f"VCR prediction {qid!r}: {what} must be {N_CHOICES} numbers; got {value!r}")
    return out


def _index(value: Any, what: str, qid: Hashable) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < N_CHOICES:
        raise MetricsInputError(f"VCR prediction {qid!r}: {what} must be an index 0-3; got {value!r}")
    return value


def chosen_answer(prediction: Mapping[str, Any], qid: Hashable) -> int:
    """The predicted answer index: argmax of ``answer_probs``, else ``answer``."""
    if "answer_probs" in prediction:
        return argmax(_probs(prediction["answer_probs"], "answer_probs", qid))
    if "answer" in prediction:
        return _index(prediction["answer"], "answer", qid)
    raise MetricsInputError(f"VCR prediction {qid!r} has neither answer_probs nor answer")


def chosen_rationale(prediction: Mapping[str, Any], gold_answer: int, qid: Hashable) -> int:
    """The rationale predicted for the gold answer: from a 4×4 ``rationale_probs`` its row ``gold_answer``,
    from 4 values (already conditioned on the gold answer) their argmax; else ``rationale``."""
    probs = prediction.get("rationale_probs")
    if probs is not None:
        rows = list(probs) if isinstance(probs, Sequence) and not isinstance(probs, str) else None
        if (
            rows
            and len(rows) == N_CHOICES
            and all(isinstance(r, Sequence) and not isinstance(r, str) for r in rows)
        ):
            return argmax(_probs(rows[gold_answer], f"rationale_probs[{gold_answer}]", qid))
        return argmax(_probs(probs, "rationale_probs", qid))
    if "rationale" in prediction:
        return _index(prediction["rationale"], "rationale", qid)
    raise MetricsInputError(f"VCR prediction {qid!r} has neither rationale_probs nor rationale")


def _label(reference: Any, key: str, qid: Hashable) -> int:
    value = reference.get(key) if isinstance(reference, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < N_CHOICES:
        raise MetricsInputError(f"VCR reference {qid!r}: {key} must be an index 0-3; got {value!r}")
    return value


def vcr_metrics(
    predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any], digits: int = 2
) -> dict[str, Any]:
    """Q→A, QA→R and Q→AR (percentages rounded to ``digits``) plus ``examples``.

    ``references``: ``annot_id -> {"answer_label": int, "rationale_label": int}``. Every reference needs a
    prediction and every prediction a reference (MetricsInputError otherwise).
    """
    check_ids(predictions, references, "VCR question(s)", "unknown annot_ids")
    hits = {key: 0 for key in METRIC_KEYS}
    for qid, ref in references.items():
        pred = predictions[qid]
        if not isinstance(pred, Mapping):
            raise MetricsInputError(
                f"VCR prediction {qid!r} must be an object with answer_probs / rationale_probs"
            )
        gold_a, gold_r = _label(ref, "answer_label", qid), _label(ref, "rationale_label", qid)
        a_ok = chosen_answer(pred, qid) == gold_a
        r_ok = chosen_rationale(pred, gold_a, qid) == gold_r
        hits["q_a"] += a_ok
        hits["qa_r"] += r_ok
        hits["q_ar"] += a_ok and r_ok
    n = len(references)
    out: dict[str, Any] = {k: official_round(100 * v / n, digits) if n else 0.0 for k, v in hits.items()}
    out["examples"] = n
    return out
