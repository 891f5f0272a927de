"""`finetune`, `pretrain`, `eval`, `submit`, `extract-features`: parse and validate the full configuration.

Their work (model, tasks, trainer, extractor) is added by later versions; until then each command
validates everything it is given, reports warnings, and stops with a clear message (exit code 3).
"""

from pathlib import Path
from typing import Any, Optional

import typer

from vlcli.cli import render
from vlcli.cli.common import AdapterOption, ProfileOption, TaskArgument, resolve_command, settings_options
from vlcli.config.resolve import Resolution
from vlcli.errors import ConfigError, Issue, NotImplementedYetError, VlcliError


def _validated(command: str, task: Optional[str], profile: Optional[list[str]], adapter: Optional[str],
               overrides: dict[str, Any], needs_tasks: bool = True) -> Resolution:
    res = resolve_command(command, task, profile, adapter, overrides)
    assert res.settings is not None and res.settings.derived is not None
    if needs_tasks and not res.settings.derived.tasks:
        hint = " or a --load run directory that has a config.json" if command in ("eval", "submit") else ""
        raise ConfigError([Issue("R35", "error", f"`vlcli {command}` needs a TASK (e.g. vqa) or --tasks{hint}.", ("tasks",))])
    render.issue_lines(res.warnings)
    return res


def _pending(command: str, res: Resolution, what: str) -> None:
    d = res.settings.derived if res.settings else None
    tasks = ",".join(d.tasks) if d and d.tasks else "-"
    raise NotImplementedYetError(
        f"`vlcli {command}` (tasks: {tasks}): configuration valid; {what} is not part of vlcli "
        f"{_version()} yet. `vlcli inspect-config` shows the resolved configuration."
    )


def _version() -> str:
    from vlcli import __version__

    return __version__


@settings_options
def finetune(
    task: Optional[str] = TaskArgument,
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Fine-tune on one task (`vlcli finetune vqa`) or a mix (`vlcli finetune multitask --tasks vqa,gqa`)."""
    res = _validated("finetune", task, profile, adapter, overrides)
    _pending("finetune", res, "training")


@settings_options
def pretrain(
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Vision-language pretraining with the objectives in --losses (lm, qa, itm, ground_caption, refer)."""
    res = _validated("pretrain", None, profile, adapter, overrides, needs_tasks=False)
    _pending("pretrain", res, "pretraining")


@settings_options
def evaluate(
    task: Optional[str] = TaskArgument,
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Evaluate a checkpoint on a split (`vlcli eval --test_only --load snap/run`); tasks come from the run when omitted."""
    res = _validated("eval", task, profile, adapter, overrides)
    _pending("eval", res, "evaluation")


@settings_options
def submit(
    task: Optional[str] = TaskArgument,
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Write leaderboard submission files in the official formats from a checkpoint (`--load`)."""
    res = _validated("submit", task, profile, adapter, overrides)
    if res.settings is not None and res.settings.train.load is None:
        raise VlcliError("`vlcli submit` needs --load <checkpoint or run directory>")
    _pending("submit", res, "writing submissions")


@settings_options
def extract_features(
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images (or a text file listing image paths).", rich_help_panel="Extraction"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder for the h5 feature files.", rich_help_panel="Extraction"),
    profile: Optional[list[str]] = ProfileOption,
    overrides: Any = None,
) -> None:
    """Extract CLIP grid features to h5 (`--feature_type RN101 --images DIR --out DIR`)."""
    if images is None or out is None:
        raise VlcliError("`vlcli extract-features` needs --images DIR and --out DIR")
    if not images.exists():
        raise VlcliError(f"--images {images}: no such folder or file")
    res = _validated("extract-features", None, profile, None, overrides, needs_tasks=False)
    _pending("extract-features", res, "feature extraction")
