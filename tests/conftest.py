"""Shared helpers: run the CLI in-process and capture its output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from vlcli.cli.main import main

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REFERENCE_JSONC = SHARED / "reference" / "config-reference.jsonc"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """``cli("inspect-config", "vqa", ...)`` -> CliResult(code, stdout, stderr)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def reference_jsonc() -> Path:
    if not REFERENCE_JSONC.is_file():
        pytest.skip("shared/reference/config-reference.jsonc is not beside this checkout")
    return REFERENCE_JSONC
