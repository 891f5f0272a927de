"""`vlcli export RUN --format vlcli|peft --out DIR`: a trained run for others to load."""

from pathlib import Path

import typer
from rich.markup import escape

from vlcli.cli import render


def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run directory written by `vlcli finetune` / `vlcli pretrain`."),
    out: Path = typer.Option(..., "--out", help="New folder to write (refused if it exists and is not empty)."),
    fmt: str = typer.Option("vlcli", "--format", metavar="vlcli|peft",
                            help="vlcli: checkpoint + config + card (any method); peft: PEFT adapter folder (LoRA)."),
    checkpoint: str = typer.Option("BEST", "--checkpoint", metavar="BEST|LAST|EpochNN", help="Which checkpoint."),
) -> None:
    """Export a run: vlcli's own format (loads back with --load), or PEFT's adapter format for LoRA runs."""
    from vlcli.export import export_run

    done = export_run(run, out, fmt, checkpoint)
    adapters = f" (adapters: {', '.join(done.adapters)})" if done.adapters else ""
    render.out.print(f"[green]exported[/] {escape(str(run))} as {fmt} to {escape(str(done.out))}{adapters}; "
                     f"see {escape(str(done.out / 'README.md'))}")
