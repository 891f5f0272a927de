"""The model card (``README.md``) of an export: base model, method, tasks, trainable share, metrics, command."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from vlcli.train.runs import method_name


def _metrics(run: Path) -> list[str]:
    lines = []
    rows = []
    try:
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if isinstance(row.get("score"), (int, float)):
                rows.append(row)
    except (OSError, ValueError):
        pass
    if rows:
        best = max(rows, key=lambda r: r["score"])
        lines.append(f"- best validation score {best['score']:.2f} (epoch {best['epoch'] + 1})")
        for key, value in best.items():
            if key.startswith("valid/") and isinstance(value, dict):
                shown = ", ".join(f"{k} {v:.2f}" for k, v in value.items() if isinstance(v, (int, float)))
                lines.append(f"- {key}: {shown}")
    try:
        test = json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))
        for key, value in test.items():
            if isinstance(value, dict) and value:
                shown = ", ".join(f"{k} {v:.2f}" for k, v in value.items() if isinstance(v, (int, float)))
                lines.append(f"- {key}: {shown}")
    except (OSError, ValueError):
        pass
    return lines or ["- no metrics recorded in the run"]


def write_card(out: Path, run: Path, config: dict[str, Any], fmt: str, checkpoint: str, adapters: list[str]) -> Path:
    """Write ``out/README.md`` and return its path."""
    provenance = config.get("_run") or {}
    params = provenance.get("parameters") or {}
    tasks = config.get("tasks")
    tasks = tasks if isinstance(tasks, str) else ",".join(tasks or [])
    share = f"{params['percent']:.2f} % ({params['trainable']:,} of {params['total']:,} parameters)" if params else "-"
    command = shlex.join(provenance.get("argv") or []) or "-"
    init = provenance.get("init") or {}
    base = f"`{config.get('backbone')}`"
    if init:
        base = (f"`{config.get('backbone')}` architecture with the weights of the warm-start checkpoint "
                f"`{init.get('path')}` (sha256 {str(init.get('sha256'))[:12]})"
                + (", saved in `base/`" if fmt == "peft" else ""))
    lines = [
        f"# {config.get('run_name') or run.name}",
        "",
        f"Exported by `vlcli export` from `{run}` ({checkpoint} checkpoint), format `{fmt}`.",
        "",
        f"- base model: {base}",
        f"- method: {method_name(config)}",
        f"- tasks: {tasks}",
        f"- visual input: `{config.get('feature_type')}`",
        f"- trainable share: {share}",
        f"- made with: `{command}`",
        "",
        "## Metrics",
        "",
        *_metrics(run),
        "",
        "## Loading",
        "",
    ]
    if fmt == "peft":
        first = adapters[0] if adapters else "default"
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            "tokenizer = AutoTokenizer.from_pretrained(DIR)  # the VL tokenizer (<extra_id_k>, <vis_extra_id_k>)",
            "base = AutoModelForSeq2SeqLM.from_pretrained(DIR + '/base')  # the warm-start weights" if init else
            f"base = AutoModelForSeq2SeqLM.from_pretrained({config.get('backbone')!r})",
            "base.resize_token_embeddings(len(tokenizer))",
            "model = PeftModel.from_pretrained(base, DIR)" if len(adapters) <= 1 else
            f"model = PeftModel.from_pretrained(base, DIR + '/{first}', adapter_name={first!r})",
            *[f"model.load_adapter(DIR + '/{a}', adapter_name={a!r})" for a in adapters[1:]],
            "```",
            "",
            *(["The biases trained with LoRA are shared by the tasks: load `lm_biases.safetensors` into the base "
               "first (`base.load_state_dict(safetensors.torch.load_file(DIR + '/lm_biases.safetensors'), "
               "strict=False)`), before `PeftModel.from_pretrained` (peft keeps biases for one adapter only).", ""]
              if (out / "lm_biases.safetensors").is_file() else []),
            "Note: this is the text side of the VL model. The visual embedding (the projection of the image "
            "features into the encoder) is not part of a text-only Hugging Face model; it is saved in "
            "`visual_embedding.safetensors` (vlcli's key names). For image inputs, use the vlcli export "
            "(`vlcli export RUN --format vlcli`) with `vlcli eval --load`.",
        ]
    else:
        lines += ["`vlcli eval --load DIR` evaluates it; `vlcli finetune ... --load DIR` starts from it."]
        if not config.get("use_lora"):
            lines += ["", "PEFT's adapter format has no equivalent of this method; vlcli's format holds it."]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
