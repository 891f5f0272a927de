"""What the metric modules share: the input error and the official rounding."""

from __future__ import annotations

from collections.abc import Iterable

from vlcli.errors import VlcliError


class MetricsInputError(VlcliError):
    """Predictions, references or annotations that cannot be scored (missing ids, unknown ids, bad values)."""


def official_round(value: float, digits: int = 2) -> float:
    """Round like the official evaluators do: Python's ``round`` on the float (round-half-even on binary)."""
    return round(value, digits)


def percent(values: list[float], digits: int = 2) -> float:
    """``round(100 * mean(values), digits)``, the official VQA formula; 0.0 for an empty list."""
    if not values:
        return 0.0
    return official_round(100 * float(sum(values)) / len(values), digits)


def check_ids(predictions: Iterable[object], expected: Iterable[object], items: str, unknown_ids: str) -> None:
    """MetricsInputError unless ``predictions`` covers exactly the ``expected`` ids: ``{n} {items} have no
    prediction`` names the first missing ones, ``{n} prediction(s) for {unknown_ids}`` the foreign ones."""
    predicted, wanted = list(predictions), list(expected)
    have, want = set(predicted), set(wanted)
    missing = [i for i in wanted if i not in have]
    if missing:
        raise MetricsInputError(f"{len(missing)} {items} have no prediction: {preview(missing)}")
    unknown = [i for i in predicted if i not in want]
    if unknown:
        raise MetricsInputError(f"{len(unknown)} prediction(s) for {unknown_ids}: {preview(unknown)}")


def preview(ids: Iterable[object], limit: int = 5) -> str:
    """A short comma-separated list of ids for an error message (``a, b, c, ... (+N more)``)."""
    items = [str(i) for i in ids]
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
