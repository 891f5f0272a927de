"""Input images of `vlcli extract-features`: listing, loading and CLIP preprocessing.

Images are read with PIL and converted to RGB. Truncated or unreadable files are not fatal: the
dataset returns the error instead of a tensor, and the extractor reports and skips the image (PIL's
``LOAD_TRUNCATED_IMAGES`` is left off, so a truncated file is an error rather than grey pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vlcli.features.common import ExtractionError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES: tuple[str, ...] = ("squash", "crop")
"""``squash``: resize to exactly S x S (aspect ratio not kept; the original extractor and the raw_*
loaders, spec §3.1 / §2.6) then a (no-op) center crop; ``crop``: resize the shorter side to S, then
center-crop S x S (CLIP's own preprocessing; drops the borders of non-square images)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB (after the resize, as the original's loaders did: grey, palette and RGBA images are resized first)."""
    return image.convert("RGB")


def clip_pipeline(size: int, resize: str, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
                  augment: tuple[Any, ...] = ()) -> Any:
    """torchvision's CLIP preprocessing, as the original VL-Adapter raw-image loaders and open_clip compose it:
    ``Resize`` (bicubic; ``squash``: to exactly S x S, ``crop``: the shorter side to S, the longer one truncated
    as CLIP does), ``CenterCrop(S)``, RGB, ``ToTensor``, ``Normalize``; ``augment``: PIL transforms inserted
    after the resize (the original's training flips and reflect-padded crops)."""
    from torchvision import transforms as T

    target = (size, size) if resize == "squash" else size
    return T.Compose([T.Resize(target, interpolation=T.InterpolationMode.BICUBIC), *augment, T.CenterCrop(size),
                      to_rgb, T.ToTensor(), T.Normalize(mean, std)])


@dataclass(frozen=True)
class Preprocess:
    """Resize + center crop to ``size`` (bicubic), RGB, to [0, 1], CLIP mean/std normalisation."""

    size: int
    resize: str = "squash"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ExtractionError(f"--resize {self.resize}: use one of {', '.join(RESIZE_MODES)}")
        object.__setattr__(self, "_pipeline", clip_pipeline(self.size, self.resize, self.mean, self.std))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self._pipeline(image)  # type: ignore[attr-defined]

    def describe(self) -> dict[str, object]:
        """The preprocessing as manifest data."""
        return {
            "resize": self.resize,
            "size": [self.size, self.size],
            "interpolation": "bicubic",
            "center_crop": True,
            "color": "RGB",
            "scale": "1/255",
            "mean": list(self.mean),
            "std": list(self.std),
        }


def list_images(source: Path) -> list[Path]:
    """The images of ``source``: a folder (its image files, not recursive, sorted by name) or a text
    file with one image path per line (relative paths are relative to the list file's folder; blank
    lines and ``#`` comments ignored). Files named in a list that do not exist are kept: the
    extractor reports them as unreadable. Two images with the same stem are an error (one h5 each).
    """
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ExtractionError(
                f"--images {source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder; "
                "fix: point --images at the folder of images or a text file listing them"
            )
    elif source.is_file():
        if source.suffix.lower() in IMAGE_SUFFIXES:
            raise ExtractionError(f"--images {source}: is an image; fix: pass its folder, or a text file listing images")
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ExtractionError(f"--images {source}: cannot read the image list ({exc}); fix: one image path per line") from None
        paths = []
        for line in lines:
            text = line.strip()
            if text and not text.startswith("#"):
                p = Path(text).expanduser()
                paths.append(p if p.is_absolute() else source.parent / p)
        if not paths:
            raise ExtractionError(f"--images {source}: the list names no images; fix: one image path per line")
    else:
        raise ExtractionError(f"--images {source}: no such folder or file")
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen and seen[p.stem] != p:
            raise ExtractionError(
                f"--images {source}: {seen[p.stem]} and {p} have the same stem {p.stem!r} and would write the same "
                "feature file; fix: rename one, or list them in separate runs with different --out"
            )
        seen[p.stem] = p
    return list(dict.fromkeys(paths))


Loaded = tuple[int, "torch.Tensor | None", "str | None"]


class ImageDataset(Dataset):
    """``index -> (index, pixels (3, S, S) or None, error or None)``; never raises for a bad file."""

    def __init__(self, paths: list[Path], preprocess: Preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Loaded:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image.load()
                return index, self.preprocess(image), None
        except FileNotFoundError:
            return index, None, "file not found"
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable", reported per image
            return index, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def collate(batch: list[Loaded]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """``(indices of loaded images, stacked pixels or None, [(index, error)] of unreadable ones)``."""
    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, err or "unreadable") for i, x, err in batch if x is None]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], pixels, bad
