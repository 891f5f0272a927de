"""Raw images as a feature store, for the ``raw_*`` feature types (spec data-and-eval §2.6).

:class:`ImageStore` maps an image id to its file in a folder (``{id}.jpg``, ``.png``, ... found once by
listing the folder, sub-folders included) and returns ``(pixels (3, S, S) float32, boxes (0, 4))``:
the CLIP encoder inside the model turns the pixels into visual tokens with all-zero boxes, so the
dataset, collate and batch code of precomputed features is used unchanged (NLVR2's two images become
(2, 3, S, S) per example and (B, 2, 3, S, S) per batch).

Transforms (``S`` = ``image_size``):

* evaluation, and training without ``use_data_augmentation``: resize to exactly S×S (bicubic, aspect
  ratio not kept — the original), RGB, [0, 1], CLIP mean/std;
* training with ``use_data_augmentation``: the same resize, then a random crop of S×S after
  reflect-padding by ``int(0.0625·S)`` pixels, normalisation, and random erasing (p = 0.5, torchvision's
  defaults) — torchvision's transforms in the original's order, so the same seed gives the same pixels. Horizontal flips: the original flipped every task's images although
  questions and statements talk about left and right; here flips are on only for ``cls`` unless
  ``augment_hflip`` asks for them everywhere.

Random draws use torch's global generator (per DataLoader worker: torch seeds each worker).
Missing or unreadable images raise :class:`~vlcli.data.features.FeatureError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vlcli.data.features import FeatureError, FeatureStore
from vlcli.features.images import CLIP_MEAN, CLIP_STD, IMAGE_SUFFIXES, Preprocess, clip_pipeline

FLIP_SAFE_TASKS = ("cls",)
"""Tasks whose text never depends on left / right: flipped by default when augmenting."""


class ImageTransform:
    """Pixels of one image: the eval transform, or with ``augment`` the original's training augmentation
    (torchvision's transforms in the original's order; horizontal flips only with ``hflip``)."""

    def __init__(self, size: int, augment: bool = False, hflip: bool = False):
        from torchvision import transforms as T

        self.size = size
        self.augment = augment
        self.hflip = hflip
        self.base = Preprocess(size, "squash", CLIP_MEAN, CLIP_STD)
        if augment:
            steps = ([T.RandomHorizontalFlip()] if hflip else []) + [
                T.RandomCrop(size, padding=int(size * 0.0625), padding_mode="reflect")]
            self.pipeline = T.Compose([clip_pipeline(size, "squash", CLIP_MEAN, CLIP_STD, tuple(steps)),
                                       T.RandomErasing()])
        else:
            self.pipeline = self.base

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.pipeline(image)

    def describe(self) -> dict[str, object]:
        return {**self.base.describe(), "augment": self.augment, "hflip": self.hflip and self.augment}


class ImageStore(FeatureStore):
    """Image files below one folder (any depth) by file stem; ``get`` returns ``(pixels (3, S, S), boxes (0, 4))``.

    The folder is listed when the store is made; two files with one stem are an error."""

    def __init__(self, folder: str | os.PathLike[str], transform: ImageTransform, hint: str | None = None):
        self.folder = Path(folder)
        self.transform = transform
        self.hint = hint
        self._index: dict[str, Path] | None = None
        self._files()  # listed once here, so DataLoader workers inherit the index instead of listing again

    @property
    def feat_dim(self) -> int:  # type: ignore[override]
        return 3  # channels: the features are made inside the model

    def _files(self) -> dict[str, Path]:
        if self._index is None:
            if not self.folder.is_dir():
                fix = self.hint or "check data_root and the path overrides (docs/data.md)"
                raise FeatureError(f"{self.folder}: image folder not found; fix: {fix}")
            index: dict[str, Path] = {}
            for path in sorted(self.folder.rglob("*")):
                if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                    continue
                if path.stem in index:
                    raise FeatureError(f"{self.folder}: {index[path.stem]} and {path} share the image id "
                                       f"{path.stem!r}; keep one")
                index[path.stem] = path
            self._index = index
        return self._index

    def path_of(self, image_id: str) -> Path:
        try:
            return self._files()[image_id]
        except KeyError:
            raise FeatureError(
                f"{self.folder}: no image file for id {image_id!r} (looked for {image_id}.jpg/.png/...); "
                "fix: put the raw images there or point the images path at them (docs/data.md)"
            ) from None

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        path = self.path_of(image_id)
        try:
            with Image.open(path) as image:
                image.load()
                pixels = self.transform(image)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise FeatureError(f"{path}: cannot read image {image_id!r} ({exc}); fix: replace or remove the file") from None
        return pixels.numpy(), np.zeros((0, 4), np.float32)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and image_id in self._files()

    def ids(self) -> Iterable[str]:
        return list(self._files())


class ImageFolder(Protocol):
    """An image folder and the steps that create it (a :class:`vlcli.data.layout.DataPath` is one; this
    module does not import the layout, which imports it)."""

    @property
    def path(self) -> Path: ...

    @property
    def creates(self) -> str: ...


def image_stores(settings, task: str, paths: Mapping[str, ImageFolder], train: bool) -> dict[str, ImageStore]:
    """An :class:`ImageStore` per image folder of ``paths``, sharing ``task``'s transform."""
    transform = image_transform(settings, task, train)
    return {key: ImageStore(item.path, transform, hint=item.creates) for key, item in paths.items()}


def image_transform(settings, task: str, train: bool) -> ImageTransform:
    """The transform of ``task``'s raw images for training (``train``) or evaluation."""
    size = int(settings.get("image_size")[0])
    augment = bool(train and settings.get("use_data_augmentation"))
    hflip = task in FLIP_SAFE_TASKS or bool(settings.get("augment_hflip"))
    return ImageTransform(size, augment=augment, hflip=hflip)
