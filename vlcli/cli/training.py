"""What `finetune`, `pretrain`, `eval --load` and `submit` do once their settings are valid (rich output)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vlcli.cli import render
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

    def step(self, done: int, loss: float, lr: float, samples_per_s: float, global_step: int = 0) -> None:
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


def _tears_down_processes(run: Callable[..., T]) -> Callable[..., T]:
    """``run`` then, whatever happens, the process group of a ``torchrun`` launch is torn down."""

    @functools.wraps(run)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> T:
        from vlcli.train import dist

        finished = False
        try:
            result = run(settings, *args, **kwargs)
            finished = True
            return result
        finally:
            dist.teardown(finished)

    return wrapper


class RunSession:
    """One training command's hold on its run directory (:mod:`vlcli.train.rundir`): decide, claim, record, release.

    Nothing is written before :meth:`claim`; a run that fails before :meth:`start` leaves an existing
    directory as it was (and removes one it created, if still empty).
    """

    def __init__(self, settings: Settings, command: str, needs_test: bool):
        from vlcli.train import rundir

        self.settings, self.command = settings, command
        self.out = Path(settings.get("output"))
        self.plan = rundir.plan(self.out, command, bool(settings.get("resume")), bool(settings.get("overwrite")))
        self.allowed: dict[str, Any] = {}
        self.finished = False
        if self.plan.mode == "resume":
            self.allowed = self._check_changes()
            self.finished = _finished(self.out, settings.get("epochs"), needs_test)
        self.lock = rundir.RunLock(self.out, command)
        self.created = False
        self.started = False
        self.is_main = True

    def _check_changes(self) -> dict[str, Any]:
        from vlcli.errors import ConfigError, Issue
        from vlcli.train import rundir

        run_values = rundir.read_config(self.out) or {}
        allowed, refused = rundir.resume_changes(run_values, self.settings.flat(mode="json"))
        if refused:
            listed = "; ".join(f"--{k} {new!r} (run: {old!r})" for k, (old, new) in sorted(refused.items()))
            raise ConfigError([Issue("R52", "error", f"--resume continues {self.out} with its own settings; these "
                                     f"differ: {listed}. Drop them, or start a new run (another --output or "
                                     f"--overwrite); a resume may change only "
                                     f"{', '.join('--' + k for k in sorted(rundir.RESUME_ALLOWED))}", ("resume",))])
        return allowed

    def claim(self, ctx: Any) -> None:
        """Rank 0 creates the directory and takes the lock; every rank checks it sees them (shared --output).

        Every rank fails together: rank 0's error (directory, lock) is shared with the others, which would otherwise
        wait for it in a collective; the caller releases what rank 0 took (:meth:`release`)."""
        import socket

        from vlcli.errors import VlcliError
        from vlcli.train import dist, rundir

        error = None
        if ctx.is_main:
            try:
                self.created = rundir.make_dir(self.out)
                self.lock.acquire()
            except VlcliError as exc:
                error = exc
            else:
                if self.lock.note:
                    render.err.print(f"[yellow]{self.lock.note}[/]")
                if self.plan.note:
                    render.err.print(f"[yellow]{self.plan.note}[/]")
        shared = dist.broadcast_object(ctx, None if error is None else str(error))  # also the barrier
        if error is not None:
            raise error
        if shared is not None:
            raise VlcliError(shared)
        seen = dist.gather_pairs(ctx, [(ctx.rank, ((self.out / rundir.LOCK).is_file(), socket.gethostname()))])
        blind = [f"rank {rank} on {host}" for rank, (visible, host) in sorted(seen.items()) if not visible]
        if blind:
            raise VlcliError(f"--output {self.out}: not visible from every process ({', '.join(blind)} cannot see the "
                             f"run lock rank 0 created on {seen[0][1]}); a multi-node run needs an --output on a file "
                             "system all nodes share")

    def start(self, ctx: Any, parameters: dict[str, Any], init: Any = None) -> None:
        """Record the start: config.json for a new run (with the warm start ``init``, a
        :class:`~vlcli.model.warmstart.WarmStart`), a ``resumes`` entry when continuing one."""
        from vlcli.train import rundir

        self.is_main = ctx.is_main
        if not ctx.is_main:
            return
        if self.plan.mode == "overwrite":
            rundir.clear_run(self.out)
        if self.plan.mode in ("new", "overwrite") or rundir.read_config(self.out) is None:
            extra: dict[str, Any] = {"parameters": parameters}
            if init is not None:
                extra["init"] = init.record()
            rundir.write_config(self.out, self.settings, self.command, extra)
        else:
            rundir.append_resume(self.out, {"mode": self.plan.mode, "changed": self.allowed}, self.command)
        self.started = True
        rundir.write_status(self.out, "running")

    def set_status(self, status: str, message: str = "") -> None:
        """Record how the run ended (rank 0, once it started)."""
        from vlcli.train import rundir

        if self.started and self.is_main:
            rundir.write_status(self.out, status, message)

    def release(self) -> None:
        from vlcli.train import rundir

        self.lock.release()
        if self.created:
            rundir.remove_if_empty(self.out)


def _finished(out: Path, epochs: int, needs_test: bool) -> bool:
    """True when the run in ``out`` trained all ``epochs`` (and was tested, if ``needs_test``)."""
    import json

    try:
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        done = max((json.loads(x).get("epoch", -1) for x in lines if x.strip()), default=-1) + 1
    except (OSError, ValueError, AttributeError):
        return False
    return done >= epochs and (not needs_test or (out / "test_metrics.json").is_file())


@contextlib.contextmanager
def _training(session: RunSession, needed: list[tuple[str, str]] | None, **engine_kw: Any) -> Iterator[Any]:
    """The shared part of finetune / pretrain: preflight, claim the run directory, engine, warm start, fit.

    Yields (engine, history) with the run directory still locked (for testing and submission files).
    """
    from vlcli.data.preflight import preflight
    from vlcli.model.params import count_parameters
    from vlcli.train import dist
    from vlcli.train.engine import Engine, Interrupted
    from vlcli.train.tracking import FanOut, build_trackers, parse_report_to

    settings = session.settings
    parse_report_to(settings.get("report_to"))  # an unknown tracker or a missing package: before any work
    if needed is not None:
        preflight(settings, needed)
    ctx = dist.setup()
    trackers: list[Any] = []
    try:
        session.claim(ctx)  # inside: a refused claim releases the lock and the directory rank 0 made
        engine = Engine(settings, RichReporter(), ctx=ctx, command=session.command, roles=("train", "valid"),
                        **engine_kw)
        resume = session.plan.mode == "resume"
        init = _warm_start(engine, settings) if settings.derived.load_path and not resume else None
        counts = count_parameters(engine.module)
        session.start(ctx, {k: counts[k] for k in ("total", "trainable", "percent")}, init)
        if ctx.is_main:
            trackers = build_trackers(settings, session.out)
            for tracker in trackers:
                tracker.start(settings.flat(mode="json"), counts)
            engine.reporter = FanOut(engine.reporter, *trackers)
        history = engine.fit(resume=resume)
        yield engine, history
        session.set_status("finished")
    except Interrupted:
        session.set_status("interrupted")
        raise
    except BaseException as exc:
        session.set_status("failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        for tracker in trackers:
            tracker.finish()
        session.release()


def _warm_start(engine: Any, settings: Settings) -> Any:
    """Initialise the model from ``--load`` (every rank) and show what was loaded and what starts fresh."""
    from vlcli.model.warmstart import warm_start

    init = warm_start(engine.module, settings.derived.load_path, settings,
                      allow_partial=bool(settings.get("allow_partial_load")))
    if engine.ctx.is_main:
        render.err.print(_warm_start_table(init))
        if init.ignored:
            render.err.print(f"[yellow]--allow_partial_load: {len(init.ignored)} tensor(s) not loaded: "
                             f"{'; '.join(init.ignored[:5])}{' ...' if len(init.ignored) > 5 else ''}[/]")
    return init


def _warm_start_table(init: Any) -> Table:
    from vlcli.model.warmstart import group_rows

    table = Table(title=f"Warm start from {init.path} ({init.kind}, sha256 {init.sha256[:12]})",
                  title_justify="left")
    for name in ("group", "loaded: tensors (parameters)", "starts fresh", "from --backbone"):
        table.add_column(name, justify="left" if name == "group" else "right")
    for row in group_rows(init):
        table.add_row(*row)
    return table


def _open_session(settings: Settings, command: str, needs_test: bool) -> RunSession | None:
    """The run directory decision (before any slow work); None when a --resume finds the run finished."""
    import os

    from vlcli.train.engine import check_deepspeed
    from vlcli.train.launch import check_launcher

    check_deepspeed(settings)  # refused before the run directory, the demo set-up or the model
    for note in check_launcher(settings):  # accelerate launch / mpirun settings vlcli does not read: refused or noted
        if os.environ.get("RANK", "0") == "0":
            render.err.print(f"[yellow]{escape(note)}[/]")
    session = RunSession(settings, command, needs_test)
    if session.finished:
        render.err.print(f"[green]{session.out} finished all {settings.get('epochs')} epochs; nothing to resume[/] "
                         "(`--epochs N` with --resume trains further)")
        return None
    return session


@_tears_down_processes
def run_finetune(settings: Settings) -> None:
    _quiet_libraries()
    from vlcli.train.engine import plot_curves, splits_for, tests_enabled

    test = tests_enabled(settings)
    session = _open_session(settings, "finetune", needs_test=test)
    if session is None:
        return
    demo = _ensure_demo(settings) if settings.get("demo_world") else None
    roles = ("train", "valid", "test") if test else ("train", "valid")
    needed = [(t, splits_for(settings, t)[role]) for t in settings.derived.tasks for role in roles]
    if settings.get("submit"):
        needed += [(t, splits_for(settings, t)["submit"]) for t in settings.derived.tasks]
    with _training(session, needed) as (engine, history):
        engine.load_weights(session.out / "BEST.safetensors")
        results = engine.test() if test else {}
        written = engine.submit() if settings.get("submit") else {}
        if engine.ctx.is_main:
            plot_curves(history.records, session.out / "curves.png")
    if not engine.ctx.is_main:
        return
    if test:
        render.out.print(_results_table("Test (BEST weights)", results))
    render.out.print(_run_summary(engine, history, demo, written))
    if demo is not None:
        _demo_example(settings, session.out)


def _run_summary(engine: Any, history: Any, demo: dict[str, Any] | None, written: dict[str, Any]) -> Table:
    from vlcli.model.params import count_parameters

    counts = count_parameters(engine.module)
    summary = Table(title="Run", title_justify="left", show_header=False)
    summary.add_column("", style="cyan")
    summary.add_column("")
    summary.add_row("run directory", str(engine.out))
    summary.add_row("best epoch", str((history.best_epoch or 0) + 1) if history.best_epoch is not None else "-")
    summary.add_row("best valid score", f"{history.best:.2f}" if history.best is not None else "-")
    if demo is not None:
        best = next((r for r in history.records if r.get("epoch") == history.best_epoch), {})
        for task, baselines in demo.get("baselines", {}).items():
            metric = "CIDEr" if task == "caption" else "accuracy"
            metrics = best.get(f"valid/{task}") or {}
            if metrics.get(metric) is None:
                continue
            kinds = [f"{k.split('/', 1)[1]} {v:.1f}" for k, v in sorted(metrics.items()) if k.startswith("accuracy/")]
            summary.add_row(f"{task} valid {metric} (BEST)",
                            f"{metrics[metric]:.2f}" + (f" ({', '.join(kinds)})" if kinds else ""))
            summary.add_row(f"{task} baselines without the image",
                            ", ".join(f"{name} {value:.2f}" for name, value in baselines.items()))
    summary.add_row("trainable parameters", f"{counts['trainable']:,} of {counts['total']:,} ({counts['percent']:.2f} %)")
    last = history.records[-1] if history.records else {}
    if last.get("samples_per_s"):
        summary.add_row("samples/s (last epoch)", f"{last['samples_per_s']:.1f}")
    for task, (path, rows) in written.items():
        summary.add_row(f"{task} submission", f"{path} ({rows:,} rows)")
    return summary


@_tears_down_processes
def run_pretrain(settings: Settings) -> None:
    """`vlcli pretrain`: the engine on the ``pretrain`` task, an ``EpochNN`` checkpoint after every epoch."""
    _quiet_libraries()
    from vlcli.tasks import get_task
    from vlcli.train.engine import plot_curves, splits_for

    session = _open_session(settings, "pretrain", needs_test=False)
    if session is None:
        return
    out = session.out
    splits = splits_for(settings, "pretrain")
    get_task("pretrain").preflight(settings, splits["train"], splits["valid"])
    with _training(session, None, epoch_checkpoints=True) as (engine, history):
        if engine.ctx.is_main:
            plot_curves(history.records, out / "curves.png")
    if not engine.ctx.is_main:
        return
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
    from vlcli.demo.setup import demo_baselines, ensure_world
    from vlcli.errors import VlcliError

    feature_type = settings.get("feature_type")
    if feature_type not in ("RN50", "RN101", "RN50x4", "ViT", "raw_RN50", "raw_RN101", "raw_RN50x4"):
        raise VlcliError(f"--demo_world provides images and CLIP grid features only; --feature_type {feature_type}: "
                         "use RN50 (the demo profile's), RN101, RN50x4, ViT or raw_RN50/raw_RN101/raw_RN50x4")
    root = Path(settings.get("data_root"))
    render.err.print(f"[dim]demo world in {root} (created on first use)[/]")
    tasks = [*settings.derived.tasks, *(["pretrain"] if _demo_pretrains(settings) else [])]
    summary = ensure_world(root, feature_type, progress=render.ProgressBar("images"), tasks=tasks)
    if _demo_pretrains(settings):
        settings.derived.load_path = str(_demo_pretrained(settings, root))
    return {**summary, "baselines": demo_baselines(root, settings.derived.tasks)}


def _demo_example(settings: Settings, out: Path) -> None:
    """The demo's last word: one `vlcli predict` on a held-out demo image, with the answer the scene gives."""
    import json
    import shlex

    from vlcli.predict import Predictor

    if "vqa" not in settings.derived.tasks:
        return
    root = Path(str(settings.get("data_root")))
    try:
        record = json.loads((root / "vqa/karpathy_test.json").read_text(encoding="utf-8"))[0]
    except (OSError, ValueError, IndexError):
        return
    image = root / "COCO/images/val2014" / f"{record['img_id']}.jpg"
    task = None if len(settings.derived.tasks) == 1 else "vqa"
    answer = Predictor(out, task=task).answer(image, record["sent"])
    command = ["vlcli", "predict", "--load", str(out), "--image", str(image), "--question", record["sent"],
               *(["--task", "vqa"] if task else [])]
    truth = next(iter(record.get("label", {})), "?")
    render.out.print(f"try it on your own image: [bold]{escape(shlex.join(command))}[/]\n"
                     f"  -> {escape(answer)}   (the scene's answer: {escape(truth)})")


def _demo_pretrains(settings: Settings) -> bool:
    """The demo warm-starts from its VL-pretrained backbone unless --load / --from_scratch say otherwise or the
    run reads raw images (pretraining through the in-model CLIP encoder would take minutes on a CPU)."""
    return not (settings.derived.load_path or settings.get("from_scratch")
                or str(settings.get("feature_type")).startswith("raw_"))


def _demo_pretrained(settings: Settings, root: Path) -> Path:
    """``<data_root>/pretrained/<backbone>-<feature_type>/BEST.safetensors``: `vlcli pretrain` of the demo backbone
    on the world's pretraining files (the paper's VL pretraining), run once and reused."""
    from vlcli.config.resolve import resolve
    from vlcli.demo.setup import PRETRAIN_RECIPE
    from vlcli.train import rundir

    backbone = Path(str(settings.get("backbone")))
    out = root / "pretrained" / f"{backbone.name}-{settings.get('feature_type')}"
    best = out / "BEST.safetensors"
    status = rundir.read_status(out) if out.is_dir() else None
    if best.is_file() and (status or {}).get("status") == "finished":
        return best
    render.err.print(f"[bold]VL-pretraining the demo backbone once[/] ({backbone.name}, cached in {out})")
    values = {"backbone": str(backbone), "tokenizer": settings.get("tokenizer"), "data_root": str(root),
              "feature_type": settings.get("feature_type"), "output": str(out), "overwrite": out.exists(),
              **PRETRAIN_RECIPE}
    resolution = resolve("pretrain", cli={k: v for k, v in values.items() if v is not None}, env={})
    run_pretrain.__wrapped__(resolution.raise_for_errors())
    return best
