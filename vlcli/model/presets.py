"""What vlcli knows about a backbone without loading it.

The built-in presets let configuration validation (and, with the model core, parameter counting on
the meta device) work without downloading anything. A local directory is described by its
``config.json``. Plain data only: importing this module must not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BackboneInfo:
    """Family (``t5`` or ``bart``) and hidden size of a backbone, with where we learned it."""

    family: str
    d_model: int | None
    source: str


PRESETS: dict[str, BackboneInfo] = {
    "t5-small": BackboneInfo("t5", 512, "preset"),
    "t5-base": BackboneInfo("t5", 768, "preset"),
    "t5-large": BackboneInfo("t5", 1024, "preset"),
    "facebook/bart-base": BackboneInfo("bart", 768, "preset"),
    "facebook/bart-large": BackboneInfo("bart", 1024, "preset"),
}
# Hub aliases of the same checkpoints.
for _alias, _name in {
    "google-t5/t5-small": "t5-small",
    "google-t5/t5-base": "t5-base",
    "google-t5/t5-large": "t5-large",
    "bart-base": "facebook/bart-base",
    "bart-large": "facebook/bart-large",
}.items():
    PRESETS[_alias] = PRESETS[_name]


def backbone_info(backbone: str) -> BackboneInfo | None:
    """Describe ``backbone`` (preset name, local directory with config.json, or a hub name).

    Returns None when the family cannot be determined. For unknown hub names the family is taken
    from the name (``t5`` or ``bart`` in it, as the original did) and ``d_model`` is unknown.
    """
    if backbone in PRESETS:
        return PRESETS[backbone]
    path = Path(backbone).expanduser()
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        model_type = str(data.get("model_type", "")).lower()
        family = "t5" if model_type in {"t5", "mt5"} else "bart" if model_type in {"bart", "mbart"} else None
        if family is not None:
            return BackboneInfo(family, data.get("d_model"), f"{cfg}")
    lowered = backbone.lower()
    if "bart" in lowered:
        return BackboneInfo("bart", None, "name")
    if "t5" in lowered:
        return BackboneInfo("t5", None, "name")
    return None
