"""What a checkpoint manifest records about the model, and the check made when loading one."""

from __future__ import annotations

from typing import Any

from vlcli.model.checkpoint import CheckpointError

# Method settings recorded in the manifest (the PEFT section of Settings); those that only affect
# initialisation or training losses are not compared when loading.
_METHOD_SECTION = "peft"
_NOT_COMPARED = {"phm_init_range", "track_z", "lambda_z"}


def describe(model: Any, settings: Any | None = None) -> dict[str, Any]:
    """Manifest fields of ``model`` (a VLModel) and, when given, the settings it was built from."""
    info: dict[str, Any] = {
        "backbone": model.backbone,
        "family": model.family,
        "vocab_size": model.vocab_size,
        "d_model": model.d_model,
        "visual": model.visual.as_dict() if model.visual is not None else None,
    }
    from vlcli.model.warmstart import INIT_ATTR

    if getattr(model, INIT_ATTR, None):
        info["init"] = getattr(model, INIT_ATTR)  # the warm start an adapter-only checkpoint builds on
    encoder = getattr(model, "visual_encoder", None)
    if encoder is not None:
        info["image_encoder"] = encoder.config.as_dict()
    if settings is not None:
        info["tasks"] = list(settings.derived.tasks) if settings.derived else []
        info["feature_type"] = settings.get("feature_type")
        info["method"] = getattr(settings, _METHOD_SECTION).model_dump(mode="json")
    return info


def check_manifest(manifest: dict[str, Any], model: Any, path: str, settings: Any | None = None) -> None:
    """Raise :class:`CheckpointError` when the checkpoint was made for a different model.

    Compared: model family, vocabulary size, feat_dim and the visual reduction (they change tensor
    shapes or meaning) and, with ``settings``, the method configuration (adapter / LoRA / prompt
    settings decide which tensors exist).
    """
    current = describe(model, settings)
    problems: list[str] = []

    def differ(label: str, saved: Any, now: Any, fix: str) -> None:
        if saved is not None and now is not None and saved != now:
            problems.append(f"{label}: checkpoint {saved!r}, now {now!r} ({fix})")

    differ("model family", manifest.get("family"), current["family"], "use the checkpoint's --backbone")
    differ(
        "vocab size",
        manifest.get("vocab_size"),
        current["vocab_size"],
        "use the checkpoint's --tokenizer/--backbone",
    )
    saved_visual = manifest.get("visual") or {}
    now_visual = current["visual"] or {}
    differ(
        "feat_dim",
        saved_visual.get("feat_dim"),
        now_visual.get("feat_dim"),
        "use the checkpoint's --feature_type/--feat_dim",
    )
    differ(
        "visual reduction",
        saved_visual.get("reduction"),
        now_visual.get("reduction"),
        "use the checkpoint's --downsample/--oneddownsample/--sparse_sample",
    )
    if settings is not None and isinstance(manifest.get("method"), dict):
        saved_method, now_method = manifest["method"], current["method"]
        common = (saved_method.keys() & now_method.keys()) - _NOT_COMPARED
        changed = sorted(k for k in common if saved_method[k] != now_method[k])
        if changed:
            shown = ", ".join(f"{k} {saved_method[k]!r} -> {now_method[k]!r}" for k in changed[:6])
            more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            problems.append(
                f"method settings differ: {shown}{more} (use the checkpoint's method settings or its run's config.json)"
            )
    if problems:
        raise CheckpointError(f"checkpoint {path} was saved for a different model: " + "; ".join(problems))
