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
CHECKPOINT_COMMANDS = ("eval", "submit", "inspect-config")
"""Commands whose ``--load`` reads the checkpoint's run config under the other sources."""
RESUME_COMMANDS = ("finetune", "pretrain")
"""Commands whose ``--resume`` reads the ``--output`` run's config under the other sources."""
# Keys of a saved run config that describe how that run was started, not what it is.
RUN_LAYER_EXCLUDE = frozenset(
    {"load", "from_scratch", "test_only", "dry", "submit", "deepspeed", "local_rank", "allow_partial_load", "resume", "overwrite",
     "init_task_map"}
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
RUN_KEY = "_run"
"""Key of a run's config.json with where the run came from (command line, versions, commit, host, time)."""
RESUMES_KEY = "resumes"
"""Key of a run's config.json: the append-only list of its resumes and their allowed changes."""
META_KEYS = frozenset({EXPLICIT_KEY, RUN_KEY, RESUMES_KEY})
"""Keys of a run's config.json that describe the run, not its settings."""


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
    for key in META_KEYS:
        data.pop(key, None)
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


def _task_layers(command: str | None, task: str | None, cli_layer: Layer, errors: list[Issue]) -> list[Layer]:
    """The positional TASK: a single task sets ``tasks``; ``multitask`` takes the list from --tasks/profiles."""
    if task is None or task == "multitask":
        return []
    if task not in KNOWN_TASKS:
        close = difflib.get_close_matches(task, [*KNOWN_TASKS, "multitask"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        errors.append(Issue("R44", "error", f"unknown TASK {task!r}; known: {', '.join(KNOWN_TASKS)}, multitask{hint}",
                            ("tasks",)))
        return []
    cli_tasks = cli_layer.values.get("tasks")
    try:
        named = parse_task_list(cli_tasks) if cli_tasks is not None else []
    except ValueError:
        named = None  # reported by validation of --tasks
    if named is not None and named not in ([task], []):
        errors.append(Issue("R35", "error", f"TASK {task} conflicts with --tasks {cli_tasks}; for several tasks use "
                            f"`vlcli {command or 'finetune'} multitask --tasks ...`.", ("tasks",)))
    return [Layer(TASK_SOURCE, {"tasks": [task]})]


def _pretrain_layer(layers: list[Layer], warnings: list[Issue]) -> Layer:
    """`vlcli pretrain` runs one task, "pretrain"; its objectives are --losses, so other tasks are ignored."""
    given = next((ly for ly in reversed(layers) if "tasks" in ly.values), None)
    try:
        named = parse_task_list(given.values["tasks"]) if given is not None else []
    except ValueError:
        named = None  # not a task list at all: ignored like any other
    if named not in ([], [PRETRAIN_TASK]) and given is not None:
        warnings.append(Issue("R45", "warning", f"--tasks {given.values['tasks']} (from {given.source}) "
                              "ignored by `vlcli pretrain`: its objectives are --losses.", ("tasks",)))
    return Layer(PRETRAIN_SOURCE, {"tasks": [PRETRAIN_TASK]})


def _latest(layers: list[Layer], name: str) -> Any:
    return next((ly.values[name] for ly in reversed(layers) if name in ly.values), FIELDS[name].default)


def _given(value: Any) -> bool:
    """A ``load`` value that names something (not empty, ``none`` or the reference's ``#TODO`` placeholder)."""
    return isinstance(value, str) and bool(value.strip()) and not value.strip().startswith("#TODO") \
        and value.strip().lower() not in {"none", "null"}


def _run_layer(command: str | None, layers: list[Layer], errors: list[Issue]) -> tuple[Path | None, Path | None]:
    """Resolve ``load``; insert the run's saved config just above the defaults where the command reads it.

    ``eval`` / ``submit`` / ``inspect-config`` with ``--load`` read the checkpoint's run; ``finetune`` /
    ``pretrain --resume`` read the run in ``--output``. Returns (load path, run config path).
    """
    load_path: Path | None = None
    run_cfg: Path | None = None
    load_value = _latest(layers, "load")
    if _given(load_value):
        try:
            load_path = resolve_load(load_value, str(_latest(layers, "output")))
        except CheckpointNotFoundError as exc:
            errors.append(Issue("R47", "error", str(exc), ("load",)))
        if load_path is not None and command in CHECKPOINT_COMMANDS:
            run_cfg = run_config_for(load_path)
    if command in RESUME_COMMANDS and _resume_asked(layers):
        candidate = Path(str(_latest(layers, "output"))) / "config.json"
        try:
            run_cfg = candidate if candidate.is_file() else None
        except (OSError, ValueError):
            run_cfg = None
    if run_cfg is not None:
        run_layer = _run_config_layer(run_cfg, errors)
        if run_layer is not None:
            layers.insert(0, run_layer)
    return load_path, run_cfg


def _resume_asked(layers: list[Layer]) -> bool:
    value = _latest(layers, "resume")
    return value is True or (isinstance(value, str) and value.strip().lower() in {"true", "yes", "1", "on"})


def _settings(layers: list[Layer], errors: list[Issue]) -> tuple[Settings, dict[str, Any], dict[str, str]]:
    """Merge the layers (later wins), validate types; bad values are reported and fall back to defaults."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {name: DEFAULT_SOURCE for name in FIELDS}
    for layer in layers:
        for name, value in layer.values.items():
            values[name] = value
            sources[name] = layer.source
    try:
        return Settings.from_flat(values), values, sources
    except ValidationError as exc:
        type_errors, bad = _type_issues(exc, sources, values)
        errors.extend(type_errors)
        for name in bad:
            values.pop(name, None)
            sources[name] = DEFAULT_SOURCE
        return Settings.from_flat(values), values, sources


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
    warnings: list[Issue] = []
    layers: list[Layer] = []
    for ref in profiles:
        for pl in profile_mod.load(ref):
            layers.append(_canonical_layer(pl.label, pl.values, f"in {pl.label} ({pl.path})", errors))
    if adapter is not None:
        al = profile_mod.adapter_layer(adapter)
        layers.append(_canonical_layer(al.label, al.values, f"in {al.label}", errors))
    cli_layer = _canonical_layer(CLI_SOURCE, dict(cli or {}), "on the command line", errors)
    layers.append(cli_layer)
    layers += _task_layers(command, task, cli_layer, errors)
    if command == "pretrain":
        layers.append(_pretrain_layer(layers, warnings))
    load_path, run_cfg = _run_layer(command, layers, errors)

    settings, values, sources = _settings(layers, errors)
    explicit = {k for k, s in sources.items() if s != DEFAULT_SOURCE}
    settings.derived = derive(settings, explicit, load_path, run_cfg)
    for issue in check(RuleContext(settings, settings.derived, explicit, command, env)):
        (errors if issue.level == "error" else warnings).append(issue)
    return Resolution(command, settings, settings.flat(mode="json"), sources, errors, warnings)


def settings_from_run_config(path: str | Path) -> Settings:
    """Rebuild validated settings from a run's saved ``config.json`` (raises on problems)."""
    errors: list[Issue] = []
    layer = _run_config_layer(Path(path), errors)
    if layer is None:
        raise ConfigError(errors, [])
    return resolve(cli=layer.values).raise_for_errors()


__all__ = ["Resolution", "canonical_name", "resolve", "settings_from_run_config", "suggest_name"]
