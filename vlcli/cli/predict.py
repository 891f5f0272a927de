"""`vlcli predict --load RUN --image photo.jpg --question "..."`: a trained run on your own images."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vlcli.cli import render


def predict(
    load: Path = typer.Option(..., "--load", help="Run directory written by `vlcli finetune`."),
    image: Path | None = typer.Option(None, "--image", help="The image (JPEG / PNG)."),
    question: str | None = typer.Option(None, "--question", help="The question (vqa / gqa runs)."),
    items: Path | None = typer.Option(None, "--input", help='JSONL of {"image": path, "question"|"text": ...} lines.'),
    output: Path | None = typer.Option(None, "--output", help="Predictions JSONL for --input (default: stdout)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
    task: str | None = typer.Option(None, "--task", help="The run's task to use (multitask runs; caption captions)."),
    topk: int | None = typer.Option(None, "--topk", min=1, max=20, help="Show the K most likely answers with probabilities."),
    checkpoint: str = typer.Option("BEST", "--checkpoint", metavar="BEST|LAST|EpochNN", help="Which checkpoint."),
    features: Path | None = typer.Option(None, "--features", help="Precomputed BUTD features h5 (BUTD runs)."),
    image_id: str | None = typer.Option(None, "--image_id", help="The image's id in --features (default: file stem)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text / tables."),
) -> None:
    """Answer a question about an image (or caption it) with a trained run; see docs/predict.md."""
    from vlcli.atomic import atomic_write
    from vlcli.predict import PredictError, Predictor, read_items

    if (image is None) == (items is None):
        raise PredictError("give one image with --image (and --question), or many with --input FILE.jsonl")
    if output is not None and output.exists() and not overwrite:
        raise PredictError(f"--output {output}: the file exists; pass --overwrite to replace it")
    if output is not None and items is None:
        raise PredictError("--output writes the predictions of --input; for one image the answer is printed")
    rows = read_items(items) if items is not None else [
        {"image": str(image), **({"question": question} if question is not None else {}),
         **({"image_id": image_id} if image_id else {})}]
    predictor = Predictor(load, checkpoint=checkpoint, device=device, task=task, features=features)
    results = predictor.predict(rows, topk=topk)
    if output is not None:
        text = "".join(json.dumps(r) + "\n" for r in results)
        atomic_write(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        render.err.print(f"[green]{len(results)} predictions written to {escape(str(output))}[/]")
    elif as_json or items is not None:
        for r in results:
            print(json.dumps(r))
    elif topk:
        table = Table(title=f"{results[0].get('question', predictor.task)}", title_justify="left")
        table.add_column("answer")
        table.add_column("probability", justify="right")
        for answer, prob in results[0]["topk"]:
            table.add_row(escape(answer), f"{prob:.4f}")
        render.out.print(table)
    else:
        render.out.print(escape(results[0]["answer"]))
