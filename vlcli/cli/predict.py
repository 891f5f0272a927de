"""`vlcli predict --load RUN --image photo.jpg --question "..."`: a trained run on your own images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from vlcli.cli import render


def predict(
    load: Path = typer.Option(..., "--load", help="Run directory written by `vlcli finetune` (or RUN/BEST)."),
    image: Path | None = typer.Option(None, "--image", help="The image (JPEG / PNG)."),
    question: str | None = typer.Option(None, "--question", help="The question (vqa / gqa runs)."),
    items: Path | None = typer.Option(None, "--input", help='JSONL of {"image": path, "question"|"text": ...} lines.'),
    output: Path | None = typer.Option(None, "--output", help="Predictions JSONL for --input (default: stdout)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output file."),
    task: str | None = typer.Option(None, "--task", help="The run's task to use (multitask runs; caption captions)."),
    topk: int | None = typer.Option(None, "--topk", min=1, max=20,
                                    help="The K most likely answers with their probabilities."),
    checkpoint: str = typer.Option("BEST", "--checkpoint", metavar="BEST|LAST|EpochNN|FILE", help="Which checkpoint."),
    features: Path | None = typer.Option(None, "--features",
                                         help="BUTD runs: precomputed region features h5. CLIP runs: the "
                                              "extract-features folder (or manifest) when not under the data root."),
    image_id: str | None = typer.Option(None, "--image_id", help="The image's id in --features (default: file stem)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text / tables."),
) -> None:
    """Answer a question about an image (or caption it) with a trained run; see docs/predict.md."""
    from vlcli.cli.training import _quiet_libraries
    from vlcli.predict import Predictor, read_items

    _check_options(image, items, question, image_id, output, overwrite)
    rows = read_items(items) if items is not None else [_one_item(image, question, image_id)]
    _quiet_libraries()
    predictor = Predictor(load, checkpoint=checkpoint, device=device, task=task, features=features)
    results = [_jsonable(r) for r in predictor.predict(rows, topk=topk)]
    if output is not None:
        _write(output, results, as_json)
    elif as_json or items is not None:
        for r in results:
            print(json.dumps(r))
    elif topk:
        _print_table(results[0], predictor.task)
    else:
        render.out.print(escape(results[0]["answer"]))


def _check_options(image: Path | None, items: Path | None, question: str | None, image_id: str | None,
                   output: Path | None, overwrite: bool) -> None:
    """Refuse combinations in which an option would be ignored."""
    from vlcli.predict import PredictError

    if (image is None) == (items is None):
        raise PredictError("give one image with --image (and --question), or many with --input FILE.jsonl")
    if items is not None and (question is not None or image_id is not None):
        flag = "--question" if question is not None else "--image_id"
        raise PredictError(f"{flag}: with --input each line carries its own; drop {flag}")
    if output is not None and items is None:
        raise PredictError("--output writes the predictions of --input; for one image the answer is printed")
    if overwrite and output is None:
        raise PredictError("--overwrite replaces an existing --output file; give --output or drop --overwrite")
    if output is not None and output.exists() and not overwrite:
        raise PredictError(f"--output {output}: the file exists; pass --overwrite to replace it")


def _one_item(image: Path | None, question: str | None, image_id: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"image": str(image), "_where": "cli"}
    if question is not None:
        item["question"] = question
    if image_id is not None:
        item["image_id"] = image_id
    return item


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """``topk`` as ``[{"answer", "probability"}]`` for JSON output."""
    if "topk" in row:
        row = {**row, "topk": [{"answer": a, "probability": p} for a, p in row["topk"]]}
    return row


def _write(output: Path, results: list[dict[str, Any]], as_json: bool) -> None:
    from vlcli.atomic import atomic_write

    text = "".join(json.dumps(r) + "\n" for r in results)
    atomic_write(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if as_json:
        print(json.dumps({"output": str(output), "predictions": len(results)}))
    else:
        render.err.print(f"[green]{len(results)} predictions written to {escape(str(output))}[/]")


def _print_table(result: dict[str, Any], task: str) -> None:
    table = Table(title=escape(str(result.get("question", task))), title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("answer")
    table.add_column("probability", justify="right")
    for rank, item in enumerate(result["topk"], 1):
        table.add_row(str(rank), escape(item["answer"]), f"{item['probability']:.4f}")
    render.out.print(table)
