"""`vlcli inspect-config`: the resolved configuration, where each value came from, and what is wrong."""

from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vlcli.cli import render
from vlcli.cli.common import AdapterOption, ProfileOption, TaskArgument, settings_options
from vlcli.config import profiles as profile_mod
from vlcli.config import resolve
from vlcli.config.resolve import Resolution


def list_profiles(as_json: bool = False) -> None:
    """The built-in profiles: a table, or ``[{"name", "description", "path"}]`` as JSON."""
    rows = []
    for name in profile_mod.builtin_names():
        _, path = profile_mod.find(name)
        rows.append({"name": name, "description": profile_mod.summary(path), "path": str(path)})
    if as_json:
        render.print_json(rows)
        return
    table = Table(title="Built-in profiles", title_justify="left")
    table.add_column("name", style="cyan", no_wrap=True)
    table.add_column("description")
    for row in rows:
        table.add_row(row["name"], escape(row["description"]))
    render.out.print(table)
    render.out.print(f"[dim]folder: {escape(str(profile_mod.builtin_dir()))}[/]")


def changed_only(data: dict[str, Any], res: Resolution) -> dict[str, Any]:
    """``--changed --json``: config and sources of the arguments that differ from their default or were set."""
    from vlcli.config.resolve import DEFAULT_SOURCE
    from vlcli.config.settings import FIELDS

    defaults = {name: spec.default for name, spec in FIELDS.items()}
    keep = {name for name, value in data["config"].items()
            if res.sources.get(name, DEFAULT_SOURCE) != DEFAULT_SOURCE
            or (res.settings is not None and res.settings.get(name) != defaults.get(name))}
    return {**data, "config": {k: v for k, v in data["config"].items() if k in keep},
            "sources": {k: v for k, v in data["sources"].items() if k in keep}}


@settings_options
def inspect_config(
    task: Optional[str] = TaskArgument,
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    as_json: bool = typer.Option(
        False, "--json", help="Print config, sources, warnings and errors as JSON.", rich_help_panel="General"
    ),
    show_profiles: bool = typer.Option(
        False,
        "--list-profiles",
        "--list_profiles",
        help="List the built-in profiles and exit.",
        rich_help_panel="General",
    ),
    changed: bool = typer.Option(
        False,
        "--changed",
        help="Show only arguments that differ from their defaults.",
        rich_help_panel="General",
    ),
    overrides: Any = None,
) -> None:
    """Show the resolved configuration with each value's source, derived values, warnings and errors."""
    if show_profiles:
        list_profiles(as_json)
        return
    res = resolve("inspect-config", task, profile or [], overrides, adapter)
    params = _parameters(res)
    if as_json:
        data = {**res.to_json(), "parameters": params}
        render.print_json(changed_only(data, res) if changed else data)
        raise typer.Exit(2 if res.errors else 0)
    for table in render.section_tables(res, changed_only=changed):
        render.out.print(table)
    if res.settings is not None and res.settings.derived is not None:
        render.out.print(render.derived_table(res.settings))
        if params is not None:
            render.out.print(render.parameter_table(params))
    panel = render.warnings_panel(res.warnings)
    if panel is not None:
        render.out.print(panel)
    if res.errors:
        render.issue_lines(res.errors)
        raise typer.Exit(2)
    render.out.print("[green]configuration valid[/]")


def _parameters(res: Resolution) -> Optional[dict[str, Any]]:
    """Parameter counts on the meta device (torch is imported only here), or None for invalid settings."""
    if res.errors or res.settings is None:
        return None
    from vlcli.model.params import parameter_report

    return parameter_report(res.settings)
