"""What every command shares: one option per settings field, profiles, ``--adapter``, TASK."""

import functools
import inspect
from collections.abc import Callable
from typing import Any, Optional

import typer
from rich.markup import escape

from vlcli.config import resolve
from vlcli.config.profiles import ADAPTER_SHORTHANDS
from vlcli.config.resolve import Resolution
from vlcli.config.settings import FIELDS, SECTION_TITLES
from vlcli.config.usage import unused_warning
from vlcli.errors import ConfigError

FIELD_PREFIX = "cfg__"
GENERAL_PANEL = "General"


_METAVARS = {
    "train_topk": "N|FRAC",
    "valid_topk": "N|FRAC",
    "valid_batch_size": "INT",
    "image_size": "H,W",
    "tasks": "LIST",
}


def _metavar(name: str) -> str:
    if name in _METAVARS:
        return _METAVARS[name]
    spec = FIELDS[name]
    if spec.is_bool:
        return "[BOOL]"
    default = spec.default
    if isinstance(default, bool):
        return "[BOOL]"
    if isinstance(default, int):
        return "INT"
    if isinstance(default, float):
        return "FLOAT"
    return "TEXT"


def _help(name: str) -> str:
    spec = FIELDS[name]
    default = spec.default
    if isinstance(default, tuple):
        shown = ",".join(str(x) for x in default)
    elif isinstance(default, list):
        shown = ", ".join(default) or "''"
    elif default is None:
        shown = "none"
    elif isinstance(default, str):
        shown = repr(default).replace(",", ", ")  # breakable: a long unbroken word would squeeze the option names
    else:
        shown = str(default).lower() if isinstance(default, bool) else str(default)
    extra = " Off: the --no- prefix." if spec.is_bool else ""
    return escape(f"{spec.description}{extra} [default: {shown}]")


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a Typer command one ``--name`` option per settings field, grouped by section.

    The wrapped function receives them as one dict, ``overrides``, holding only the options given.
    """
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name != "overrides"]
    for name in FIELDS:
        option = typer.Option(
            None,
            f"--{name}",
            help=_help(name),
            metavar=_metavar(name),
            rich_help_panel=SECTION_TITLES[FIELDS[name].section],
            show_default=False,
        )
        params.append(
            inspect.Parameter(FIELD_PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[str])
        )

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        overrides = {
            k[len(FIELD_PREFIX):]: v for k, v in kwargs.items() if k.startswith(FIELD_PREFIX) and v is not None
        }
        rest = {k: v for k, v in kwargs.items() if not k.startswith(FIELD_PREFIX)}
        return func(**rest, overrides=overrides)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


TaskArgument = typer.Argument(
    None,
    metavar="TASK",
    help="vqa, gqa, nlvr, caption, refcoco, vcr, cls, or multitask (tasks from --tasks).",
    show_default=False,
)
ProfileOption = typer.Option(
    None,
    "--profile",
    "-p",
    help="Built-in profile name or JSONC file; repeat to merge left to right (`inspect-config --list-profiles`).",
    rich_help_panel=GENERAL_PANEL,
    show_default=False,
)
AdapterOption = typer.Option(
    None,
    "--adapter",
    help=f"Apply a method's paper recipe: {', '.join(ADAPTER_SHORTHANDS)}.",
    rich_help_panel=GENERAL_PANEL,
    show_default=False,
)


def resolve_command(
    command: str,
    task: str | None,
    profile: list[str] | None,
    adapter: str | None,
    overrides: dict[str, Any],
) -> Resolution:
    """Resolve and validate; raise :class:`ConfigError` (all errors) when invalid."""
    res = resolve(command, task, profile or [], overrides, adapter)
    if res.errors:
        raise ConfigError(res.errors, res.warnings)
    ignored = unused_warning(command, res.sources)
    if ignored is not None:
        res.warnings.append(ignored)
    return res
