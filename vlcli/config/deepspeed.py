"""DeepSpeed configuration for ``--deepspeed``: the built-in ``zero2`` / ``zero3`` shorthands and the checks on a user's JSON.

Precision has one source of truth: the built-in configs take it from vlcli's ``--fp16`` (``"auto"``); a user's config may set
``fp16`` / ``bf16`` itself, but a value that contradicts ``--fp16`` is a configuration error (rule R32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_AUTO = {"fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}, "gradient_accumulation_steps": "auto",
         "gradient_clipping": "auto", "train_micro_batch_size_per_gpu": "auto"}
_ZERO = {"overlap_comm": False, "contiguous_gradients": True}
SHORTHANDS: dict[str, dict[str, Any]] = {
    "zero2": {"zero_optimization": {"stage": 2, **_ZERO}, **_AUTO},
    "zero3": {"zero_optimization": {"stage": 3, **_ZERO, "stage3_gather_16bit_weights_on_model_save": True}, **_AUTO},
}
"""Built-in configs; ``"auto"`` values are filled from vlcli's settings (--fp16, --gradient_accumulation_steps, --clip_grad_norm,
--batch_size)."""


class DeepSpeedConfigError(ValueError):
    """The --deepspeed value cannot be used; the message says why and how to fix it."""


def is_shorthand(value: str) -> bool:
    return value.strip().lower() in SHORTHANDS


def load_config(value: str) -> dict[str, Any]:
    """The config named by ``--deepspeed`` (a shorthand or a JSON file), as a dict; raises DeepSpeedConfigError."""
    key = value.strip().lower()
    if key in SHORTHANDS:
        return json.loads(json.dumps(SHORTHANDS[key]))
    path = Path(value).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeepSpeedConfigError("file not found; give the path of a DeepSpeed JSON config, or zero2 / zero3") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DeepSpeedConfigError(f"cannot be read ({e.__class__.__name__}); give a readable DeepSpeed JSON config") from None
    except json.JSONDecodeError as e:
        raise DeepSpeedConfigError(f"not valid JSON (line {e.lineno}, column {e.colno}); fix the file") from None
    if not isinstance(data, dict):
        raise DeepSpeedConfigError("a DeepSpeed config must be a JSON object; fix the file")
    return data


def _enabled(cfg: dict[str, Any], key: str) -> bool | str:
    section = cfg.get(key)
    if isinstance(section, dict):
        value = section.get("enabled", False)
        return "auto" if value == "auto" else bool(value)
    return False


def precision_conflicts(cfg: dict[str, Any], fp16: bool) -> list[str]:
    """Messages for every contradiction between the DeepSpeed config's precision and vlcli's --fp16 (empty: consistent)."""
    out: list[str] = []
    ds_fp16, ds_bf16 = _enabled(cfg, "fp16"), _enabled(cfg, "bf16")
    if ds_fp16 is True and ds_bf16 is True:
        out.append("the DeepSpeed config enables both fp16 and bf16; enable one")
    if fp16 and ds_bf16 is True:
        out.append("--fp16 conflicts with bf16.enabled=true in the DeepSpeed config; drop --fp16 or set bf16.enabled to false")
    if not fp16 and ds_fp16 is True:
        out.append("fp16.enabled=true in the DeepSpeed config but --fp16 is off; add --fp16 or set fp16.enabled to \"auto\"")
    return out


def resolve(cfg: dict[str, Any], *, fp16: bool, batch_size: int, accumulation: int, clip: float | None) -> dict[str, Any]:
    """``cfg`` with its ``"auto"`` values filled from vlcli's settings (precision: fp16 when --fp16, else fp32)."""
    cfg = json.loads(json.dumps(cfg))
    for key, on in (("fp16", fp16), ("bf16", False)):
        section = cfg.get(key)
        if isinstance(section, dict) and section.get("enabled") == "auto":
            section["enabled"] = on
    fills = {"gradient_accumulation_steps": accumulation, "train_micro_batch_size_per_gpu": batch_size,
             "gradient_clipping": clip if clip and clip > 0 else 0.0}
    for key, value in fills.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
    cfg.pop("train_batch_size", None) if cfg.get("train_batch_size") == "auto" else None
    return cfg


def missing_message(value: str) -> str:
    """The one-line error of ``--deepspeed`` without the package."""
    return (f"--deepspeed {value}: the deepspeed package is not installed; install it with "
            "`pip install -e \".[deepspeed]\"` (or `pip install deepspeed`), or drop --deepspeed")
