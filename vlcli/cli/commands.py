"""`finetune`, `pretrain`, `eval`, `submit`, `extract-features`: validate the full configuration, then run.

`finetune`, `pretrain`, `eval` and `submit` run the engine (`vlcli/cli/training.py`) and `extract-features`
the extractor (`vlcli/features/`).
"""

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from vlcli.cli import render
from vlcli.cli.common import AdapterOption, ProfileOption, TaskArgument, resolve_command, settings_options
from vlcli.config.resolve import Resolution
from vlcli.errors import ConfigError, Issue, VlcliError


def _validated(command: str, task: Optional[str], profile: Optional[list[str]], adapter: Optional[str],
               overrides: dict[str, Any], needs_tasks: bool = True) -> Resolution:
    res = resolve_command(command, task, profile, adapter, overrides)
    assert res.settings is not None and res.settings.derived is not None
    if needs_tasks and not res.settings.derived.tasks:
        hint = " or a --load run directory that has a config.json" if command in ("eval", "submit") else ""
        raise ConfigError([Issue("R35", "error", f"`vlcli {command}` needs a TASK (e.g. vqa) or --tasks{hint}.", ("tasks",))])
    render.issue_lines(res.warnings)
    return res


@settings_options
def finetune(
    task: Optional[str] = TaskArgument,
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Fine-tune on one task (`vlcli finetune vqa`) or a mix (`vlcli finetune multitask --tasks vqa,gqa`).
    With --test_only it trains nothing: it evaluates --load on the test split, exactly as `vlcli eval --test_only`."""
    if _flag_given(overrides, "test_only"):
        _eval_checkpoint(task, profile, adapter, overrides, as_json=False, vqa_eval_mode=None)
        return
    res = _validated("finetune", task, profile, adapter, overrides)
    from vlcli.cli.training import run_finetune

    run_finetune(res.settings)


def _flag_given(overrides: dict[str, Any] | None, name: str) -> bool:
    from vlcli.config.types import parse_bool

    try:
        return bool(parse_bool((overrides or {}).get(name, False)))
    except ValueError:
        return False  # validation reports the bad value


@settings_options
def pretrain(
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Vision-language pretraining on LXMERT data with the objectives in --losses (lm, qa, itm,
    ground_caption, refer, caption); an EpochNN checkpoint after every epoch."""
    res = _validated("pretrain", None, profile, adapter, overrides)
    from vlcli.cli.training import run_pretrain

    run_pretrain(res.settings)


EVAL_PANEL = "Scoring a predictions file"
_EVAL_FILE_TASKS = ("vqa", "caption")


@settings_options
def evaluate(
    task: Optional[str] = TaskArgument,
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", help="Score this predictions file (vqa: [{question_id, answer}]; "
        "caption: [{image_id, caption}]) instead of a checkpoint.", rich_help_panel=EVAL_PANEL, show_default=False),
    questions: Optional[Path] = typer.Option(
        None, "--questions", help="VQA: official question file; its questions are the evaluated set "
        "(default: every annotated question).", rich_help_panel=EVAL_PANEL, show_default=False),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations", help="Official annotation file (VQA v2 annotations, or COCO captions).",
        rich_help_panel=EVAL_PANEL, show_default=False),
    vqa_eval_mode: Optional[str] = typer.Option(
        None, "--vqa_eval_mode", "--vqa-eval-mode", metavar="vlt5|official",
        help="VQA evaluator version: vlt5 (the 2017 one VL-T5/VL-Adapter report) or official (today's server). "
        "\\[default: vlt5]", rich_help_panel=EVAL_PANEL, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object.",
                                 rich_help_panel=EVAL_PANEL),
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Evaluate a checkpoint on a split (`vlcli eval --test_only --load snap/run`), or score a predictions file
    (`vlcli eval vqa --predictions results.json --annotations A.json`)."""
    from vlcli.metrics.vqa import DEFAULT_MODE, MODES

    if vqa_eval_mode is not None and vqa_eval_mode not in MODES:
        raise VlcliError(f"--vqa_eval_mode {vqa_eval_mode}: use one of {', '.join(MODES)}")
    if predictions is None:
        given = [name for name, value in (("--questions", questions), ("--annotations", annotations)) if value]
        if given:
            raise VlcliError(f"{' and '.join(given)} score a predictions file: add --predictions FILE, or drop them "
                             "to evaluate --load on the run's own annotations")
        _eval_checkpoint(task, profile, adapter, overrides, as_json, vqa_eval_mode)
        return
    result = _score_predictions_file(task, predictions, questions, annotations, vqa_eval_mode or DEFAULT_MODE)
    ignored = [f"--{k}" for k in overrides or {}] + (["--profile"] if profile else []) + (["--adapter"] if adapter else [])
    if ignored:
        render.err.print(f"[bold yellow]warning:[/] {', '.join(ignored)} ignored when scoring a predictions file")
    if as_json:
        render.print_json(result)
    else:
        _render_eval_result(result)


def _eval_checkpoint(task: Optional[str], profile: Optional[list[str]], adapter: Optional[str],
                     overrides: dict[str, Any], as_json: bool, vqa_eval_mode: Optional[str]) -> None:
    """`vlcli eval --load` (and `finetune --test_only`): metrics as a table, or one JSON object on stdout."""
    res = _validated("eval", task, profile, adapter, overrides)
    settings = res.settings
    if settings.derived.load_path is None:
        raise VlcliError("`vlcli eval` needs --load <checkpoint or run directory> (or --predictions FILE)")
    if vqa_eval_mode is not None and "vqa" not in settings.derived.tasks:
        raise VlcliError(f"--vqa_eval_mode {vqa_eval_mode}: this run has no VQA task "
                         f"({', '.join(settings.derived.tasks)}); drop it")
    from vlcli.cli.evaluation import output_dir, run_eval
    from vlcli.cli.training import _results_table

    out = output_dir(settings, "eval", res.sources.get("output") == "cli")
    results = run_eval(settings, out, vqa_eval_mode)
    if as_json:
        render.print_json(results)
        return
    render.out.print(_results_table(f"Evaluation of {settings.derived.load_path}", results))
    render.out.print(f"[dim]metrics and predictions in {escape(str(out))}[/]")


def _score_predictions_file(task: Optional[str], predictions: Path, questions: Optional[Path],
                            annotations: Optional[Path], mode: str) -> dict[str, Any]:
    """Check the options of `eval --predictions` and score the files (metrics dict, as JSON-ready values)."""
    from vlcli.metrics.files import score_caption_files, score_vqa_files

    if task not in _EVAL_FILE_TASKS:
        got = f" (got {task})" if task else ""
        raise VlcliError(f"`vlcli eval --predictions` scores a file for TASK vqa or caption{got}; "
                         "e.g. `vlcli eval vqa --predictions results.json --annotations A.json`")
    if annotations is None:
        raise VlcliError(f"`vlcli eval {task} --predictions` needs --annotations "
                         + ("(the official VQA v2 annotation file)" if task == "vqa" else "(a COCO caption file)"))
    if task == "vqa":
        return score_vqa_files(predictions, annotations, questions, mode)
    if questions is not None:
        raise VlcliError("--questions is for `vlcli eval vqa`; caption scoring reads only --annotations")
    return score_caption_files(predictions, annotations)


def _render_eval_result(result: dict[str, Any]) -> None:
    from rich.table import Table

    if result["task"] == "vqa":
        table = Table(title="VQA accuracy", title_justify="left",
                      caption=f"{result['mode']} evaluator, {result['questions']:,} questions", caption_justify="left")
        table.add_column("answer type", style="cyan")
        table.add_column("accuracy", justify="right")
        table.add_row("[bold]overall[/]", f"[bold]{result['overall']:.2f}[/]")
        for name, value in sorted(result["perAnswerType"].items()):
            table.add_row(escape(name), f"{value:.2f}")
        per_q = Table(title="Per question type", title_justify="left")
        per_q.add_column("question type", style="cyan")
        per_q.add_column("accuracy", justify="right")
        for name, value in sorted(result["perQuestionType"].items()):
            per_q.add_row(escape(name), f"{value:.2f}")
        render.out.print(table)
        render.out.print(per_q)
        return
    table = Table(title="COCO caption metrics", title_justify="left", caption=f"{result['images']:,} images",
                  caption_justify="left")
    table.add_column("metric", style="cyan")
    table.add_column("score", justify="right")
    for name, value in result.items():
        if name not in ("task", "images"):
            table.add_row(name, f"{value:.4f}")
    render.out.print(table)


@settings_options
def submit(
    task: Optional[str] = TaskArgument,
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", help="Write the submission from this predictions file ([{id, prediction}], as "
        "written by finetune/eval, or the official format) instead of running a checkpoint.",
        rich_help_panel="Submission", show_default=False),
    submission: Optional[Path] = typer.Option(
        None, "--submission", help="The file to write (one task) or the folder for one file per task (multitask) "
        "\\[default: <run>/submit/<time>/<task>_<official name>].",
        rich_help_panel="Submission", show_default=False),
    profile: Optional[list[str]] = ProfileOption,
    adapter: Optional[str] = AdapterOption,
    overrides: Any = None,
) -> None:
    """Write leaderboard files in the official formats, every id of the split exactly once: from a
    checkpoint (`--load`) or from a predictions file (`vlcli submit vqa --predictions P.json`)."""
    res = _validated("submit", task, profile, adapter, overrides)
    from vlcli.cli.evaluation import check_submission_target, output_dir, run_submit, submit_predictions_file

    if predictions is not None:
        submit_predictions_file(res.settings, predictions, submission)
        return
    if res.settings is not None and res.settings.train.load is None:
        raise VlcliError("`vlcli submit` needs --load <checkpoint or run directory> or --predictions FILE")
    if submission is not None:
        check_submission_target(submission, res.settings.derived.tasks)
    out = output_dir(res.settings, "submit", res.sources.get("output") == "cli")
    for name, (path, rows) in run_submit(res.settings, out, submission).items():
        render.out.print(f"[green]{name}[/]: wrote {escape(str(path))} ({rows:,} predictions, every id of the split once)")


EXTRACT_PANEL = "Extraction"


@settings_options
def extract_features(
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of images (or a text file listing image paths).", rich_help_panel="Extraction"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder for the h5 feature files.", rich_help_panel="Extraction"),
    random_init: bool = typer.Option(
        False, "--random_init", "--random-init", help="Random (seeded) weights instead of CLIP's: tests and demos only; "
        "the features are meaningless.", rich_help_panel=EXTRACT_PANEL),
    device: str = typer.Option("auto", "--device", metavar="auto|cpu|cuda[:N]", help="Where the model runs (auto: cuda if available).",
                               rich_help_panel=EXTRACT_PANEL),
    precision: str = typer.Option("auto", "--precision", metavar="auto|fp32|fp16|bf16",
                                  help="Autocast precision (auto: fp16 on a GPU, fp32 on the CPU).", rich_help_panel=EXTRACT_PANEL),
    dtype: str = typer.Option("float16", "--dtype", metavar="float16|float32", help="Stored feature dtype.",
                              rich_help_panel=EXTRACT_PANEL),
    layout: str = typer.Option("per-image", "--layout", metavar="per-image|consolidated",
                               help="per-image: data_clip_{TYPE}_att/{stem}.h5 (the original layout); consolidated: one "
                               "data_clip_{TYPE}_att.h5.", rich_help_panel=EXTRACT_PANEL),
    pooled: bool = typer.Option(False, "--pooled", help="Also write the attention-pooled vector to data_clip_{TYPE}_fc (ResNets).",
                                rich_help_panel=EXTRACT_PANEL),
    resize: str = typer.Option("squash", "--resize", metavar="squash|crop",
                               help="squash: resize to exactly image_size (the original); crop: shorter side, then center crop.",
                               rich_help_panel=EXTRACT_PANEL),
    butd_tsv: Optional[Path] = typer.Option(
        None, "--butd_tsv", "--butd-tsv", metavar="FILE",
        help="Convert a bottom-up-attention TSV to the per-split BUTD h5 in --out (instead of extracting CLIP features).",
        rich_help_panel=EXTRACT_PANEL, show_default=False),
    profile: Optional[list[str]] = ProfileOption,
    overrides: Any = None,
) -> None:
    """Extract CLIP grid features to h5 (`--feature_type RN101 --images DIR --out DIR`), or convert a BUTD TSV
    (`--butd_tsv train2014_obj36.tsv --out DIR`). Image size defaults to 224 here (7x7 grids, as the released
    features); --batch_size defaults to 32 on a GPU, 8 on the CPU here; --num_workers and --seed apply."""
    from vlcli.features.common import ExtractionError

    Bar = render.ProgressBar
    if butd_tsv is not None:
        if out is None:
            raise ExtractionError("--butd_tsv needs --out DIR (or --out FILE.h5) for the h5 file")
        if images is not None:
            raise ExtractionError("--butd_tsv converts a TSV; --images extracts CLIP features: run them separately")
        from vlcli.features.butd import convert_butd_tsv

        done = convert_butd_tsv(butd_tsv, out, Bar("images"))
        if done.skipped_existing:
            render.out.print(f"{escape(str(done.target))} exists ({done.images:,} images): skipped; delete it to convert again")
        else:
            render.out.print(f"converted {done.images:,} images ({done.feat_dim}-d regions) to {escape(str(done.target))}")
        return
    if images is None or out is None:
        raise VlcliError("`vlcli extract-features` needs --images DIR and --out DIR")
    if not images.exists():
        raise VlcliError(f"--images {images}: no such folder or file")
    res = resolve_command("extract-features", None, profile, None, overrides)
    render.issue_lines(res.warnings)
    settings = res.settings
    explicit = res.explicit

    from vlcli.features.clip import DEFAULT_IMAGE_SIZE, ClipExtraction, check_feature_type, resolve_weights
    from vlcli.features.images import list_images

    feature_type = check_feature_type(settings.get("feature_type"))
    image_size = DEFAULT_IMAGE_SIZE
    if "image_size" in explicit:
        h, w = settings.get("image_size")
        if h != w:
            raise ExtractionError(f"--image_size {h},{w}: must be square for CLIP grids; e.g. 224,224")
        image_size = h
    if precision == "auto" and "fp16" in explicit and settings.get("fp16"):
        precision = "fp16"
    job = ClipExtraction(
        feature_type=feature_type,
        images=list_images(images),
        out=out,
        weights=resolve_weights(feature_type, settings.get("clip_weights"),
                                random_init or bool(settings.get("clip_random_init")), int(settings.get("seed"))),
        image_size=image_size,
        batch_size=int(settings.get("batch_size")) if "batch_size" in explicit else None,
        num_workers=_extraction_workers(settings.get("num_workers"), device),
        device=device,
        precision=precision,
        dtype=dtype,
        layout=layout,
        pooled=pooled,
        resize=resize,
        source=str(images),
    )
    from vlcli.features.clip import extract_clip

    result = extract_clip(job, Bar("images"))
    where = escape(str(result.target))
    if result.written:
        weights = job.weights.describe()
        origin = {"random": "random init", "file": f"weights {job.weights.name}"}.get(weights["source"], f"{job.weights.name} weights")
        render.out.print(
            f"extracted {result.written:,} images with {feature_type} ({escape(origin)}, {image_size} px, {result.device} "
            f"{result.precision}) to {where} in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s); "
            f"{result.total_in_output:,} images in the output"
        )
    if result.existing:
        render.out.print(f"skipped {result.existing:,} images already extracted in {where}")
    if result.failed:
        n = len(result.failed)
        shown = "; ".join(f"{p} ({reason})" for p, reason in result.failed[:5])
        more = f"; and {n - 5} more (listed in {result.manifest})" if n > 5 else ""
        render.err.print(f"[bold yellow]warning:[/] skipped {n} unreadable image{'s' if n != 1 else ''}: {escape(shown + more)}")
    if not result.written and not result.existing and not result.failed:  # pragma: no cover - list_images guards this
        render.out.print("nothing to extract")


def _extraction_workers(value: Any, device: str) -> int:
    """``--num_workers auto`` for extraction: image decoding beside a GPU (cores - 1, at most 8); none on the CPU."""
    import os

    if value != "auto":
        return int(value)
    if device == "cpu" or (device == "auto" and not __import__("torch").cuda.is_available()):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))
