"""Image classification top-1 accuracy (spec data-and-eval §4.8).

A prediction is correct when the generated text equals the class name exactly. Both sides are
stripped and runs of whitespace collapsed to one space (decoders may emit extra spaces); the
comparison is case-sensitive, as the original's, unless ``ignore_case`` (used with ``--do_lower_case``,
whose lower-cased targets could otherwise never match names such as ``Egyptian cat``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from vlcli.metrics.base import MetricsInputError, check_ids, official_round


def normalize_label(text: str, ignore_case: bool = False) -> str:
    """``text`` stripped, internal whitespace collapsed, lower-cased when ``ignore_case``."""
    out = " ".join(text.split())
    return out.lower() if ignore_case else out


def top1_accuracy(
    predictions: Mapping[Hashable, Any],
    labels: Mapping[Hashable, str],
    *,
    ignore_case: bool = False,
    digits: int = 2,
) -> dict[str, Any]:
    """``image id -> generated text`` against ``image id -> class name``.

    Returns ``accuracy`` (percentage rounded to ``digits``), ``correct`` and ``examples``. A labelled
    image without a prediction, a prediction for an unknown image and a non-text prediction are errors.
    """
    check_ids(predictions, labels, "image(s)", "unknown images")
    correct = 0
    for image_id, label in labels.items():
        pred = predictions[image_id]
        if not isinstance(pred, str):
            raise MetricsInputError(f"prediction for image {image_id!r} is {pred!r}; predictions must be class names")
        correct += normalize_label(pred, ignore_case) == normalize_label(label, ignore_case)
    n = len(labels)
    return {
        "accuracy": official_round(100 * correct / n, digits) if n else 0.0,
        "correct": correct,
        "examples": n,
    }
