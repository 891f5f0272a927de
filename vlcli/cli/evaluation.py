"""What `eval --load` and `submit` do once their settings are valid: run a trained checkpoint (rich output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlcli.cli import render
from vlcli.cli.training import RichReporter, _quiet_libraries, _results_table, _tears_down_processes
from vlcli.config.settings import Settings


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
