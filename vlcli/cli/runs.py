"""`vlcli runs [DIR]`: a table of the runs under a folder (default snap/), or JSON."""

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from vlcli.cli import render

_STATUS_STYLE = {"finished": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}


def runs(
    folder: Optional[Path] = typer.Argument(None, metavar="DIR", help="Folder holding run directories \\[default: snap]."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as a JSON list."),
) -> None:
    """List the runs under DIR: name, tasks, method, trainable share, best score, epochs, status, start time."""
    from vlcli.train.runs import as_json as rows_as_json
    from vlcli.train.runs import find_runs

    root = folder or Path("snap")
    rows = find_runs(root)
    if as_json:
        render.print_json(rows_as_json(rows))
        return
    table = Table(title=f"Runs under {escape(str(folder or 'snap'))}", title_justify="left")
    for name, justify in (("run", "left"), ("tasks", "left"), ("method", "left"), ("trainable %", "right"),
                          ("best score", "right"), ("epochs", "right"), ("status", "left"), ("started", "left")):
        table.add_column(name, justify=justify, no_wrap=name in ("status", "epochs"))  # type: ignore[arg-type]
    for r in rows:
        style = _STATUS_STYLE.get(r.status, "white")
        table.add_row(escape(_relative(Path(r.path), root)), ",".join(r.tasks), r.method,
                      f"{r.trainable_percent:.2f}" if r.trainable_percent is not None else "-",
                      f"{r.best_score:.2f} (ep {r.best_epoch})" if r.best_score is not None else "-",
                      f"{r.epochs_done}/{r.epochs if r.epochs is not None else '?'}", f"[{style}]{r.status}[/]",
                      r.started or "-")
    render.out.print(table if rows else "no runs found")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)
