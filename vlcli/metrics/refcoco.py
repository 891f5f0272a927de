"""RefCOCOg box IoU and accuracy (spec data-and-eval §4.6).

One box convention everywhere: pixel corners ``(x1, y1, x2, y2)`` in continuous coordinates, as the
candidate-box h5 files store them (``x2 = x + w``, ``y2 = y + h``); a COCO ``[x, y, w, h]`` box is
converted the same way and the area is ``w · h`` (no "+1 pixel"). The original computed the targets
and the evaluation with ``x + w - 1`` and a +1 area against boxes extracted with ``x + w`` (spec §9
item 19); mixing the two shifts every ref box by one pixel against its own candidate, so vlcli uses
the extraction's convention only.

A prediction is correct when the IoU of its box with the referred object's box is at least 0.5;
accuracy counts every labelled example (an example whose candidates miss the object counts as wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlcli.metrics.base import MetricsInputError, check_ids, official_round

IOU_THRESHOLD = 0.5


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` with ``x2 = x + w``, ``y2 = y + h``."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def box_iou(boxes: np.ndarray | Sequence[Sequence[float]], box: Sequence[float]) -> np.ndarray:
    """IoU of each row of ``boxes`` (N, 4) with ``box`` (4,), all ``(x1, y1, x2, y2)``; (N,) float64.

    Boxes that only touch have IoU 0; a pair whose union has no area (two empty boxes) has IoU 0.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    r = np.asarray(box, dtype=np.float64).reshape(4)
    iw = np.clip(np.minimum(b[:, 2], r[2]) - np.maximum(b[:, 0], r[0]), 0.0, None)
    ih = np.clip(np.minimum(b[:, 3], r[3]) - np.maximum(b[:, 1], r[1]), 0.0, None)
    inter = iw * ih
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    area_r = max(r[2] - r[0], 0.0) * max(r[3] - r[1], 0.0)
    union = area_b + area_r - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def as_box(value: Any, what: str) -> list[float]:
    """A ``[x1, y1, x2, y2]`` list from a box or a dict holding one under ``"box"``; MetricsInputError otherwise."""
    box = value.get("box") if isinstance(value, Mapping) else value
    try:
        out = [float(v) for v in box]
    except (TypeError, ValueError):
        out = []
    if len(out) != 4 or not all(np.isfinite(out)):
        raise MetricsInputError(f"RefCOCOg {what} {value!r} is not a box [x1, y1, x2, y2] (or {{'box': [...]}})")
    return out


def refcoco_accuracy(
    predictions: Mapping[Any, Any], references: Mapping[Any, Any], threshold: float = IOU_THRESHOLD, digits: int = 2
) -> dict[str, Any]:
    """``id -> predicted box`` against ``id -> referred box`` (boxes ``[x1, y1, x2, y2]`` or dicts with ``box``).

    Returns ``accuracy`` (percentage of references whose prediction has IoU >= ``threshold``, rounded to
    ``digits``), ``correct`` and ``total``. A reference without a prediction, or a prediction for an
    unknown id, is an error.
    """
    check_ids(predictions, references, "RefCOCOg example(s)", "unknown ids")
    correct = 0
    for key, ref in references.items():
        iou = box_iou([as_box(predictions[key], f"prediction for {key!r}")], as_box(ref, f"reference {key!r}"))[0]
        correct += bool(iou >= threshold)
    total = len(references)
    return {
        "accuracy": official_round(100.0 * correct / total, digits) if total else 0.0,
        "correct": correct,
        "total": total,
    }
