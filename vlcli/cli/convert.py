"""`vlcli convert`: the official dataset downloads -> the training files the original layout expects."""

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlcli.cli import render
from vlcli.errors import VlcliError

# Where each converter writes by default (relative to --data_root; spec data-and-eval §0.1).
DEFAULT_OUT = {"vqa": "vqa", "gqa": "GQA", "nlvr": "nlvr", "caption": "COCO"}


def convert(
    dataset: str = typer.Argument(..., help="vqa, gqa, nlvr or caption.", show_default=False),
    data: Path = typer.Option(
        ..., "--data", help="Folder with the official files under their official names."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder \\[default: DATA_ROOT/<vqa|GQA|nlvr|COCO>]."
    ),
    data_root: Path = typer.Option(Path("datasets"), "--data_root", help="Data root for the default --out."),
    karpathy: Optional[Path] = typer.Option(
        None,
        "--karpathy",
        help="vqa: Karpathy's dataset_coco.json, to also write karpathy_{train,val,test}.json.",
    ),
    splits: Optional[Path] = typer.Option(
        None, "--splits", help="caption: Karpathy's dataset_coco.json or {split: \\[coco ids]}."
    ),
    min_answer_count: Optional[int] = typer.Option(
        None, "--min_answer_count", help="Answer-table threshold (vqa 9, gqa 1)."
    ),
) -> None:
    """Convert official downloads (VQA v2, GQA, NLVR2, COCO captions) into the original's training files."""
    from vlcli.data import convert as conv

    if dataset not in conv.CONVERTERS:
        raise VlcliError(f"DATASET {dataset!r}: expected one of {', '.join(conv.CONVERTERS)}")
    if not data.is_dir():
        raise VlcliError(f"--data {data}: no such folder")
    target = out if out is not None else data_root / DEFAULT_OUT[dataset]
    if dataset == "vqa":
        written = conv.convert_vqa(
            data, target, karpathy, 9 if min_answer_count is None else min_answer_count
        )
    elif dataset == "gqa":
        written = conv.convert_gqa(data, target, 1 if min_answer_count is None else min_answer_count)
    elif dataset == "nlvr":
        written = conv.convert_nlvr(data, target)
    else:
        if splits is None:
            raise VlcliError(
                "`vlcli convert caption` needs --splits (Karpathy's dataset_coco.json or {split: [coco ids]})"
            )
        written = conv.convert_caption(data, target, splits)
    table = Table(title=f"{dataset}: files written", title_justify="left")
    table.add_column("file")
    table.add_column("records", justify="right")
    for path, count in written:
        table.add_row(str(path), f"{count:,}")
    render.out.print(table)
