"""What `finetune`, `pretrain`, `eval --load` and `submit` do once their settings are valid (rich output)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vlcli.cli import render
from vlcli.config.resolve import EXPLICIT_KEY
from vlcli.config.settings import Settings

T = TypeVar("T")


class RichReporter:
    """Progress bars on stderr (rank 0 only); ``quiet`` prints one line per epoch instead (for logs)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet or not render.err.is_terminal
        self.progress: Progress | None = None
        self.task_id: Any = None

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if self.quiet:
            return
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[rate]:.1f} samples/s"),
            TimeRemainingColumn(), console=render.err, transient=True,
        )
        self.progress.start()
        self.task_id = self.progress.add_task("train", total=steps, loss=0.0, lr=0.0, rate=0.0)

    def step(self, done: int, loss: float, lr: float, samples_per_s: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, completed=done, loss=loss, lr=lr, rate=samples_per_s)

    def epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        loss = record.get("train_loss")
        score = record.get("score")
        render.err.print(
            f"epoch {epoch + 1}: train loss {loss:.4f}" if loss is not None else f"epoch {epoch + 1}",
            f"  valid score {score:.2f}" if score is not None else "",
            f"  {record.get('samples_per_s', 0):.1f} samples/s",
        )

    def evaluating(self, task: str, split: str, batches: int) -> None:
        pass

    def message(self, text: str) -> None:
        render.err.print(f"[yellow]{text}[/]")


def _quiet_libraries() -> None:
    """transformers' own loading bars would interleave with ours: the CLI shows one progress display."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _write_config(settings: Settings, out: Path) -> None:
    from vlcli.train.engine import atomic_json

    data = settings.flat(mode="json")
    if settings.derived is not None:
        data[EXPLICIT_KEY] = settings.derived.explicit
    atomic_json(out / "config.json", data)


def _results_table(title: str, results: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("task / split", style="cyan")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        if not metrics:
            table.add_row(key, "-", "no labels")
        for name, value in metrics.items():
            table.add_row(key, name, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def _tears_down_processes(run: Callable[[Settings], T]) -> Callable[[Settings], T]:
    """``run`` then, whatever happens, the process group of a ``torchrun`` launch is torn down."""

    @functools.wraps(run)
    def wrapper(settings: Settings) -> T:
        from vlcli.train import dist

        try:
            return run(settings)
        finally:
            dist.teardown()

    return wrapper


@_tears_down_processes
def run_finetune(settings: Settings) -> None:
    from vlcli.data.preflight import preflight

    _quiet_libraries()
    from vlcli.train.engine import Engine, plot_curves, splits_for

    out = Path(settings.get("output"))
    demo = _ensure_demo(settings) if settings.get("demo_world") else None
    needed = [(t, splits_for(settings, t)[role]) for t in settings.derived.tasks for role in ("train", "valid", "test")]
    if settings.get("submit"):
        needed += [(t, splits_for(settings, t)["submit"]) for t in settings.derived.tasks]
    preflight(settings, needed)
    engine = Engine(settings, RichReporter())
    if engine.ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(settings, out)
    if settings.derived.load_path and not settings.get("resume"):
        engine.load_weights(settings.derived.load_path)
    history = engine.fit(resume=settings.get("resume"))
    engine.load_weights(out / "BEST.safetensors")
    test = engine.test()
    written = engine.submit() if settings.get("submit") else {}
    if not engine.ctx.is_main:
        return
    plot_curves(history.records, out / "curves.png")
    from vlcli.model.params import count_parameters

    counts = count_parameters(engine.module)
    render.out.print(_results_table("Test (BEST weights)", test))
    summary = Table(title="Run", title_justify="left", show_header=False)
    summary.add_column("", style="cyan")
    summary.add_column("")
    summary.add_row("run directory", str(out))
    summary.add_row("best epoch", str((history.best_epoch or 0) + 1) if history.best_epoch is not None else "-")
    summary.add_row("best valid score", f"{history.best:.2f}" if history.best is not None else "-")
    if demo is not None:
        best = next((r for r in history.records if r.get("epoch") == history.best_epoch), {})
        for task, key in (("vqa", "majority_baseline"), ("gqa", "gqa_majority_baseline")):
            accuracy = (best.get(f"valid/{task}") or {}).get("accuracy")
            if accuracy is not None and key in demo:
                summary.add_row(f"{task} valid accuracy (BEST)", f"{accuracy:.2f}")
                summary.add_row(f"{task} majority-answer baseline", f"{100 * demo[key]:.2f}")
    summary.add_row("trainable parameters", f"{counts['trainable']:,} of {counts['total']:,} ({counts['percent']:.2f} %)")
    last = history.records[-1] if history.records else {}
    if last.get("samples_per_s"):
        summary.add_row("samples/s (last epoch)", f"{last['samples_per_s']:.1f}")
    for task, (path, rows) in written.items():
        summary.add_row(f"{task} submission", f"{path} ({rows:,} rows)")
    render.out.print(summary)


@_tears_down_processes
def run_pretrain(settings: Settings) -> None:
    """`vlcli pretrain`: the engine on the ``pretrain`` task, an ``EpochNN`` checkpoint after every epoch."""
    _quiet_libraries()
    from vlcli.tasks import get_task
    from vlcli.train.engine import Engine, plot_curves, splits_for

    out = Path(settings.get("output"))
    splits = splits_for(settings, "pretrain")
    get_task("pretrain").preflight(settings, splits["train"], splits["valid"])
    engine = Engine(settings, RichReporter(), epoch_checkpoints=True, command="pretrain")
    if engine.ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(settings, out)
    if settings.derived.load_path and not settings.get("resume"):
        engine.load_weights(settings.derived.load_path)  # initial weights; the epoch count starts at 1
    history = engine.fit(resume=settings.get("resume"))
    if not engine.ctx.is_main:
        return
    plot_curves(history.records, out / "curves.png")
    from vlcli.model.params import count_parameters

    evaluated = [r for r in history.records if "valid/pretrain" in r]
    if evaluated:
        last = evaluated[-1]
        label = "before training (--dry)" if last["epoch"] < 0 else f"epoch {last['epoch'] + 1}"
        render.out.print(_results_table(f"Validation ({label})", {"valid/pretrain": last["valid/pretrain"]}))
    counts = count_parameters(engine.module)
    summary = Table(title="Run", title_justify="left", show_header=False)
    summary.add_column("", style="cyan")
    summary.add_column("")
    summary.add_row("run directory", str(out))
    epochs = sorted(out.glob("Epoch[0-9][0-9].safetensors"))
    summary.add_row("epoch checkpoints", ", ".join(p.stem for p in epochs) or "-")
    summary.add_row("best epoch", str(history.best_epoch + 1) if history.best_epoch is not None else "-")
    summary.add_row("trainable parameters",
                    f"{counts['trainable']:,} of {counts['total']:,} ({counts['percent']:.2f} %)")
    render.out.print(summary)


def _ensure_demo(settings: Settings) -> dict[str, Any]:
    """``demo_world``: create the world, its backbones and its CLIP features under data_root if missing."""
    from vlcli.demo.setup import ensure_world
    from vlcli.errors import VlcliError

    feature_type = settings.get("feature_type")
    if feature_type not in ("RN50", "RN101", "RN50x4", "ViT", "raw_RN50", "raw_RN101", "raw_RN50x4"):
        raise VlcliError(f"--demo_world provides images and CLIP grid features only; --feature_type {feature_type}: "
                         "use RN50 (the demo profile's), RN101, RN50x4, ViT or raw_RN50/raw_RN101/raw_RN50x4")
    root = Path(settings.get("data_root"))
    render.err.print(f"[dim]demo world in {root} (created on first use)[/]")
    return ensure_world(root, feature_type, progress=render.ProgressBar("images"))


def _engine_for_checkpoint(settings: Settings):
    from vlcli.train.engine import Engine

    load = Path(settings.derived.load_path)
    engine = Engine(settings, RichReporter())
    engine.out = load.parent
    engine.load_weights(load)
    return engine


@_tears_down_processes
def run_eval(settings: Settings) -> dict[str, Any]:
    from vlcli.data.preflight import preflight

    _quiet_libraries()
    from vlcli.train.engine import atomic_json, splits_for

    roles = ("test",) if settings.get("test_only") else ("valid", "test")
    preflight(settings, [(t, splits_for(settings, t)[r]) for t in settings.derived.tasks for r in roles])
    engine = _engine_for_checkpoint(settings)
    results: dict[str, Any] = {}
    for role in roles:
        result = engine._evaluate_all(role, write=True)
        results.update({k: v for k, v in result.items() if k != "score"})
        results[f"{role}/score"] = result["score"]
    if engine.ctx.is_main:
        atomic_json(engine.out / "eval_metrics.json", results)
        render.out.print(_results_table(f"Evaluation of {settings.derived.load_path}", results))
    return results


def run_submit(settings: Settings) -> None:
    from vlcli.data.preflight import preflight

    _quiet_libraries()
    from vlcli.train.engine import splits_for

    preflight(settings, [(t, splits_for(settings, t)["submit"]) for t in settings.derived.tasks])
    engine = _engine_for_checkpoint(settings)
    written = engine.submit()
    if engine.ctx.is_main:
        for task, (path, rows) in written.items():
            render.out.print(f"[green]{task}[/]: wrote {path} ({rows:,} predictions, every id of the split once)")


def _read_predictions(path: Path, task: str) -> list[tuple[Any, Any]]:
    """(id, prediction) pairs from ``[{id, prediction}]`` or the task's official result format."""
    from vlcli.errors import VlcliError
    from vlcli.metrics.files import load_json

    rows = load_json(path, "--predictions")
    keys = {"vqa": ("question_id", "answer"), "gqa": ("questionId", "prediction"), "caption": ("image_id", "caption"),
            "cls": ("image_id", "prediction")}
    pairs = []
    if not isinstance(rows, list):
        raise VlcliError(f"--predictions {path}: expected a JSON list of predictions")
    for i, row in enumerate(rows):
        if isinstance(row, dict) and "id" in row and "prediction" in row:
            pairs.append((row["id"], row["prediction"]))
        elif isinstance(row, dict) and task in keys and all(k in row for k in keys[task]):
            pairs.append((row[keys[task][0]], row[keys[task][1]]))
        else:
            want = " or ".join(["{id, prediction}"] + ([f"{{{', '.join(keys[task])}}}"] if task in keys else []))
            raise VlcliError(f"--predictions {path}: entry {i} is not {want}")
    return pairs


def submit_predictions_file(settings: Settings, predictions: Path, target: Path | None) -> None:
    """Check a predictions file against the task's submission split and write the official file."""
    from vlcli.errors import VlcliError
    from vlcli.tasks import get_task
    from vlcli.train.engine import splits_for

    if len(settings.derived.tasks) != 1:
        raise VlcliError("`vlcli submit --predictions` takes one TASK (e.g. `vlcli submit vqa --predictions P.json`)")
    task = settings.derived.tasks[0]
    split = splits_for(settings, task)["submit"]
    impl = get_task(task)
    examples, _ = impl.load_examples(settings, split, train=False)  # only the split's ids are needed
    split_ids = [ex.id for ex in examples]
    pairs = _read_predictions(predictions, task)
    ids = {str(i): i for i in split_ids}
    pairs = [(ids.get(str(k), k), v) for k, v in pairs]  # JSON turns ids into str / int: match the split's
    path = target or Path(settings.get("output")) / f"{task}_{impl.submission_file}"
    rows = impl.write_submission(pairs, split_ids, path)
    render.out.print(f"[green]{task}[/]: wrote {path} ({rows:,} predictions, every id of split {split} once)")
