"""What the extractors share: their error type, the progress interface and atomic file writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from vlcli.atomic import atomic_path
from vlcli.errors import VlcliError


class ExtractionError(VlcliError):
    """Bad extraction input: no images, a missing weight file, an unknown backbone, a malformed TSV."""


class Progress(Protocol):
    """How the extractors report progress (the CLI renders a rich bar; library use can stay silent)."""

    def start(self, total: int | None, description: str) -> None:
        """A new phase of ``total`` units (images, TSV rows; None when unknown)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""

    def finish(self) -> None:
        """The phase is over."""


class SilentProgress:
    """A :class:`Progress` that reports nothing."""

    def start(self, total: int | None, description: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
