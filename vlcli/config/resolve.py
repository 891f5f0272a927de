"""From defaults, profiles and command-line arguments to validated :class:`Settings`.

Precedence, lowest first: built-in defaults < a run's saved ``config.json`` (``eval``/``submit`` with
``--load``) < profiles (left to right, each after what it extends) < ``--adapter`` < command-line
arguments < the positional TASK. The source of every value is recorded. Validation reports every
problem at once: unknown keys, values that do not parse, and all compatibility-rule violations.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vlcli.config import profiles as profile_mod
from vlcli.config.derive import derive
from vlcli.config.load import resolve_load, run_config_for
from vlcli.config.rules import PRETRAIN_TASK, RuleContext, check
from vlcli.config.settings import ALIASES, FIELDS, Settings
from vlcli.config.types import KNOWN_TASKS, parse_task_list
from vlcli.errors import CheckpointNotFoundError, ConfigError, Issue

DEFAULT_SOURCE = "default"
CLI_SOURCE = "cli"
TASK_SOURCE = "cli:TASK"
PRETRAIN_SOURCE = "command:pretrain"
CHECKPOINT_COMMANDS = ("eval", "submit")
# Keys of a saved run config that describe how that run was started, not what it is.
RUN_LAYER_EXCLUDE = frozenset(
    {"load", "from_scratch", "test_only", "dry", "submit", "deepspeed", "local_rank", "allow_partial_load", "resume"}
)


def canonical_name(key: str) -> str | None:
    """Canonical field name of ``key`` (aliases and dashed spellings), or None if unknown."""
    if key in FIELDS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    under = key.replace("-", "_")
    if under in FIELDS:
        return under
    if under in ALIASES:
        return ALIASES[under]
    return None


def suggest_name(key: str) -> str:
    """`` did you mean 'x'?`` for an unknown argument name, or an empty string."""
    pool = list(FIELDS) + list(ALIASES)
    close = difflib.get_close_matches(key.replace("-", "_"), pool, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass
class Layer:
    """Values from one source, keyed by canonical name."""

    source: str
    values: dict[str, Any]


@dataclass
class Resolution:
    """The outcome of resolving one invocation: settings (when valid), sources and findings."""

    command: str | None
    settings: Settings | None
    values: dict[str, Any]
    sources: dict[str, str]
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.settings is not None

    @property
    def explicit(self) -> set[str]:
        return {k for k, s in self.sources.items() if s != DEFAULT_SOURCE}

    def raise_for_errors(self) -> Settings:
        """Return the settings, or raise :class:`ConfigError` listing every error."""
        if not self.ok:
            raise ConfigError(self.errors, self.warnings)
        assert self.settings is not None
        return self.settings

    def to_json(self) -> dict[str, Any]:
        """``{"config", "derived", "sources", "warnings", "errors"}`` (what ``inspect-config --json`` prints)."""
        derived = self.settings.derived.model_dump(mode="json") if self.settings and self.settings.derived else None
        return {
            "command": self.command,
            "config": self.values,
            "derived": derived,
            "sources": self.sources,
            "warnings": [w.to_json() for w in self.warnings],
            "errors": [e.to_json() for e in self.errors],
        }


def _canonical_layer(source: str, raw: Mapping[str, Any], where: str, errors: list[Issue]) -> Layer:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = canonical_name(key)
        if name is None:
            errors.append(Issue("unknown", "error", f"unknown argument '{key}' {where}{suggest_name(key)}", (key,)))
            continue
        if isinstance(value, dict):
            errors.append(Issue("type", "error", f"--{name} {where}: expected a value, got an object", (name,)))
            continue
        values[name] = value
    return Layer(source, values)


EXPLICIT_KEY = "_explicit"
"""Key of a run's config.json listing the settings its user set; the others were defaults there."""


def _run_config_layer(path: Path, errors: list[Issue]) -> Layer | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        errors.append(Issue("R47", "error", f"cannot read the run config {path}: {exc}", ("load",)))
        return None
    if not isinstance(data, dict):
        errors.append(Issue("R47", "error", f"run config {path} is not a JSON object", ("load",)))
        return None
    explicit = data.pop(EXPLICIT_KEY, None)
    if isinstance(explicit, list):
        # Only what the run's user set: defaults stay defaults, so derived per-task values (a task's
        # text length when max_text_length was not given, say) come out as they did in the run.
        data = {k: v for k, v in data.items() if k in explicit}
    data = {k: v for k, v in data.items() if k not in RUN_LAYER_EXCLUDE}
    return _canonical_layer(f"run:{path}", data, f"in run config {path}", errors)


def _type_issues(exc: ValidationError, sources: Mapping[str, str], values: Mapping[str, Any]) -> tuple[list[Issue], set[str]]:
    issues: list[Issue] = []
    bad: set[str] = set()
    for err in exc.errors():
        loc = [p for p in err["loc"] if isinstance(p, str)]
        name = next((p for p in reversed(loc) if p in FIELDS), loc[-1] if loc else "?")
        if name in bad:
            continue
        bad.add(name)
        msg = str(err["msg"]).removeprefix("Value error, ")
        src = sources.get(name, DEFAULT_SOURCE)
        issues.append(Issue("type", "error", f"--{name} {values.get(name)!r} (from {src}): {msg}", (name,)))
    return issues, bad


def resolve(
    command: str | None = None,
    task: str | None = None,
    profiles: Sequence[str] = (),
    cli: Mapping[str, Any] | None = None,
    adapter: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Resolution:
    """Merge all sources for one invocation and validate the result.

    ``cli`` holds command-line values by canonical name (strings are parsed like profile values).
    Never raises for bad user input except unreadable profiles (:class:`ProfileError`); every other
    problem is returned in ``Resolution.errors``.
    """
    env = dict(os.environ) if env is None else dict(env)
    errors: list[Issue] = []
    layers: list[Layer] = []

    for ref in profiles:
        for pl in profile_mod.load(ref):
            layers.append(_canonical_layer(pl.label, pl.values, f"in {pl.label} ({pl.path})", errors))
    if adapter is not None:
        al = profile_mod.adapter_layer(adapter)
        layers.append(_canonical_layer(al.label, al.values, f"in {al.label}", errors))
    cli_layer = _canonical_layer(CLI_SOURCE, dict(cli or {}), "on the command line", errors)
    layers.append(cli_layer)

    # Positional TASK: a single task sets `tasks`; `multitask` takes the list from --tasks/profiles.
    if task is not None and task != "multitask":
        if task not in KNOWN_TASKS:
            close = difflib.get_close_matches(task, [*KNOWN_TASKS, "multitask"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(Issue("R44", "error", f"unknown TASK {task!r}; known: {', '.join(KNOWN_TASKS)}, multitask{hint}", ("tasks",)))
        else:
            cli_tasks = cli_layer.values.get("tasks")
            if cli_tasks is not None and parse_task_list(cli_tasks) not in ([task], []):
                errors.append(
                    Issue(
                        "R35",
                        "error",
                        f"TASK {task} conflicts with --tasks {cli_tasks}; for several tasks use "
                        f"`vlcli {command or 'finetune'} multitask --tasks ...`.",
                        ("tasks",),
                    )
                )
            layers.append(Layer(TASK_SOURCE, {"tasks": [task]}))

    # `vlcli pretrain` runs one task, "pretrain"; its objectives are --losses, so other tasks are ignored.
    pre_warnings: list[Issue] = []
    if command == "pretrain":
        given = next((ly for ly in reversed(layers) if "tasks" in ly.values), None)
        try:
            named = parse_task_list(given.values["tasks"]) if given is not None else []
        except ValueError:
            named = None  # not a task list at all: ignored like any other
        if named not in ([], [PRETRAIN_TASK]):
            pre_warnings.append(Issue("R45", "warning", f"--tasks {given.values['tasks']} (from {given.source}) "
                                      "ignored by `vlcli pretrain`: its objectives are --losses.", ("tasks",)))
        layers.append(Layer(PRETRAIN_SOURCE, {"tasks": [PRETRAIN_TASK]}))

    # eval / submit: the checkpoint's run config sits just above the defaults.
    load_value = next((ly.values["load"] for ly in reversed(layers) if "load" in ly.values), None)
    load_path: Path | None = None
    run_cfg: Path | None = None
    if isinstance(load_value, str) and load_value.strip() and not load_value.strip().startswith("#TODO") \
            and load_value.strip().lower() not in {"none", "null"}:
        output = next((ly.values["output"] for ly in reversed(layers) if "output" in ly.values), FIELDS["output"].default)
        try:
            load_path = resolve_load(load_value, str(output))
        except CheckpointNotFoundError as exc:
            errors.append(Issue("R47", "error", str(exc), ("load",)))
        if load_path is not None and command in CHECKPOINT_COMMANDS:
            run_cfg = run_config_for(load_path)
            if run_cfg is not None:
                run_layer = _run_config_layer(run_cfg, errors)
                if run_layer is not None:
                    layers.insert(0, run_layer)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: DEFAULT_SOURCE for name in FIELDS}
    for layer in layers:
        for name, value in layer.values.items():
            values[name] = value
            sources[name] = layer.source

    try:
        settings = Settings.from_flat(values)
    except ValidationError as exc:
        type_errors, bad = _type_issues(exc, sources, values)
        errors.extend(type_errors)
        for name in bad:
            values.pop(name, None)
            sources[name] = DEFAULT_SOURCE
        settings = Settings.from_flat(values)

    explicit = {k for k, s in sources.items() if s != DEFAULT_SOURCE}
    settings.derived = derive(settings, explicit, load_path, run_cfg)
    ctx = RuleContext(settings, settings.derived, explicit, command, env)
    warnings: list[Issue] = list(pre_warnings)
    for issue in check(ctx):
        (errors if issue.level == "error" else warnings).append(issue)
    return Resolution(command, settings, settings.flat(mode="json"), sources, errors, warnings)


def settings_from_run_config(path: str | Path) -> Settings:
    """Rebuild validated settings from a run's saved ``config.json`` (raises on problems)."""
    res = resolve(profiles=[str(path)])
    return res.raise_for_errors()


__all__ = ["Resolution", "canonical_name", "resolve", "settings_from_run_config", "suggest_name"]
