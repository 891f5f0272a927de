"""Dependencies: ranges in the package, the tested torch pair in constraints.txt, runtime = what vlcli imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

# import name -> distribution name, where they differ
DIST = {"PIL": "pillow", "open_clip": "open_clip_torch", "yaml": "pyyaml", "google": "protobuf"}
STDLIB = set(sys.stdlib_module_names)
OPTIONAL = {"wandb", "tensorboard", "peft", "deepspeed"}  # imported only where their extra is asked for


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements() -> dict[str, Requirement]:
    return {Requirement(r).name.lower(): Requirement(r) for r in project()["dependencies"]}


def test_torch_is_a_range_that_holds_the_tested_pair_and_other_builds():
    reqs = requirements()
    pins = {Requirement(line).name: Requirement(line) for line in (REPO / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    for name in ("torch", "torchvision"):
        spec = reqs[name].specifier
        assert not any(s.operator == "==" for s in spec), f"{name} must be a range, not a pin"
        [pin] = list(pins[name].specifier)
        assert pin.operator == "==" and Version(pin.version) in spec
    assert Version("2.13.0") in reqs["torch"].specifier and Version("2.14.1") in reqs["torch"].specifier
    assert Version("2.13.0+cu126") in reqs["torch"].specifier  # a CUDA build in range is kept


def imported_top_level_modules() -> set[str]:
    names = set()
    for path in (REPO / "vlcli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - STDLIB - {"vlcli"}


def test_runtime_dependencies_are_what_vlcli_imports():
    imported = {DIST.get(m, m).lower().replace("_", "-") for m in imported_top_level_modules()} - OPTIONAL
    declared = {n.replace("_", "-") for n in requirements()}
    indirect = {"protobuf"}  # needed by transformers to convert spiece-only T5 tokenizers, never imported
    assert imported - declared == set(), "imported but not declared"
    assert declared - imported - indirect == set(), "declared but never imported"
    extras = project()["optional-dependencies"]
    assert any(r.startswith("peft") for r in extras["peft"]) and any(r.startswith("deepspeed") for r in extras["deepspeed"])
    assert "vlcli[peft,tracking,deepspeed]" in extras["dev"]  # the tests run the optional engines too
