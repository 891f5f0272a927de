"""What `eval --load` and `submit` do once their settings are valid: run a trained checkpoint (rich output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlcli.cli import render
from vlcli.cli.training import RichReporter, _quiet_libraries, _tears_down_processes
from vlcli.config.settings import Settings


def _engine_for_checkpoint(settings: Settings, out: Path):
    """The engine of the checkpoint ``--load`` names (loaded exactly), writing into ``out``."""
    from vlcli.train.engine import Engine

    engine = Engine(settings, RichReporter())
    engine.out = out
    engine.load_weights(Path(settings.derived.load_path))
    return engine


def output_dir(settings: Settings, kind: str, explicit_output: bool) -> Path:
    """Where ``eval`` / ``submit`` of a checkpoint write: ``--output`` when given on the command line (it must
    not hold a training run), else a new ``<run>/<kind>/<UTC time>/`` folder — never over the run's own files."""
    from datetime import datetime, timezone

    from vlcli.errors import VlcliError
    from vlcli.train import rundir

    if explicit_output:
        out = Path(settings.get("output"))
        rundir.check_output(out)
        if rundir.holds_run(out):
            raise VlcliError(f"--output {out} holds a training run; `vlcli {kind}` writes its files into a new folder: "
                             f"choose another --output (or leave it out: <run>/{kind}/<time>/)")
        return out
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(settings.derived.load_path).parent / kind
    out, n = base / stamp, 1
    while out.exists():
        n += 1
        out = base / f"{stamp}-{n}"
    rundir.check_output(out)
    return out


@_tears_down_processes
def run_eval(settings: Settings, out: Path, vqa_eval_mode: str | None = None) -> dict[str, Any]:
    """Evaluate the ``--load`` checkpoint on the valid and test splits (test only with --test_only)."""
    from vlcli.data.preflight import preflight

    _quiet_libraries()
    from vlcli.train.engine import atomic_json, splits_for

    roles = ("test",) if settings.get("test_only") else ("valid", "test")
    preflight(settings, [(t, splits_for(settings, t)[r]) for t in settings.derived.tasks for r in roles])
    engine = _engine_for_checkpoint(settings, out)
    if vqa_eval_mode is not None:
        engine.score_options["vqa"] = {"mode": vqa_eval_mode}
    results: dict[str, Any] = {}
    for role in roles:
        result = engine._evaluate_all(role, write=True)
        results.update({k: v for k, v in result.items() if k != "score"})
        results[f"{role}/score"] = result["score"]
    if engine.ctx.is_main:
        atomic_json(out / "eval_metrics.json", results)
    return results


def run_submit(settings: Settings, out: Path, submission: Path | None = None) -> dict[str, tuple[Path, int]]:
    """Leaderboard files of the ``--load`` checkpoint; ``submission``: the file (one task) or folder (several)."""
    from vlcli.data.preflight import preflight

    _quiet_libraries()
    from vlcli.tasks import get_task
    from vlcli.train.engine import splits_for

    tasks = settings.derived.tasks
    preflight(settings, [(t, splits_for(settings, t)["submit"]) for t in tasks])
    paths = None
    if submission is not None:
        paths = {tasks[0]: submission} if len(tasks) == 1 else \
            {t: submission / f"{t}_{get_task(t).submission_file}" for t in tasks}
    engine = _engine_for_checkpoint(settings, out)
    return engine.submit(paths)


def check_submission_target(submission: Path, tasks: list[str]) -> None:
    """``--submission``: a file for one task, a folder (made if missing) for several."""
    from vlcli.errors import VlcliError
    from vlcli.paths import is_dir, is_file

    if len(tasks) > 1 and is_file(submission):
        raise VlcliError(f"--submission {submission}: a multitask run writes one file per task; give a folder "
                         f"(files <task>_<official name> go inside)")
    if len(tasks) == 1 and is_dir(submission):
        raise VlcliError(f"--submission {submission} is a folder; give the file to write (e.g. {submission}/submit.json)")


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
    if path.exists() and not settings.get("overwrite"):
        raise VlcliError(f"{path} exists; choose another --submission FILE, or pass --overwrite to replace it")
    rows = impl.write_submission(pairs, split_ids, path)
    render.out.print(f"[green]{task}[/]: wrote {path} ({rows:,} predictions, every id of split {split} once)")
