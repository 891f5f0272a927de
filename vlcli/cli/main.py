"""The `vlcli` Typer application and its entry point (error handling, argument normalisation)."""

import sys
from typing import Any, Optional

import typer
import typer.rich_utils
from rich.table import Table
from typer.core import TyperGroup, TyperOption

from vlcli import __version__
from vlcli.cli import render
from vlcli.cli.argv import normalize
from vlcli.cli.commands import evaluate, extract_features, finetune, pretrain, submit
from vlcli.cli.convert import convert
from vlcli.cli.demo import demo_data
from vlcli.cli.export import export
from vlcli.cli.inspect_config import inspect_config
from vlcli.cli.predict import predict
from vlcli.cli.runs import runs
from vlcli.errors import ConfigError, NotImplementedYetError, VlcliError


class _HelpTable(Table):
    """Typer's help tables, with the option-name columns never narrower than their longest name: rich would
    otherwise cut names such as --additional_visual_embedding_layers at 80 columns (the help text wraps)."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*renderables, **kwargs)
        for column, cell in zip(self.columns, renderables, strict=False):
            text = getattr(cell, "plain", cell if isinstance(cell, str) else "")
            if text.startswith("-"):
                column.no_wrap = True
                column.min_width = max(column.min_width or 0, len(text))


typer.rich_utils.Table = _HelpTable  # type: ignore[attr-defined]

app = typer.Typer(
    name="vlcli",
    help="Parameter-efficient transfer learning for VL-T5 / VL-BART (adapters, Hyperformer, Compacter, LoRA, prompts).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["--help", "-h"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"vlcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors (accepted anywhere on the line)."),
) -> None:
    """vlcli: every option of the VL-Adapter paper, validated; `vlcli inspect-config --help` lists them all."""


app.command("inspect-config")(inspect_config)
app.command("extract-features")(extract_features)
app.command("pretrain")(pretrain)
app.command("finetune")(finetune)
app.command("eval")(evaluate)
app.command("submit")(submit)
app.command("convert")(convert)
app.command("demo-data")(demo_data)
app.command("runs")(runs)
app.command("export")(export)
app.command("predict")(predict)

COMMAND_NAMES = ("inspect-config", "extract-features", "pretrain", "finetune", "eval", "submit", "convert", "demo-data",
                 "runs", "export", "predict")


def _command_options(group: TyperGroup, name: str) -> dict[str, bool]:
    """Option strings of a sub-command that are not settings fields -> whether they take a value."""
    cmd = group.commands.get(name)
    opts: dict[str, bool] = {"--help": False, "-h": False}
    if cmd is None:
        return opts
    for param in cmd.params:
        if isinstance(param, TyperOption) and not (param.name or "").startswith("cfg__"):
            for o in [*param.opts, *param.secondary_opts]:
                opts[o] = not param.is_flag
    return opts


def prepare_argv(argv: list[str], group: TyperGroup) -> list[str]:
    """Find the sub-command and normalise the arguments after it."""
    for idx, tok in enumerate(argv):
        if not tok.startswith("-"):
            if tok in group.commands:
                return argv[: idx + 1] + normalize(argv[idx + 1:], _command_options(group, tok))
            return argv
    return argv


def _launcher_rank_last(args: list[str]) -> list[str]:
    """The ``--local_rank=N`` that the ``deepspeed`` launcher (and the legacy ``torch.distributed.launch``) puts before
    the command moves after it, where the command's own ``--local_rank`` option reads it."""
    lead = [a for a in args[:1] if a.startswith(("--local_rank=", "--local-rank="))]
    if not lead:
        return args
    return [*args[1:], "--local_rank=" + lead[0].split("=", 1)[1]]


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; user errors print one red line and exit 2 (tracebacks with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    from vlcli.train.rundir import set_invocation

    set_invocation(["vlcli", *args])
    debug = "--debug" in args
    args = _launcher_rank_last([a for a in args if a != "--debug"])
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    try:
        args = prepare_argv(args, group)
        result = group.main(args=args, prog_name="vlcli", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except ConfigError as exc:
        if debug:
            raise
        render.issue_lines(exc.issues)
        render.issue_lines(exc.warnings)
        return exc.exit_code
    except NotImplementedYetError as exc:
        render.pending_line(str(exc))
        return exc.exit_code
    except VlcliError as exc:
        if debug:
            raise
        render.error_line(str(exc))
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        render.error_line("aborted")
        return 130
    except typer.TyperException as exc:  # usage errors (missing value, bad choice, ...)
        if debug:
            raise
        if not exc.format_message():  # `vlcli` alone: help was shown (no_args_is_help)
            return 0
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        render.error_line(f"{exc.format_message()}{where}")
        return 2
    except KeyboardInterrupt:
        render.error_line("interrupted")
        return 130
    except OSError as exc:  # an output that cannot be written (read-only place, full disk, a file in the way)
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        render.error_line(f"{where}{exc.strerror or exc}; check that the path is a writable folder with free space "
                          "(--debug shows the traceback)")
        return 2


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
