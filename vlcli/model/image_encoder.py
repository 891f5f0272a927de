"""The in-model CLIP image encoder of the ``raw_*`` feature types (spec data-and-eval §2.6, config §3.9).

``raw_RN50`` / ``raw_RN101`` / ``raw_RN50x4`` run open_clip's ``ModifiedResNet`` inside the model on
normalised pixels and feed its layer-4 grid (``(image_size / 32)²`` tokens of 2048 / 2048 / 2560
channels, row-major) to the visual embedding, or with ``vis_pooling_output`` the attention-pooled
vector (1024 / 512 / 640) as one token per image. The attention pool's positional table is resized
(bicubic) to the grid of ``image_size`` once, at build time, so its shape follows ``image_size`` (the
original did the same; its feature extractor installed zeros instead, a bug fixed in both places).

Trainable parts (:func:`set_encoder_trainable`): nothing by default; ``unfreeze_vis_encoder`` = all,
``unfreeze_vis_last_layer`` = ``layer4`` and the attention pool, ``unfreeze_batch_norms`` = every
BatchNorm's affine parameters; visual adapters (``use_vis_adapter``) are PEFT modules and train anyway.

BatchNorm statistics: like the original, the encoder's BatchNorms update their running statistics in
training mode unless ``freeze_bn_statistics`` keeps every BatchNorm of the encoder (adapters' included)
in eval mode. Because those statistics change while the weights stay frozen, :meth:`changing_buffers`
names them, and adapter-only checkpoints store them (otherwise a reloaded model would silently use the
statistics of the initial weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlcli.config.derive import POOLED_FEAT_DIM
from vlcli.errors import VlcliError

RANDOM_SEED = 0
"""Seed of ``clip_random_init`` weights: fixed, so an adapter-only checkpoint reloads into the same encoder."""


class ImageEncoderError(VlcliError):
    """The in-model CLIP encoder cannot be built or fed (weights, image size, input shape)."""


@dataclass(frozen=True)
class ImageEncoderConfig:
    """What the in-model encoder is built from (recorded in checkpoint manifests)."""

    clip_type: str
    image_size: int
    pooled: bool = False
    weights: str | None = None  # open_clip tag or local file; None = the "openai" tag
    random_init: bool = False
    freeze_bn_statistics: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> ImageEncoderConfig | None:
        """The encoder of a ``raw_*`` feature_type; None for precomputed features."""
        feature_type = str(settings.get("feature_type"))
        if not feature_type.startswith("raw_"):
            return None
        clip_type = feature_type[len("raw_"):]
        if clip_type not in POOLED_FEAT_DIM:  # the ResNets (the encoder has no ViT path)
            raise ImageEncoderError(
                f"--feature_type {feature_type}: the in-model encoder supports raw_RN50, raw_RN101 and raw_RN50x4"
            )
        return cls(
            clip_type=clip_type,
            image_size=int(settings.get("image_size")[0]),
            pooled=bool(settings.get("vis_pooling_output")),
            weights=settings.get("clip_weights"),
            random_init=bool(settings.get("clip_random_init")),
            freeze_bn_statistics=bool(settings.get("freeze_bn_statistics")),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "clip_type": self.clip_type,
            "image_size": self.image_size,
            "pooled": self.pooled,
            "weights": "random" if self.random_init else (self.weights or "openai"),
        }


class CLIPImageEncoder(nn.Module):
    """open_clip's ModifiedResNet: pixels (B, 3, S, S) -> grid (B, (S/32)², C) or pooled (B, 1, D)."""

    parameter_group = "CLIP image encoder"

    def __init__(self, tower: nn.Module, config: ImageEncoderConfig):
        super().__init__()
        if config.image_size % 32 or config.image_size < 32:
            raise ImageEncoderError(f"--image_size {config.image_size}: must be a multiple of 32 (e.g. 224)")
        self.tower = tower
        self.config = config
        from vlcli.features.clip import interpolate_pos_embed

        pool = tower.attnpool
        side = config.image_size // 32
        with torch.no_grad():
            table = interpolate_pos_embed(pool.positional_embedding.detach(), (side, side))
        pool.positional_embedding = nn.Parameter(table.contiguous(), requires_grad=pool.positional_embedding.requires_grad)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ImageEncoderError(f"images must be (B, 3, H, W); got shape {tuple(pixels.shape)}")
        size = self.config.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ImageEncoderError(
                f"images are {pixels.shape[-2]}x{pixels.shape[-1]} but the encoder was built for --image_size "
                f"{size}; load the images with the same image_size"
            )
        t = self.tower
        x = t.stem(pixels.to(t.conv1.weight.dtype))
        x = t.layer4(t.layer3(t.layer2(t.layer1(x))))  # (B, C, H, W)
        if self.config.pooled:
            return t.attnpool(x).unsqueeze(1)  # (B, 1, D)
        return x.flatten(2).transpose(1, 2)  # (B, H·W, C), row-major

    def batch_norms(self) -> Iterator[nn.modules.batchnorm._BatchNorm]:
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                yield module

    def train(self, mode: bool = True) -> CLIPImageEncoder:
        super().train(mode)
        if mode and self.config.freeze_bn_statistics:
            for bn in self.batch_norms():
                bn.eval()
        return self

    def changing_buffers(self, prefix: str = "") -> list[str]:
        """State keys whose values change in training although no parameter owns them (BN statistics)."""
        if self.config.freeze_bn_statistics:
            return []
        keys = []
        for name, module in self.named_modules(prefix=prefix.rstrip(".")):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                keys += [f"{name}.running_mean", f"{name}.running_var", f"{name}.num_batches_tracked"]
        return keys


def build_image_encoder(config: ImageEncoderConfig, meta: bool = False) -> CLIPImageEncoder:
    """Build the encoder with its weights (open_clip tag, local file, or seeded random); all frozen.

    ``meta``: shapes only (``inspect-config``), nothing is read or downloaded.
    """
    from vlcli.features.clip import Weights, build_tower, resolve_weights
    from vlcli.features.common import ExtractionError

    try:
        if meta:
            weights = Weights("random")
        else:
            weights = resolve_weights(config.clip_type, config.weights, config.random_init, seed=RANDOM_SEED)
        with torch.random.fork_rng(devices=[]):  # the global RNG (the run's --seed stream) is left alone
            tower, _ = build_tower(config.clip_type, weights)
    except ExtractionError as exc:
        message = str(exc).replace("--random_init", "--clip_random_init")
        raise ImageEncoderError(message) from None
    if config.random_init:
        # open_clip zero-initialises every block's last BatchNorm (bn3) like CLIP, so a random tower's
        # residual branches output zeros and pass no gradient: adapters in them could never learn.
        with torch.no_grad():
            for name, param in tower.named_parameters():
                if name.endswith("bn3.weight"):
                    param.fill_(1.0)
    tower.requires_grad_(False)
    return CLIPImageEncoder(tower, config)


def set_encoder_trainable(encoder: CLIPImageEncoder, settings: Any) -> None:
    """Unfreeze the parts named by ``unfreeze_vis_encoder`` / ``unfreeze_vis_last_layer`` / ``unfreeze_batch_norms``."""
    if settings.get("unfreeze_vis_encoder"):
        encoder.tower.requires_grad_(True)
    if settings.get("unfreeze_vis_last_layer"):
        encoder.tower.layer4.requires_grad_(True)
        encoder.tower.attnpool.requires_grad_(True)
    if settings.get("unfreeze_batch_norms"):
        for bn in encoder.batch_norms():
            bn.requires_grad_(True)
