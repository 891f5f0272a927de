"""`vlcli demo-data`: create the built-in synthetic demo world (what `--profile demo` uses)."""

from pathlib import Path

import typer
from rich.table import Table

from vlcli.cli import render
from vlcli.errors import VlcliError

CLIP_TYPES = ("RN50", "RN101", "RN50x4", "ViT")


def demo_data(
    root: Path = typer.Argument(Path("snap/demo-data"), help="Data root to create (the demo profile uses snap/demo-data)."),
    feature_type: str = typer.Option("RN50", "--feature_type", "--feature-type", help="CLIP features to extract: RN50, RN101, RN50x4 or ViT."),
) -> None:
    """Create the synthetic shapes world: images + annotations of every task in the original layout, tiny
    T5 / BART backbones, and CLIP grid features from a fixed random-init backbone (skips what exists)."""
    from vlcli.demo.setup import ensure_world

    if feature_type not in CLIP_TYPES:
        raise VlcliError(f"--feature_type {feature_type}: the demo world extracts CLIP features; use one of {', '.join(CLIP_TYPES)}")
    from vlcli.train.rundir import check_output

    check_output(root, "DIR")  # a file in the way or a read-only place: one line, before any work
    summary = ensure_world(root, feature_type, progress=render.ProgressBar("images"))
    table = Table(title=f"Demo world in {root}", title_justify="left", show_header=False)
    table.add_column("", style="cyan")
    table.add_column("")
    table.add_row("images", f"{summary.get('images_written', 0):,} ({summary.get('image_size')} px)")
    table.add_row("backbones", f"{root / 'backbones' / 't5-demo'}, {root / 'backbones' / 'bart-demo'}")
    table.add_row("features", f"{feature_type} grid features under */clip_features/data_clip_{feature_type}_att")
    if "majority_baseline" in summary:
        table.add_row("VQA majority baseline", f"'{summary['majority_answer']}': {100 * summary['majority_baseline']:.2f} % on karpathy_val")
    render.out.print(table)
    render.out.print("next: [bold]vlcli finetune vqa --adapter lora --profile demo[/]")
