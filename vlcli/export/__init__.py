"""`vlcli export RUN`: a trained run in vlcli's own format or, for LoRA runs, PEFT's adapter format.

* ``vlcli`` (any method): the checkpoint (``BEST.safetensors`` + manifest), the run's ``config.json`` and a
  model card; ``vlcli eval --load DIR`` / ``finetune --load DIR`` read it like the run itself.
* ``peft`` (LoRA runs): ``adapter_config.json`` + ``adapter_model.safetensors`` with peft's key names
  (``base_model.model.<path>.lora_A.weight``), the resized token embedding / LM head as ``modules_to_save``,
  the VL tokenizer beside it, and the visual embedding (not part of a text-only HF model) in vlcli's format.
  Per-task LoRA: one adapter per task in ``DIR/<task>/`` (the first task also at the root), loadable with
  ``PeftModel.from_pretrained(base, DIR/<task>, adapter_name=task)`` and ``load_adapter``.

``docs/export.md`` shows how to load both.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlcli.errors import VlcliError

FORMATS = ("vlcli", "peft")
NOT_IN_PEFT = {"use_adapter": "bottleneck adapters", "use_hyperformer": "Hyperformer", "use_compacter": "Compacter",
               "use_lradapter": "low-rank adapters", "use_vis_adapter": "visual adapters",
               "use_lm_head_adapter": "the LM-head adapter"}
LORA_MARK = ".vl_lora.pairs."


class ExportError(VlcliError):
    """The run cannot be exported as asked."""


@dataclass
class Exported:
    """What ``export_run`` wrote."""

    out: Path
    format: str
    files: list[Path]
    adapters: list[str]


def _run_files(run: Path, checkpoint: str) -> tuple[dict[str, Any], Path]:
    from vlcli.paths import is_dir, is_file

    if not is_dir(run):
        raise ExportError(f"vlcli export {run}: no such run directory; give a folder written by `vlcli finetune`")
    config_path = run / "config.json"
    if not is_file(config_path):
        raise ExportError(f"{run} has no config.json: not a vlcli run directory (export reads the run's settings)")
    tensors = run / f"{checkpoint}.safetensors"
    if not is_file(tensors):
        have = ", ".join(sorted(p.stem for p in run.glob("*.safetensors"))) or "none"
        raise ExportError(f"{tensors} does not exist; --checkpoint is one of the run's checkpoints ({have})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{config_path}: not readable JSON ({exc})") from exc
    return config, tensors


def _check_out(out: Path) -> None:
    from vlcli.train.rundir import check_output

    check_output(out, "--out")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"--out {out} exists and is not empty; choose a new folder (export never overwrites)")


def export_run(run: Path, out: Path, fmt: str = "vlcli", checkpoint: str = "BEST") -> Exported:
    """Export the ``checkpoint`` of the run in ``run`` to the new folder ``out`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    config, tensors = _run_files(run, checkpoint)
    if fmt == "peft":
        _check_peft_method(config)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "vlcli":
        files = _export_vlcli(run, tensors, out)
        adapters: list[str] = []
    else:
        files, adapters = _export_peft(run, tensors, config, out)
    from vlcli.export.card import write_card

    files.append(write_card(out, run, config, fmt, checkpoint, adapters))
    return Exported(out, fmt, files, adapters)


def _export_vlcli(run: Path, tensors: Path, out: Path) -> list[Path]:
    files = []
    for source, name in ((tensors, "BEST.safetensors"), (tensors.with_suffix(".json"), "BEST.json"),
                         (run / "config.json", "config.json")):
        if source.is_file():
            shutil.copyfile(source, out / name)
            files.append(out / name)
    return files


def _check_peft_method(config: dict[str, Any]) -> None:
    others = [label for flag, label in NOT_IN_PEFT.items() if config.get(flag)]
    if (config.get("encoder_prompt_len") or 0) > 0 or (config.get("decoder_prompt_len") or 0) > 0:
        others.append("prompt tuning")
    if not config.get("use_lora"):
        others.insert(0, "full fine-tuning" if config.get("unfreeze_language_model", True) else "no PEFT method")
    if others:
        raise ExportError(f"--format peft holds LoRA only; this run uses {', '.join(others)}, which PEFT lacks: "
                          "use --format vlcli (vlcli loads it back with --load)")


def _export_peft(run: Path, tensors: Path, config: dict[str, Any], out: Path) -> tuple[list[Path], list[str]]:
    from vlcli.export.peft_format import write_peft_adapters

    return write_peft_adapters(run, tensors, config, out)


__all__ = ["FORMATS", "ExportError", "Exported", "export_run"]
