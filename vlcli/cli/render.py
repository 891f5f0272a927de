"""Rich rendering of configurations, findings and errors (the only place that formats output)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from vlcli.config.resolve import DEFAULT_SOURCE, Resolution
from vlcli.config.settings import FIELDS, SECTION_MODELS, SECTION_TITLES, Settings
from vlcli.errors import Issue

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fmt(value: Any) -> str:
    """A value as a user would type it."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "''"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() or value.endswith(" ") else value
    return str(value)


def error_line(message: str) -> None:
    """One red line on stderr."""
    err.print(f"[bold red]error:[/] {escape(message)}")


def pending_line(message: str) -> None:
    """One yellow line on stderr: valid input, but work this version does not do."""
    err.print(f"[bold yellow]not yet:[/] {escape(message)}")


def issue_lines(issues: list[Issue]) -> None:
    for issue in issues:
        colour = "red" if issue.level == "error" else "yellow"
        tag = escape(f"[{issue.rule}]")
        err.print(f"[bold {colour}]{issue.level} {tag}[/] {escape(issue.message)}")


def warnings_panel(warnings: list[Issue]) -> Panel | None:
    if not warnings:
        return None
    body = "\n".join(f"[yellow]{escape(f'[{w.rule}]')}[/] {escape(w.message)}" for w in warnings)
    return Panel(
        body, title=f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}", border_style="yellow"
    )


def section_tables(res: Resolution, changed_only: bool = False) -> list[Table]:
    """One table per section: argument, value, default, source (non-defaults highlighted)."""
    tables = []
    for section in SECTION_MODELS:
        table = Table(title=SECTION_TITLES[section], title_justify="left", expand=False)
        table.add_column("argument", style="cyan", no_wrap=True)
        table.add_column("value", no_wrap=False)
        table.add_column("default", style="dim")
        table.add_column("source", style="dim")
        rows = 0
        for name, spec in FIELDS.items():
            if spec.section != section:
                continue
            value = res.settings.get(name) if res.settings else res.values.get(name)
            source = res.sources.get(name, DEFAULT_SOURCE)
            differs = value != spec.default
            if changed_only and not differs and source == DEFAULT_SOURCE:
                continue
            shown = escape(fmt(value))
            if differs:
                shown = f"[bold yellow]{shown}[/]"
            table.add_row(
                name, shown, escape(fmt(spec.default)), escape(source) if source != DEFAULT_SOURCE else ""
            )
            rows += 1
        if rows:
            tables.append(table)
    return tables


def derived_table(settings: Settings) -> Group:
    """Derived values and the per-task table."""
    d = settings.derived
    assert d is not None
    head = Table(title="Derived", title_justify="left")
    head.add_column("value", style="cyan")
    head.add_column("resolved")
    head.add_row("feat_dim", str(d.feat_dim))
    head.add_row(
        "backbone", f"{settings.model.backbone} ({d.backbone_family or '?'}, d_model {d.d_model or '?'})"
    )
    head.add_row("tasks", fmt(d.tasks) + (" (multitask)" if d.multitask else ""))
    head.add_row("valid_batch_size", str(d.valid_batch_size))
    head.add_row("load", d.load_path or "none")
    if d.run_config:
        head.add_row("run config", d.run_config)
    parts: list[Any] = [head]
    if d.per_task:
        per = Table(title="Per task", title_justify="left")
        for col in ("task", "batch", "valid batch", "text len", "gen len", "prompt"):
            per.add_column(col)
        for task, run in d.per_task.items():
            per.add_row(
                task,
                str(run.batch_size),
                str(run.valid_batch_size),
                str(run.max_text_length),
                str(run.gen_max_length),
                escape(repr(run.prompt)),
            )
        parts.append(per)
    return Group(*parts)


def parameter_table(report: dict[str, Any]) -> Any:
    """The trainable-parameter table of :func:`vlcli.model.params.parameter_report`."""
    if "unavailable" in report:
        return Text(f"parameters: not counted ({report['unavailable']})", style="dim")
    table = Table(title="Parameters (counted on the meta device)", title_justify="left")
    for col in ("group", "total", "trainable", "% of all"):
        table.add_column(col, justify="left" if col == "group" else "right")
    total = report["total"] or 1
    for name, group in sorted(report["groups"].items()):
        table.add_row(
            name, f"{group['total']:,}", f"{group['trainable']:,}", f"{100 * group['trainable'] / total:.2f}"
        )
    table.add_row(
        "[bold]all[/]",
        f"[bold]{report['total']:,}[/]",
        f"[bold]{report['trainable']:,}[/]",
        f"[bold]{report['percent']:.2f}[/]",
    )
    return table


def print_json(data: Any) -> None:
    out.print_json(json.dumps(data), highlight=False) if out.is_terminal else print(
        json.dumps(data, indent=2)
    )


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 and task.completed else None
        return Text(f"{rate:.1f} {self.unit}/s" if rate else f"- {self.unit}/s", style="cyan")


class ProgressBar:
    """The library's progress interface (start / advance / finish) rendered as one rich bar on stderr."""

    def __init__(self, unit: str):
        self.unit = unit
        self.bar: Any = None
        self.task: Any = None

    def start(self, total: int | None, description: str) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(self.unit),
                            TimeElapsedColumn(), console=err, transient=True)
        self.bar.start()
        self.task = self.bar.add_task(escape(description), total=total)

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
