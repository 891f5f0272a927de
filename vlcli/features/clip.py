"""CLIP grid features through open_clip (spec data-and-eval §2.2, §3.1, §3.4).

Only the image tower is built (``open_clip``'s vision-tower builder; no text tower). Weights come
from an open_clip pretrained tag (downloaded once to the open_clip / Hugging Face cache), from a local
file (an OpenAI ``.pt`` JIT archive or state dict, an open_clip checkpoint or ``.safetensors``), or
are random when asked for explicitly (tests, demos).

What is extracted:

* ResNets (RN50, RN101, RN50x4): the layer-4 map before attention pooling, (image_size/32)² tokens
  × C (2048, 2048, 2560), rows in row-major grid order; optionally the attention-pooled vector
  (1024, 512, 640) with the positional table interpolated to the grid (the original installed a zero
  table instead: fixed).
* ViT (ViT-B/32): the patch tokens after the last residual block (no ``ln_post``, no projection, as
  the original intended), 768 wide, (image_size/32)² tokens. The original zeroed the positional
  embedding and reshaped to 14×14 (which crashes at 224 px); here the real table is used, bicubic-
  interpolated when the image size differs from the model's 224.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlcli.config.derive import GRID_FEAT_DIM, POOLED_FEAT_DIM
from vlcli.features.common import ExtractionError, Progress, SilentProgress, atomic_path, write_json_atomic
from vlcli.features.images import CLIP_MEAN, CLIP_STD, ImageDataset, Preprocess, collate

BACKBONES: dict[str, str] = {"RN50": "RN50", "RN101": "RN101", "RN50x4": "RN50x4", "ViT": "ViT-B-32"}
"""``feature_type`` -> open_clip model name."""

GRID_DIM: dict[str, int] = GRID_FEAT_DIM
POOLED_DIM: dict[str, int] = POOLED_FEAT_DIM

DEFAULT_TAG = "openai"
DEFAULT_IMAGE_SIZE = 224
"""The original extractor's (and the released features') input size: 7×7 grids."""

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
DTYPES: tuple[str, ...] = ("float16", "float32")
LAYOUTS: tuple[str, ...] = ("per-image", "consolidated")
MANIFEST_FORMAT = "vlcli-clip-features-v1"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

_NO_WEIGHTS_FIX = (
    "fix: pass --clip_weights PATH to a local CLIP weight file (e.g. OpenAI's {name}.pt), or --random_init "
    "for a test run with random (meaningless) features"
)


def att_dir_name(feature_type: str) -> str:
    """``data_clip_{TYPE}_att``: the folder the task loaders read (spec §0.1)."""
    return f"data_clip_{feature_type}_att"


def fc_dir_name(feature_type: str) -> str:
    return f"data_clip_{feature_type}_fc"


# --------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class Weights:
    """Where the tower's weights come from: an open_clip ``tag``, a local ``file``, or ``random`` (seeded)."""

    kind: Literal["tag", "file", "random"]
    name: str | None = None
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        if self.kind == "random":
            return {"source": "random", "seed": self.seed}
        if self.kind == "file":
            path = Path(self.name or "")
            return {"source": "file", "path": str(path.resolve()), "bytes": path.stat().st_size if path.is_file() else None}
        return {"source": "open_clip tag", "tag": self.name}

    def key(self) -> dict[str, Any]:
        """What must match for two runs to write compatible features into one output."""
        d = self.describe()
        d.pop("bytes", None)
        return d


def check_feature_type(feature_type: str) -> str:
    if feature_type not in BACKBONES:
        raise ExtractionError(
            f"--feature_type {feature_type}: extract-features writes CLIP features; use one of {', '.join(BACKBONES)}"
        )
    return feature_type


def resolve_weights(feature_type: str, clip_weights: str | None, random_init: bool, seed: int = 0) -> Weights:
    """Interpret ``--clip_weights`` / ``--random_init``: a local file, an open_clip tag, or random."""
    model = BACKBONES[check_feature_type(feature_type)]
    if random_init:
        if clip_weights is not None:
            raise ExtractionError("--random_init and --clip_weights exclude each other; fix: drop one of them")
        return Weights("random", seed=seed)
    if clip_weights is None:
        return Weights("tag", DEFAULT_TAG)
    path = Path(clip_weights).expanduser()
    if path.is_file():
        return Weights("file", str(path))
    if path.is_dir():
        raise ExtractionError(f"--clip_weights {clip_weights}: is a folder; fix: name the weight file inside it")
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    if clip_weights in tags:
        return Weights("tag", clip_weights)
    if "/" in clip_weights or "\\" in clip_weights or path.suffix.lower() in WEIGHT_SUFFIXES:
        raise ExtractionError(
            f"--clip_weights {clip_weights}: no such file; "
            + _NO_WEIGHTS_FIX.format(name=feature_type).replace("pass --clip_weights PATH to", "point --clip_weights at")
        )
    raise ExtractionError(
        f"--clip_weights {clip_weights}: neither a file nor an open_clip tag of {model} "
        f"(tags: {', '.join(tags)}); fix: give a weight file path or one of those tags"
    )


def _cached_tag_file(cfg: dict[str, Any]) -> str | None:
    """The weight file of a tag if it is already in the Hugging Face or open_clip (``~/.cache/clip``) cache."""
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = hub.rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            for name in names:
                found = try_to_load_from_cache(repo, name)
                if isinstance(found, str) and Path(found).is_file():
                    return found
    url = cfg.get("url", "")
    if url:
        local = Path("~/.cache/clip").expanduser() / url.rsplit("/", 1)[-1]
        if local.is_file():
            return str(local)
    return None


def _online(cfg: dict[str, Any]) -> bool:
    """Whether the weights' host can be reached at all (fails fast instead of minutes of hub retries)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _tag_file(model: str, tag: str) -> tuple[str, dict[str, Any]]:
    """The weight file of an open_clip tag: from the cache, else downloaded."""
    import open_clip
    from open_clip import pretrained

    cfg = pretrained.get_pretrained_cfg(model, tag)
    cached = _cached_tag_file(cfg)
    if cached is not None:
        return cached, cfg
    if not _online(cfg):
        raise ExtractionError(
            f"--clip_weights {tag}: the open_clip weights of {model} are not in the cache and there is no network; "
            + _NO_WEIGHTS_FIX.format(name=model)
        )
    try:
        path = pretrained.download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001 - network, cache and hub errors all mean "no weights"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExtractionError(
            f"--clip_weights {tag}: could not download the open_clip weights of {model} ({first[:200]}); "
            + _NO_WEIGHTS_FIX.format(name=model)
        ) from None
    if not path:
        raise ExtractionError(f"--clip_weights {tag}: open_clip {open_clip.__version__} has no download for {model}")
    return path, cfg


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A CLIP state dict from an OpenAI JIT archive, a torch checkpoint or a safetensors file."""
    from open_clip.factory import load_state_dict

    if not path.endswith(".safetensors"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated, but OpenAI's .pt files are TorchScript
                return dict(torch.jit.load(path, map_location="cpu").state_dict())
        except Exception:  # noqa: BLE001 - not a TorchScript archive: read it as a checkpoint below
            pass
    try:
        state = load_state_dict(path, device="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ExtractionError(
            f"--clip_weights {path}: not a readable CLIP weight file ({type(exc).__name__}: {str(exc)[:160]}); "
            "fix: use an OpenAI CLIP .pt file, an open_clip checkpoint or a .safetensors file"
        ) from None
    if not isinstance(state, dict):
        raise ExtractionError(f"--clip_weights {path}: holds no state dict; fix: use a CLIP weight file")
    return state


def _visual_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image-tower part of a full CLIP state dict (``visual.*``); a tower-only dict as is."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return visual or state


def build_tower(feature_type: str, weights: Weights) -> tuple[nn.Module, dict[str, Any]]:
    """The open_clip image tower of ``feature_type`` at its native size, weights loaded, in eval mode.

    Returns ``(tower, info)`` with the normalisation ``mean``/``std`` the weights were trained with.
    """
    import open_clip
    from open_clip.model import _build_vision_tower

    model = BACKBONES[check_feature_type(feature_type)]
    config = open_clip.get_model_config(model)
    mean, std = CLIP_MEAN, CLIP_STD
    quick_gelu = True  # OpenAI weights (also for local files); irrelevant for the ResNets
    path: str | None = None
    if weights.kind == "tag":
        path, cfg = _tag_file(model, weights.name or DEFAULT_TAG)
        quick_gelu = bool(cfg.get("quick_gelu", False))
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))  # type: ignore[assignment]
    elif weights.kind == "file":
        path = weights.name
    if weights.kind == "random" and weights.seed is not None:
        torch.manual_seed(weights.seed)
    tower = _build_vision_tower(config["embed_dim"], config["vision_cfg"], quick_gelu=quick_gelu)
    if path is not None:
        state = _visual_state(_read_state_dict(path))
        try:
            result = tower.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            detail = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc)
            raise ExtractionError(
                f"--clip_weights {weights.name}: does not fit the {model} image tower ({detail[:200]}); "
                f"fix: use weights of the {feature_type} backbone"
            ) from None
        if result.missing_keys or result.unexpected_keys:
            parts = []
            if result.missing_keys:
                parts.append(f"missing {len(result.missing_keys)} (e.g. {', '.join(result.missing_keys[:3])})")
            if result.unexpected_keys:
                parts.append(f"unexpected {len(result.unexpected_keys)} (e.g. {', '.join(result.unexpected_keys[:3])})")
            raise ExtractionError(
                f"--clip_weights {weights.name}: does not match the {model} image tower: {'; '.join(parts)}; "
                f"fix: use weights of the {feature_type} backbone"
            )
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower, {"mean": mean, "std": std, "native_size": _native_size(config), "quick_gelu": quick_gelu}


def _native_size(config: dict[str, Any]) -> int:
    size = config["vision_cfg"]["image_size"]
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# ------------------------------------------------------------------------------------------ the encoder


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A (1 + n·n, C) positional table (class/mean token first) resized to (1 + gh·gw, C), bicubic."""
    first, table = pos[:1], pos[1:]
    n = int(round(math.sqrt(table.shape[0])))
    if n * n != table.shape[0]:
        raise ValueError(f"positional table of {table.shape[0]} cells is not a square grid")
    if (n, n) == tuple(grid):
        return pos
    c = table.shape[1]
    table = table.reshape(1, n, n, c).permute(0, 3, 1, 2).float()
    table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], c).to(pos.dtype)
    return torch.cat([first, table], dim=0)


class ClipGridEncoder(nn.Module):
    """An open_clip image tower returning ``(grid tokens (B, H·W, C), pooled (B, D) or None)``."""

    def __init__(self, tower: nn.Module, image_size: int, pooled: bool = False):
        super().__init__()
        if image_size % 32:
            raise ExtractionError(f"--image_size {image_size}: must be a multiple of 32 (the CLIP stride); e.g. 224")
        self.tower = tower
        self.grid = (image_size // 32, image_size // 32)
        self.is_vit = hasattr(tower, "conv1") and hasattr(tower, "class_embedding")
        self.pooled = pooled
        if self.is_vit:
            if pooled:
                raise ExtractionError("--pooled: the pooled vector is written for ResNet backbones only; fix: drop --pooled")
            self.register_buffer("pos", interpolate_pos_embed(tower.positional_embedding.detach(), self.grid), persistent=False)
        else:
            pool_pos = tower.attnpool.positional_embedding.detach()
            self.register_buffer("pos", interpolate_pos_embed(pool_pos, self.grid), persistent=False)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.is_vit:
            return self._vit(pixels), None
        t = self.tower
        x = t.stem(pixels)
        x = t.layer4(t.layer3(t.layer2(t.layer1(x))))  # (B, C, H, W)
        grid = x.flatten(2).transpose(1, 2)  # (B, H·W, C), row-major
        return grid, (self._attnpool(x) if self.pooled else None)

    def _vit(self, pixels: torch.Tensor) -> torch.Tensor:
        t = self.tower
        x = t.conv1(pixels)  # (B, width, gh, gw)
        x = x.flatten(2).transpose(1, 2)
        cls = t.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos.to(x.dtype)
        x = t.ln_pre(t.patch_dropout(x))
        x = t.transformer(x)  # batch first
        return x[:, 1:]

    def _attnpool(self, x: torch.Tensor) -> torch.Tensor:
        """open_clip's AttentionPool2d with the positional table interpolated to this grid."""
        ap = self.tower.attnpool
        x = x.flatten(2).permute(2, 0, 1)  # (H·W, B, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.pos[:, None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=ap.num_heads,
            q_proj_weight=ap.q_proj.weight,
            k_proj_weight=ap.k_proj.weight,
            v_proj_weight=ap.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([ap.q_proj.bias, ap.k_proj.bias, ap.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=ap.c_proj.weight,
            out_proj_bias=ap.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return out[0]


# ------------------------------------------------------------------------------------------ extraction


@dataclass
class ClipExtraction:
    """One `vlcli extract-features` run over CLIP (what to read, which backbone, where to write)."""

    feature_type: str
    images: list[Path]
    out: Path
    weights: Weights
    image_size: int = DEFAULT_IMAGE_SIZE
    batch_size: int | None = None
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float16"
    layout: str = "per-image"
    pooled: bool = False
    resize: str = "squash"
    source: str = ""
    standardize: Path | None = None
    """A ``.safetensors`` with per-channel ``mean`` / ``std`` (:func:`save_standardization`): features are
    written as ``(x - mean) / std``; the file is copied beside the manifest, which records it."""

    def __post_init__(self) -> None:
        check_feature_type(self.feature_type)
        if self.image_size < 32 or self.image_size % 32:
            raise ExtractionError(
                f"--image_size {self.image_size}: must be a positive multiple of 32 (the CLIP stride); e.g. 224 (7x7 grid)"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ExtractionError(f"--batch_size {self.batch_size}: must be at least 1")
        if self.num_workers < 0:
            raise ExtractionError(f"--num_workers {self.num_workers}: must be 0 or more")
        for option, value, allowed in (("--precision", self.precision, PRECISIONS), ("--dtype", self.dtype, DTYPES),
                                       ("--layout", self.layout, LAYOUTS)):
            if value not in allowed:
                raise ExtractionError(f"{option} {value}: use one of {', '.join(allowed)}")
        if self.pooled and self.feature_type == "ViT":
            raise ExtractionError("--pooled: the pooled vector is written for ResNet backbones only; fix: drop --pooled")
        if not self.images:
            raise ExtractionError("--images: no images to extract")

    # paths ------------------------------------------------------------------------------------------
    @property
    def consolidated(self) -> bool:
        return self.layout == "consolidated"

    @property
    def att_target(self) -> Path:
        """The per-image folder or the consolidated file of grid features."""
        name = att_dir_name(self.feature_type)
        return self.out / (f"{name}.h5" if self.consolidated else name)

    @property
    def fc_target(self) -> Path | None:
        if not self.pooled:
            return None
        name = fc_dir_name(self.feature_type)
        return self.out / (f"{name}.h5" if self.consolidated else name)

    @property
    def manifest_path(self) -> Path:
        if self.consolidated:
            return self.out / f"{att_dir_name(self.feature_type)}.manifest.json"
        return self.att_target / "manifest.json"

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // 32, self.image_size // 32)


@dataclass
class ExtractionResult:
    """What a run did: counts, the unreadable images (path, reason) and where the outputs are."""

    written: int
    existing: int
    failed: list[tuple[Path, str]]
    target: Path
    pooled_target: Path | None
    manifest: Path | None
    seconds: float
    device: str = "cpu"
    precision: str = "fp32"
    total_in_output: int = 0
    loop_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Extraction throughput: images written per second of the load-forward-write loop (no model build)."""
        return self.written / self.loop_seconds if self.loop_seconds > 0 else 0.0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ExtractionError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractionError(f"--device {device}: no CUDA GPU is available here; fix: --device cpu (or auto)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is fp16 on a GPU (as the original) and fp32 on the CPU; fp16 needs a GPU."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ExtractionError("--precision fp16 needs a GPU; fix: --precision fp32 (or bf16) on the CPU")
    return precision


def default_batch_size(device: torch.device) -> int:
    """32 on a GPU; 8 on the CPU (measured faster there than 16 or 32 with RN50 at 224 px)."""
    return 32 if device.type == "cuda" else 8


_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _existing_ids(job: ClipExtraction) -> set[str]:
    """Stems already extracted (both outputs present when ``pooled``)."""
    stems = {p.stem for p in job.images}
    if job.consolidated:
        have = _consolidated_ids(job.att_target)
        if job.fc_target is not None:
            have &= _consolidated_ids(job.fc_target)
        return stems & have
    att = job.att_target
    fc = job.fc_target
    return {s for s in stems if (att / f"{s}.h5").is_file() and (fc is None or (fc / f"{s}.h5").is_file())}


def _consolidated_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    try:
        with h5py.File(path, "r") as f:
            return set(f["features"].keys()) if "features" in f else set()
    except OSError as exc:
        raise ExtractionError(f"{path}: not a readable HDF5 file ({exc}); fix: delete it or choose another --out") from None


def _manifest_key(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in ("feature_type", "backbone", "weights", "image_size", "preprocessing", "dtype",
                                         "standardize")}


STANDARDIZE_FILE = "standardize.safetensors"


def save_standardization(path: Path, mean: torch.Tensor, std: torch.Tensor) -> Path:
    """Per-channel ``mean`` / ``std`` (float32, shape ``[C]``) for :attr:`ClipExtraction.standardize`."""
    from safetensors.torch import save_file

    with atomic_path(Path(path)) as tmp:
        save_file({"mean": mean.float().contiguous(), "std": std.float().contiguous()}, str(tmp))
    return Path(path)


def load_standardization(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        stats = load_file(str(path))
        return stats["mean"], stats["std"]
    except Exception as exc:  # OSError, KeyError, and safetensors' own error types
        raise ExtractionError(f"{path}: not a standardisation file with mean/std ({exc})") from None


def standardization_stats(encoder: ClipGridEncoder, images: list[Path], image_size: int, batch_size: int = 64,
                          resize: str = "squash", mean_std: tuple[Any, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``encoder``'s grid features over ``images`` (every grid cell counts)."""
    preprocess = Preprocess(image_size, resize, *(mean_std or ()))
    loader = torch.utils.data.DataLoader(ImageDataset(images, preprocess), batch_size=batch_size, collate_fn=collate)
    total = total_sq = None
    count = 0
    with torch.no_grad():
        for _, pixels, _ in loader:
            if pixels is None:
                continue
            grid = encoder(pixels)[0].double().flatten(0, -2)
            total = grid.sum(0) if total is None else total + grid.sum(0)
            total_sq = (grid**2).sum(0) if total_sq is None else total_sq + (grid**2).sum(0)
            count += grid.shape[0]
    if not count:
        raise ExtractionError("no readable image to compute the standardisation from")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt()
    # Near-constant channels (dead ReLUs) would be blown up to noise: their scale is floored at a tenth of
    # the typical channel's, so they stay near 0 after centring.
    live = std[std > 0]
    floor = 0.1 * live.median() if live.numel() else torch.tensor(1.0, dtype=std.dtype)
    return mean.float(), std.clamp_min(floor).float()


def _check_compatible(job: ClipExtraction, new: dict[str, Any]) -> None:
    """Refuse to add features made with other settings to an existing output (it would mix them)."""
    import json

    path = job.manifest_path
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    old_key, new_key = _manifest_key(old), _manifest_key(new)
    for key in (old_key, new_key):  # the file size is informative, not part of the identity
        key["weights"] = {k: v for k, v in (key.get("weights") or {}).items() if k != "bytes"}
    diffs = [k for k in new_key if old_key.get(k) != new_key[k]]
    if diffs:
        shown = ", ".join(f"{k} {old_key.get(k)!r} -> {new_key[k]!r}" for k in diffs[:2])
        raise ExtractionError(
            f"{path}: the features already in {job.att_target} were extracted with other settings ({shown}); "
            "fix: use the same settings or another --out"
        )


def _count_outputs(job: ClipExtraction) -> int:
    if job.consolidated:
        return len(_consolidated_ids(job.att_target))
    return sum(1 for e in _scandir(job.att_target) if e.name.endswith(".h5"))


def _scandir(path: Path) -> list[Any]:
    import os

    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def write_clip_h5(path: Path, image_id: str, features: np.ndarray) -> None:
    """One image in the original layout: group ``{image_id}``, dataset ``features`` (H·W, C); atomic."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_group(image_id).create_dataset("features", data=features)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _manifest(job: ClipExtraction, preprocess: Preprocess, count: int, failed: list[tuple[Path, str]]) -> dict[str, Any]:
    from vlcli import __version__

    grid_h, grid_w = job.grid
    return {
        "format": MANIFEST_FORMAT,
        "feature_type": job.feature_type,
        "backbone": f"open_clip {BACKBONES[job.feature_type]}",
        "weights": job.weights.describe(),
        "image_size": job.image_size,
        "grid": [grid_h, grid_w],
        "tokens": grid_h * grid_w,
        "feat_dim": GRID_DIM[job.feature_type],
        "output": "layer4 map before attention pooling" if job.feature_type != "ViT"
        else "patch tokens after the last block (no ln_post / projection)",
        "pooled": {"target": str(job.fc_target.name), "dim": POOLED_DIM[job.feature_type]} if job.fc_target else None,
        "preprocessing": preprocess.describe(),
        "dtype": job.dtype,
        "standardize": _standardize_record(job),
        "layout": job.layout,
        "count": count,
        "last_run": {"images": job.source, "unreadable": [[str(p), r] for p, r in failed[:100]]},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vlcli_version": __version__,
        "open_clip_version": _version("open_clip_torch"),
        "torch_version": torch.__version__,
    }


def _standardize_record(job: ClipExtraction) -> dict[str, Any] | None:
    """``{"file", "sha256"}`` of the standardisation applied (the file is copied beside the manifest)."""
    if job.standardize is None:
        return None
    import hashlib

    return {"file": STANDARDIZE_FILE, "sha256": hashlib.sha256(Path(job.standardize).read_bytes()).hexdigest()}


def extract_clip(job: ClipExtraction, progress: Progress | None = None,
                 encoder: ClipGridEncoder | None = None) -> ExtractionResult:
    """Run ``job``: skip images already extracted, extract the rest, report unreadable ones.

    ``encoder`` lets a caller (tests, benchmarks) reuse a built model; it must match the job's
    backbone and image size. With nothing left to extract no model is built and nothing is rewritten.
    """
    progress = progress or SilentProgress()
    device = resolve_device(job.device)
    precision = resolve_precision(job.precision, device)
    started = time.perf_counter()
    existing = _existing_ids(job)
    todo = [p for p in job.images if p.stem not in existing]
    target, fc_target = job.att_target, job.fc_target
    preprocess = Preprocess(job.image_size, job.resize)
    if not todo:
        return ExtractionResult(0, len(existing), [], target, fc_target, None, time.perf_counter() - started,
                                device.type, precision, _count_outputs(job))

    _check_compatible(job, _manifest(job, preprocess, 0, []))
    if encoder is None:
        tower, info = build_tower(job.feature_type, job.weights)
        encoder = ClipGridEncoder(tower, job.image_size, pooled=job.pooled)
        preprocess = Preprocess(job.image_size, job.resize, info["mean"], info["std"])
    elif encoder.grid != job.grid or (job.pooled and not encoder.pooled):
        raise ValueError("the given encoder does not match the job's image size / pooled output")
    encoder = encoder.to(device).eval()
    shift = scale = None
    if job.standardize is not None:
        shift, scale = (t.to(device) for t in load_standardization(job.standardize))
        job.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        copy = job.manifest_path.parent / STANDARDIZE_FILE
        if Path(job.standardize).resolve() != copy.resolve():
            with atomic_path(copy) as tmp:
                tmp.write_bytes(Path(job.standardize).read_bytes())

    loader = torch.utils.data.DataLoader(
        ImageDataset(todo, preprocess),
        batch_size=job.batch_size or default_batch_size(device),
        num_workers=job.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    out_dtype = np.dtype(job.dtype)
    failed: list[tuple[Path, str]] = []
    written = 0
    pooled_items: dict[str, np.ndarray] = {}

    def batches() -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """Yield ``(stem, grid features, pooled or None)`` per extracted image."""
        nonlocal written
        autocast = _AUTOCAST.get(precision)
        for indices, pixels, bad in loader:
            for i, reason in bad:
                failed.append((todo[i], reason))
            if pixels is not None:
                pixels = pixels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    grid, pooled = encoder(pixels)
                if shift is not None:
                    grid = (grid.float() - shift) / scale
                grid_np = grid.float().cpu().numpy().astype(out_dtype)
                pooled_np = pooled.float().cpu().numpy().astype(out_dtype) if pooled is not None else None
                for row, i in enumerate(indices):
                    yield todo[i].stem, grid_np[row], (pooled_np[row : row + 1] if pooled_np is not None else None)
                    written += 1
            progress.advance(len(indices) + len(bad))

    if not job.consolidated:
        # Written first too, so features of an interrupted run are still guarded against mixing settings.
        write_json_atomic(job.manifest_path, _manifest(job, preprocess, len(existing), []))
    progress.start(len(todo), f"{job.feature_type} {job.image_size}px")
    loop_started = time.perf_counter()
    try:
        if job.consolidated:
            from vlcli.data.features import write_consolidated

            redo = {p.stem for p in todo}

            def items() -> Iterator[tuple[str, np.ndarray]]:
                yield from ((k, v) for k, v in _old_items(target) if k not in redo)
                for stem, feats, pooled in batches():
                    if pooled is not None:
                        pooled_items[stem] = pooled
                    yield stem, feats

            write_consolidated(target, items())
            if fc_target is not None:
                write_consolidated(fc_target, _chain_old(fc_target, pooled_items))
        else:
            for stem, feats, pooled in batches():
                if pooled is not None and fc_target is not None:
                    write_clip_h5(fc_target / f"{stem}.h5", stem, pooled)
                write_clip_h5(target / f"{stem}.h5", stem, feats)
    finally:
        progress.finish()
    loop_seconds = time.perf_counter() - loop_started

    total = _count_outputs(job)
    manifest_path = job.manifest_path
    write_json_atomic(manifest_path, _manifest(job, preprocess, total, failed))
    return ExtractionResult(written, len(existing), failed, target, fc_target, manifest_path,
                            time.perf_counter() - started, device.type, precision, total, loop_seconds)


def _old_items(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """The images of an existing consolidated file in their stored dtype (kept when resuming)."""
    if not path.is_file():
        return
    with h5py.File(path, "r") as f:
        group = f["features"]
        for key in group:
            yield key, group[key][()]


def _chain_old(path: Path, new: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    for key, value in _old_items(path):
        if key not in new:
            yield key, value
    yield from new.items()
