"""Feature stores: where a task's visual features come from.

A store maps an image id (the original's file stems, e.g. ``COCO_val2014_000000391895``,
``2354786``, ``train-10171-0-img0``) to ``(features, boxes)``:

* ``features``: float32 array (N, feat_dim);
* ``boxes``: float32 array (N, 4), (x1, y1, x2, y2) normalised by the image width / height for
  BUTD regions (spec data-and-eval §2.4), all zeros for CLIP grid features.

Datasets only use this interface, so one store may route ids to several files (e.g. COCO train2014 /
val2014 / test2015) and tests or the demo world can use :class:`ArrayStore`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping

import numpy as np

from vlcli.errors import VlcliError


class FeatureError(VlcliError):
    """Missing image ids, unreadable feature files or features of the wrong shape."""


class FeatureStore(ABC):
    """Read-only access to visual features by image id."""

    feat_dim: int

    @abstractmethod
    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """``(features (N, feat_dim) float32, boxes (N, 4) float32)`` of ``image_id``; FeatureError if absent."""

    @abstractmethod
    def __contains__(self, image_id: object) -> bool: ...

    @abstractmethod
    def ids(self) -> Iterable[str]:
        """Every image id the store holds."""


class ArrayStore(FeatureStore):
    """Features held in memory: ``{image_id: features}`` or ``{image_id: (features, boxes)}``."""

    def __init__(self, items: Mapping[str, np.ndarray | tuple[np.ndarray, np.ndarray]]):
        self._items: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        dims = set()
        for key, value in items.items():
            feats, boxes = value if isinstance(value, tuple) else (value, None)
            feats = np.asarray(feats, dtype=np.float32)
            if feats.ndim != 2:
                raise FeatureError(f"features of image {key!r} must be (N, feat_dim); got shape {feats.shape}")
            boxes = np.zeros((feats.shape[0], 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
            if boxes.shape != (feats.shape[0], 4):
                raise FeatureError(f"boxes of image {key!r} must be ({feats.shape[0]}, 4); got {boxes.shape}")
            self._items[str(key)] = (feats, boxes)
            dims.add(feats.shape[1])
        if len(dims) > 1:
            raise FeatureError(f"features of different widths in one store: {sorted(dims)}")
        self.feat_dim = dims.pop() if dims else 0

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self._items[image_id]
        except KeyError:
            raise FeatureError(f"no features for image {image_id!r}") from None

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._items

    def ids(self) -> Iterable[str]:
        return iter(self._items)
