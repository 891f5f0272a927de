"""NLVR2 accuracy and consistency with the semantics of the official ``nlvr2/eval/metrics.py`` (spec §4.4).

Consistency groups examples by their identifier with the third ``-``-separated field (the image-pair
index) blanked: ``dev-850-0-0`` and ``dev-850-1-0`` share the key ``dev-850--0`` (the same sentence shown
with different image pairs). A group is consistent when all of its examples are predicted correctly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlcli.metrics.base import MetricsInputError, check_ids, official_round

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def to_bool(value: Any, what: str = "label") -> bool:
    """0/1, True/False or "True"/"False" (any case) as a bool; anything else is an input error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise MetricsInputError(f"NLVR2 {what} {value!r} is not one of 0/1, true/false")


def consistency_key(identifier: str) -> str:
    """``split-set-pair-sentence`` -> ``split-set--sentence`` (the official grouping key)."""
    parts = identifier.split("-")
    if len(parts) < 3:
        raise MetricsInputError(
            f"NLVR2 identifier {identifier!r} is not of the form split-set-pair-sentence (e.g. dev-850-0-0)"
        )
    parts[2] = ""
    return "-".join(parts)


def nlvr_metrics(predictions: Mapping[str, Any], labels: Mapping[str, Any], digits: int = 2) -> dict[str, Any]:
    """``identifier -> prediction`` against ``identifier -> label`` (both 0/1, bool or "True"/"False").

    Returns ``accuracy`` and ``consistency`` as percentages rounded to ``digits``, plus ``examples`` and
    ``groups``. A labelled example without a prediction, or a prediction for an unknown identifier, is an
    error (the original called ``exit()``).
    """
    check_ids(predictions, labels, "example(s)", "unknown identifiers")
    correct = 0
    groups: dict[str, bool] = {}
    for ident, label in labels.items():
        ok = to_bool(predictions[ident], "prediction") == to_bool(label)
        correct += ok
        key = consistency_key(ident)
        groups[key] = groups.get(key, True) and ok
    n = len(labels)
    return {
        "accuracy": official_round(100 * correct / n, digits) if n else 0.0,
        "consistency": official_round(100 * sum(groups.values()) / len(groups), digits) if groups else 0.0,
        "examples": n,
        "groups": len(groups),
    }
