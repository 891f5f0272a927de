"""Feature stores: where a task's visual features come from.

A store maps an image id (the original's file stems, e.g. ``COCO_val2014_000000391895``,
``2354786``, ``train-10171-0-img0``) to ``(features, boxes)``:

* ``features``: float32 array (N, feat_dim);
* ``boxes``: float32 array (N, 4), (x1, y1, x2, y2) normalised by the image width / height for
  BUTD regions (spec data-and-eval §2.4), all zeros for CLIP grid features.

Datasets only use this interface, so one store may route ids to several files (e.g. COCO train2014 /
val2014 / test2015) and tests or the demo world can use :class:`ArrayStore`.

On disk: :class:`BUTDStore` reads the original per-image-set BUTD h5 (spec §2.1), :class:`CLIPStore`
the original one-h5-per-image CLIP folders (§2.2), :class:`ConsolidatedStore` vlcli's single-file
format (written by :func:`write_consolidated`); :class:`RoutedStore` puts several behind one. Which
files a task reads is :mod:`vlcli.data.layout`'s business.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vlcli.atomic import atomic_path
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

    def store_for(self, image_id: str) -> FeatureStore:
        """The store that serves ``image_id`` (itself; a :class:`RoutedStore` names one of its stores)."""
        return self


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


# --------------------------------------------------------------------------------------------------
# h5 stores (spec data-and-eval §2.1, §2.2) and vlcli's consolidated format.
#
# h5py handles must not cross a fork: a DataLoader worker that inherits the parent's open handle
# reads through a shared HDF5 library state and can return garbage or crash. Each store therefore
# opens its file on the first ``get`` in the current process (remembering the pid) and drops the
# handle when pickled, so workers started by fork or spawn each open their own.

BOX_TOLERANCE = 1e-5
"""BUTD boxes divided by the image size must lie within [-tol, 1 + tol] before clamping (spec §2.4)."""

CONSOLIDATED_FORMAT = "vlcli-consolidated-v1"


def _as_float32(array: np.ndarray) -> np.ndarray:
    """Stored float16 (CLIP on GPU) or float32 -> float32, always a fresh C-contiguous array."""
    return np.ascontiguousarray(array, dtype=np.float32)


def _missing_file_message(path: Path, hint: str | None) -> str:
    fix = hint or "check data_root and the path overrides (docs/data.md)"
    return f"{path}: feature file not found; fix: {fix}"


class _LazyH5:
    """An h5 file opened read-only on first use in each process and never pickled."""

    def __init__(self, path: str | os.PathLike[str], hint: str | None = None):
        self.path = Path(path)
        self.hint = hint
        self._file: Any = None
        self._pid: int | None = None

    def file(self) -> Any:
        """The open ``h5py.File`` of this process (re-opened after a fork)."""
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            # After a fork the inherited handle belongs to the parent: forget it without closing
            # it here (closing would go through the shared library state we want to avoid).
            self._file = None
            if not self.path.is_file():
                raise FeatureError(_missing_file_message(self.path, self.hint))
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise FeatureError(f"{self.path}: not a readable HDF5 file ({exc}); fix: re-create or re-download it") from None
            self._pid = pid
        return self._file

    def close(self) -> None:
        """Close the handle if this process opened it."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "hint": self.hint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.hint = state["hint"]
        self._file = None
        self._pid = None


class _Layout:
    """Where one stored feature array lies: its byte offset in the file (None: chunked or compressed, read it
    through h5py), shape and dtype."""

    __slots__ = ("dtype", "offset", "shape")

    def __init__(self, node: Any):
        self.shape: tuple[int, ...] = tuple(node.shape)
        self.dtype = np.dtype(node.dtype)
        offset = node.id.get_offset()
        self.offset: int | None = int(offset) if offset is not None and node.compression is None else None


def _pread_into(fd: int, offset: int, out: np.ndarray) -> None:
    """Fill the C-contiguous ``out`` with the bytes at ``offset`` of the open file ``fd`` (no HDF5 call)."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short read at offset {offset + done}")
        done += n


def _read_array(fd: int, lay: _Layout, rows: int | None = None) -> np.ndarray:
    """A new array (stored dtype) of the bytes at ``lay``'s offset in the open file ``fd``: the whole array, or
    its first ``rows`` rows."""
    out = np.empty(lay.shape if rows is None else (rows, *lay.shape[1:]), lay.dtype)
    _pread_into(fd, lay.offset, out)  # type: ignore[arg-type]
    return out


class _BatchBuffers:
    """The (B, N, F) arrays :meth:`read_batch` fills, reused once nothing refers to them any more.

    A batch of 500 CLIP grids is 100 MB: a fresh array per batch makes the OS map and zero 25,000 pages each
    time (about as long as reading the features). A buffer is handed out again only when this pool holds the
    last reference to it (the batch, its tensors and every view of it are gone), so a batch still in use is
    never overwritten; at most ``keep`` buffers are kept.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._buffers: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        for buf in self._buffers:
            # references: the list, `buf`, getrefcount's argument; anything more is a batch still alive
            if buf.shape == shape and buf.dtype == dtype and sys.getrefcount(buf) <= 3:
                return buf
        buf = np.empty(shape, dtype)
        self._buffers = [buf, *self._buffers][: self.keep]
        return buf

    def __getstate__(self) -> dict[str, Any]:
        return {"keep": self.keep, "_buffers": []}  # a copy of the store (a spawned worker) starts empty


def _scaled(pixel_boxes: np.ndarray, img_w: float, img_h: float) -> np.ndarray:
    """BUTD pixel corner boxes divided by the image size (float64; not yet clamped)."""
    boxes = np.array(pixel_boxes, dtype=np.float64)
    boxes[:, (0, 2)] /= img_w
    boxes[:, (1, 3)] /= img_h
    return boxes


def _stack_dtype(layouts: list[_Layout]) -> np.dtype | None:
    """The common stored dtype of a batch (float16 or float32), or None when shapes or dtypes differ."""
    first = layouts[0]
    if any(lay.shape != first.shape or lay.dtype != first.dtype for lay in layouts):
        return None
    return first.dtype if first.dtype in (np.float16, np.float32) else None


class _H5Store(FeatureStore):
    """Shared parts of the single-file stores: lazy handle, feat_dim check, pickling."""

    def __init__(self, path: str | os.PathLike[str], feat_dim: int | None = None, hint: str | None = None):
        self._h5 = _LazyH5(path, hint)
        self._expected_dim = feat_dim
        self._raw: tuple[int, int] | None = None  # (pid, descriptor) for plain reads at learnt offsets
        self._buffers = _BatchBuffers()

    def _fd(self) -> int:
        """This process's own descriptor of the file (a forked worker opens its own)."""
        pid = os.getpid()
        if self._raw is None or self._raw[0] != pid:
            self._raw = (pid, os.open(self.path, os.O_RDONLY))
        return self._raw[1]

    @property
    def path(self) -> Path:
        return self._h5.path

    @property
    def feat_dim(self) -> int:  # type: ignore[override]
        """The expected width if given, else the width of the first stored image (opens the file)."""
        if self._expected_dim is not None:
            return self._expected_dim
        first = next(iter(self.ids()), None)
        if first is None:
            raise FeatureError(f"{self.path}: the feature file holds no images; fix: re-create it")
        self._expected_dim = int(self.get(first)[0].shape[1])
        return self._expected_dim

    def _check_features(self, image_id: str, feats: np.ndarray) -> None:
        if feats.ndim != 2:
            raise FeatureError(f"{self.path}: features of image {image_id!r} must be (N, feat_dim); got shape {feats.shape}")
        if self._expected_dim is not None and feats.shape[1] != self._expected_dim:
            raise FeatureError(
                f"{self.path}: features of image {image_id!r} are {feats.shape[1]} wide, expected {self._expected_dim}; "
                "fix: set feature_type / feat_dim to match the file, or point the path at the right features"
            )

    def _no_image(self, image_id: str) -> FeatureError:
        return FeatureError(
            f"{self.path}: no features for image {image_id!r}; fix: use the feature file of the image set this id "
            "belongs to (docs/data.md) or re-extract it"
        )

    def close(self) -> None:
        """Close this process's handle (it re-opens on the next ``get``)."""
        self._h5.close()


class BUTDStore(_H5Store):
    """The original BUTD region features: one h5 per image set, one group per image id (spec §2.1).

    Boxes are stored in pixels; ``get`` divides x by ``img_w`` and y by ``img_h``, checks the result
    lies within [-1e-5, 1 + 1e-5] and clamps it to [0, 1] (spec §2.4). With ``n_boxes`` only the
    first ``n_boxes`` regions are returned; asking for more than are stored is an error.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_boxes: int | None = None,
        feat_dim: int | None = None,
        hint: str | None = None,
    ):
        super().__init__(path, feat_dim, hint)
        if n_boxes is not None and n_boxes < 1:
            raise FeatureError(f"n_boxes must be >= 1 to read {self.path}; got {n_boxes}")
        self.n_boxes = n_boxes
        self._learnt: dict[str, tuple[_Layout, _Layout, float, float]] = {}  # features, pixel boxes, width, height

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n_boxes`` regions' features (float32) and normalised boxes; after an image's checked first
        read, two plain reads at the learnt offsets (features and pixel boxes) and the same normalisation."""
        learnt = self._learnt.get(image_id)
        if learnt is None:
            return self._checked_get(image_id)
        lay, box, img_w, img_h = learnt
        n = self._rows(lay)
        return _as_float32(_read_array(self._fd(), lay, n)), self._read_boxes(box, n, img_w, img_h)

    def _rows(self, lay: _Layout) -> int:
        return lay.shape[0] if self.n_boxes is None else self.n_boxes

    def _read_boxes(self, box: _Layout, n: int, img_w: float, img_h: float) -> np.ndarray:
        raw = _read_array(self._fd(), box, n)
        return np.clip(_scaled(raw, img_w, img_h), 0.0, 1.0).astype(np.float32)

    def _checked_get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        f = self._h5.file()
        try:
            group = f[image_id]
        except KeyError:
            raise self._no_image(image_id) from None
        try:
            feats_ds, boxes_ds = group["features"], group["boxes"]
            img_h, img_w = float(group["img_h"][()]), float(group["img_w"][()])
        except KeyError as exc:
            raise FeatureError(
                f"{self.path}: image {image_id!r} lacks {exc.args[0] if exc.args else 'a dataset'} "
                "(a BUTD group needs features, boxes, img_h, img_w); fix: re-convert the file"
            ) from None
        stored = feats_ds.shape[0]
        n = stored if self.n_boxes is None else self.n_boxes
        if n > stored:
            raise FeatureError(
                f"{self.path}: image {image_id!r} has {stored} boxes but n_boxes is {n}; fix: set n_boxes <= {stored}"
            )
        feats = _as_float32(feats_ds[:n])
        self._check_features(image_id, feats)
        raw = np.asarray(boxes_ds[:n])
        if raw.shape != (n, 4):
            raise FeatureError(f"{self.path}: boxes of image {image_id!r} must be ({n}, 4); got {raw.shape}")
        if not (img_w > 0 and img_h > 0):
            raise FeatureError(f"{self.path}: image {image_id!r} has size {img_w}x{img_h}; fix: re-convert the file")
        boxes = _scaled(raw, img_w, img_h)
        inside = (boxes >= -BOX_TOLERANCE) & (boxes <= 1 + BOX_TOLERANCE)
        if not inside.all():
            row, col = np.argwhere(~inside)[0]
            raise FeatureError(
                f"{self.path}: box {row} of image {image_id!r} lies outside the {img_w:g}x{img_h:g} image "
                f"(normalised coordinate {col} = {boxes[row, col]:.6g}); fix: re-convert the file with the right img_w/img_h"
            )
        lay, box = _Layout(feats_ds), _Layout(boxes_ds)
        if lay.offset is not None and box.offset is not None and feats_ds.ndim == 2 and boxes_ds.ndim == 2 \
                and boxes_ds.shape[1] == 4 and box.dtype.kind == "f":
            self._learnt[image_id] = (lay, box, img_w, img_h)  # checked: later reads go straight to the bytes
        return feats, np.clip(boxes, 0.0, 1.0).astype(np.float32)

    def read_batch(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Features (B, n, F) in their stored dtype and normalised boxes (B, n, 4) of ``ids`` by plain reads at
        the learnt offsets; None (the per-item path) when the images hold different numbers of regions (no
        ``n_boxes``), differ in dtype, or an array is chunked or compressed."""
        for image_id in dict.fromkeys(ids):
            if image_id not in self._learnt:
                self._checked_get(image_id)
        learnt = [self._learnt.get(i) for i in ids]
        if any(entry is None for entry in learnt):
            return None
        shapes = {(self._rows(lay), lay.shape[1], lay.dtype) for lay, *_ in learnt}  # type: ignore[misc]
        if len(shapes) != 1:
            return None
        ((n, width, dtype),) = shapes
        if dtype not in (np.float16, np.float32):
            return None
        out = self._buffers.take((len(ids), n, width), dtype)
        boxes = np.empty((len(ids), n, 4), np.float32)
        fd = self._fd()
        for k, (lay, box, img_w, img_h) in enumerate(learnt):  # type: ignore[misc]
            _pread_into(fd, lay.offset, out[k])
            boxes[k] = self._read_boxes(box, n, img_w, img_h)
        return out, boxes

    def extras(self, image_id: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Other datasets of an image's group, unprocessed (e.g. pixel ``boxes``, ``obj_id``, ``attr_id``,
        ``img_h``); byte strings (``captions``) are decoded as UTF-8 into a ``str`` array. Only the first
        ``n_boxes`` rows of per-box arrays are returned when ``n_boxes`` is set."""
        f = self._h5.file()
        try:
            group = f[image_id]
        except KeyError:
            raise self._no_image(image_id) from None
        out: dict[str, np.ndarray] = {}
        for key in keys:
            if key not in group:
                raise FeatureError(
                    f"{self.path}: image {image_id!r} has no dataset {key!r}; fix: use a file with {key} "
                    "(the original's given-box extraction)"
                )
            value = np.asarray(group[key][()])
            if value.ndim >= 1 and self.n_boxes is not None:
                value = value[: self.n_boxes]
            if value.dtype.kind in ("S", "O"):
                value = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)])
            out[key] = value
        return out

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and image_id in self._h5.file()

    def ids(self) -> Iterable[str]:
        return list(self._h5.file().keys())


class CLIPStore(FeatureStore):
    """The original CLIP grid features: one h5 per image, ``{directory}/{image_id}.h5`` (spec §2.2).

    Inside, group ``{image_id}`` holds dataset ``features`` (H*W, C) (a top-level ``features``
    dataset is read too). Boxes are all zeros. Each ``get`` opens and closes its own small file, so
    there is no handle to share across processes.
    """

    def __init__(self, directory: str | os.PathLike[str], feat_dim: int | None = None, hint: str | None = None):
        self.directory = Path(directory)
        self.hint = hint
        self._expected_dim = feat_dim
        self._layouts: dict[str, _Layout] = {}
        self._folder = str(self.directory)
        self._buffers = _BatchBuffers()

    @property
    def feat_dim(self) -> int:  # type: ignore[override]
        if self._expected_dim is not None:
            return self._expected_dim
        first = next(iter(self.ids()), None)
        if first is None:
            raise FeatureError(f"{self.directory}: no CLIP feature files (*.h5); fix: {self.hint or 'run vlcli extract-features'}")
        self._expected_dim = int(self.get(first)[0].shape[1])
        return self._expected_dim

    def _file_of(self, image_id: str) -> Path:
        return self.directory / f"{image_id}.h5"

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, F) as float32 and zero boxes. The first read goes through h5py and every check and
        learns where the array lies; later reads are one plain file read at that offset."""
        lay = self._layouts.get(image_id)
        if lay is not None and lay.offset is not None:
            out = np.empty(lay.shape, lay.dtype)
            try:
                self._read_into(image_id, lay, out)
                return _as_float32(out), np.zeros((lay.shape[0], 4), np.float32)
            except OSError:
                del self._layouts[image_id]  # the file changed or went away: the checked read below names it
        return self._checked_get(image_id)

    def _checked_get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        path = self._file_of(image_id)
        if not path.is_file():
            if not self.directory.is_dir():
                raise FeatureError(
                    f"{self.directory}: CLIP feature folder not found; fix: {self.hint or 'run vlcli extract-features'}"
                )
            raise FeatureError(
                f"{path}: no CLIP features for image {image_id!r}; fix: extract features for this image "
                f"({self.hint or 'vlcli extract-features'})"
            )
        try:
            with h5py.File(path, "r") as f:
                node = f[image_id]["features"] if image_id in f else f["features"]
                feats = _as_float32(node[()])
                layout = _Layout(node)
        except KeyError:
            raise FeatureError(f"{path}: no dataset {image_id}/features; fix: re-extract this image") from None
        except OSError as exc:
            raise FeatureError(f"{path}: not a readable HDF5 file ({exc}); fix: re-extract this image") from None
        if feats.ndim != 2:
            raise FeatureError(f"{path}: features must be (H*W, C); got shape {feats.shape}")
        if self._expected_dim is not None and feats.shape[1] != self._expected_dim:
            raise FeatureError(
                f"{path}: features are {feats.shape[1]} wide, expected {self._expected_dim}; "
                "fix: set feature_type to the backbone the features were extracted with"
            )
        self._layouts[image_id] = layout  # checked: later reads go straight to the bytes
        return feats, np.zeros((feats.shape[0], 4), np.float32)

    def read_batch(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Features (B, N, F) in their stored dtype (float16 stays float16) and boxes of ``ids``, in one pass of
        plain file reads at the arrays' offsets (learnt on each image's first read, which goes through
        :meth:`get` and its checks); None when the arrays differ in shape or dtype (the per-item path)."""
        fresh = {i: self.get(i)[0] for i in dict.fromkeys(ids) if i not in self._layouts}
        layouts = [self._layouts[i] for i in ids]
        dtype = _stack_dtype(layouts)
        if dtype is None:
            return None
        out = self._buffers.take((len(ids), *layouts[0].shape), dtype)
        for k, (image_id, lay) in enumerate(zip(ids, layouts, strict=True)):
            if image_id in fresh:
                out[k] = fresh[image_id]  # exact: the stored values, read once already
                continue
            try:
                self._read_into(image_id, lay, out[k])
            except OSError:
                self._layouts.pop(image_id, None)
                self._checked_get(image_id)  # the file changed or went away: the checked read names it
                raise
        return out, np.zeros((len(ids), layouts[0].shape[0], 4), np.float32)

    def _read_into(self, image_id: str, lay: _Layout, out: np.ndarray) -> None:
        if lay.offset is None:
            with h5py.File(self._file_of(image_id), "r") as f:
                (f[image_id]["features"] if image_id in f else f["features"]).read_direct(out)
            return
        fd = os.open(os.path.join(self._folder, image_id + ".h5"), os.O_RDONLY)
        try:
            _pread_into(fd, lay.offset, out)
        finally:
            os.close(fd)

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self._file_of(image_id).is_file()

    def ids(self) -> Iterable[str]:
        if not self.directory.is_dir():
            raise FeatureError(f"{self.directory}: CLIP feature folder not found; fix: {self.hint or 'run vlcli extract-features'}")
        return sorted(p.stem for p in self.directory.glob("*.h5"))


class ConsolidatedStore(_H5Store):
    """vlcli's single-file format: group ``features`` with one dataset per image id, optional group
    ``boxes`` with normalised (N, 4) boxes per image id (zeros where absent).

    One open file instead of one per image: much faster for CLIP grids. Written by
    :func:`write_consolidated`; features keep their stored dtype and are returned as float32.
    """

    def __init__(self, path: str | os.PathLike[str], feat_dim: int | None = None, hint: str | None = None):
        super().__init__(path, feat_dim, hint)
        self._layouts: dict[str, _Layout] = {}
        self._box_layouts: dict[str, _Layout | None] = {}

    def _groups(self) -> tuple[Any, Any]:
        f = self._h5.file()
        if f.attrs.get("format") != CONSOLIDATED_FORMAT or "features" not in f:
            raise FeatureError(
                f"{self.path}: not a vlcli consolidated feature file; fix: write it with write_consolidated "
                "(original BUTD files are read by BUTDStore)"
            )
        return f["features"], f.get("boxes")

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, F) as float32 and boxes (N, 4); after an image's first (checked) read, plain reads at
        the offsets of its arrays in the file."""
        lay, box = self._layouts.get(image_id), self._box_layouts.get(image_id)
        if lay is not None and lay.offset is not None and (box is None or box.offset is not None):
            fd = self._fd()
            boxes = np.zeros((lay.shape[0], 4), np.float32) if box is None else _as_float32(_read_array(fd, box))
            return _as_float32(_read_array(fd, lay)), boxes
        return self._checked_get(image_id)

    def _checked_get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        feats_group, boxes_group = self._groups()
        try:
            node = feats_group[image_id]
        except KeyError:
            raise self._no_image(image_id) from None
        feats = _as_float32(node[()])
        self._check_features(image_id, feats)
        box = None
        if boxes_group is not None and image_id in boxes_group:
            box_node = boxes_group[image_id]
            boxes = _as_float32(box_node[()])
            if boxes.shape != (feats.shape[0], 4):
                raise FeatureError(f"{self.path}: boxes of image {image_id!r} must be ({feats.shape[0]}, 4); got {boxes.shape}")
            box = _Layout(box_node)
        else:
            boxes = np.zeros((feats.shape[0], 4), np.float32)
        self._layouts[image_id], self._box_layouts[image_id] = _Layout(node), box  # checked
        return feats, boxes

    def read_batch(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Features (B, N, F) in their stored dtype and boxes of ``ids``: plain reads at each array's offset in
        the one file (a descriptor per process); None when shapes or dtypes differ."""
        feats_group, boxes_group = self._groups()
        fresh = {i: self.get(i)[0] for i in dict.fromkeys(ids) if i not in self._layouts}  # validated, learnt
        layouts = [self._layouts[i] for i in ids]
        dtype = _stack_dtype(layouts)
        if dtype is None:
            return None
        out = self._buffers.take((len(ids), *layouts[0].shape), dtype)
        fd = self._fd()
        for k, (image_id, lay) in enumerate(zip(ids, layouts, strict=True)):
            if image_id in fresh:
                out[k] = fresh[image_id]
            elif lay.offset is None:
                feats_group[image_id].read_direct(out[k])
            else:
                _pread_into(fd, lay.offset, out[k])
        boxes = np.zeros((len(ids), layouts[0].shape[0], 4), np.float32)
        for k, image_id in enumerate(ids):
            box = self._box_layouts.get(image_id)
            if box is None:
                continue
            boxes[k] = boxes_group[image_id][()] if box.offset is None else _read_array(fd, box)
        return out, boxes

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and image_id in self._groups()[0]

    def ids(self) -> Iterable[str]:
        return list(self._groups()[0].keys())


FeatureItem = np.ndarray | tuple[np.ndarray, np.ndarray | None]


def write_consolidated(
    path: str | os.PathLike[str],
    items: Mapping[str, FeatureItem] | Iterable[tuple[str, FeatureItem]],
    dtype: np.dtype | type | str | None = None,
) -> int:
    """Write ``{image_id: features or (features, boxes)}`` to one consolidated h5; returns the count.

    The file is written to a temporary name beside ``path`` and moved into place with
    :func:`os.replace`, so readers never see a half-written file. ``dtype`` (e.g. ``float16``)
    converts the features; by default they keep their own dtype. Boxes are stored as float32 and
    must already be normalised to [0, 1].
    """
    target = Path(path)
    pairs = items.items() if isinstance(items, Mapping) else items
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:  # OS errors: one WriteError naming target
        return _write_items(f, pairs, dtype, target)


def _write_items(f: h5py.File, pairs: Iterable[tuple[str, FeatureItem]], dtype: Any, target: Path) -> int:
    """The consolidated layout into the open file ``f``: ``features/{id}``, optional ``boxes/{id}``, attrs."""
    f.attrs["format"] = CONSOLIDATED_FORMAT
    feats_group = f.create_group("features")
    boxes_group = None
    count = 0
    width: int | None = None
    for image_id, value in pairs:
        key = str(image_id)
        feats, boxes = value if isinstance(value, tuple) else (value, None)
        feats = np.asarray(feats) if dtype is None else np.asarray(feats).astype(dtype)
        if feats.ndim != 2:
            raise FeatureError(f"{target}: features of image {key!r} must be (N, feat_dim); got shape {feats.shape}")
        if width is not None and feats.shape[1] != width:
            raise FeatureError(f"{target}: image {key!r} has features {feats.shape[1]} wide, the others {width}")
        width = feats.shape[1]
        if "/" in key or key in feats_group:
            raise FeatureError(f"{target}: image id {key!r} is repeated or contains '/'")
        feats_group.create_dataset(key, data=feats)
        if boxes is not None:
            boxes = np.asarray(boxes, np.float32)
            if boxes.shape != (feats.shape[0], 4):
                raise FeatureError(f"{target}: boxes of image {key!r} must be ({feats.shape[0]}, 4); got {boxes.shape}")
            if boxes_group is None:
                boxes_group = f.create_group("boxes")
            boxes_group.create_dataset(key, data=boxes)
        count += 1
    if width is not None:
        f.attrs["feat_dim"] = width
    return count


class SubstringRoute:
    """Route an image id to the key of the first ``(substring, key)`` rule it contains, else ``default``.

    A plain class (not a lambda) so a routed store pickles into DataLoader workers.
    """

    def __init__(self, rules: Iterable[tuple[str, str]], default: str | None = None):
        self.rules = tuple((str(s), str(k)) for s, k in rules)
        self.default = default

    def __call__(self, image_id: str) -> str | None:
        for substring, key in self.rules:
            if substring in image_id:
                return key
        return self.default

    def __repr__(self) -> str:
        return f"SubstringRoute({list(self.rules)!r}, default={self.default!r})"


class RoutedStore(FeatureStore):
    """Several stores behind one: ``route(image_id)`` names the store to read.

    E.g. VQA's COCO ids go to ``train2014`` / ``val2014`` / ``test2015`` files by substring. With
    ``route=None`` the first store (in the given order) that holds the id is used — for splits whose
    files are chosen by split rather than by id (GQA ``train,valid`` + ``testdev``, NLVR2).
    """

    def __init__(self, stores: Mapping[str, FeatureStore], route: Callable[[str], str | None] | None = None):
        if not stores:
            raise FeatureError("a routed feature store needs at least one store")
        self.stores = dict(stores)
        self.route = route

    @property
    def feat_dim(self) -> int:  # type: ignore[override]
        return next(iter(self.stores.values())).feat_dim

    def store_for(self, image_id: str) -> FeatureStore:
        """The store that serves ``image_id``; FeatureError if no rule or store matches."""
        if self.route is None:
            for store in self.stores.values():
                if image_id in store:
                    return store
            raise FeatureError(
                f"no features for image {image_id!r} in any of {', '.join(_describe(s) for s in self.stores.values())}; "
                "fix: check the split's feature files (docs/data.md)"
            )
        key = self.route(image_id)
        if key is None or key not in self.stores:
            raise FeatureError(
                f"image id {image_id!r} matches no feature source (known: {', '.join(self.stores)}); "
                "fix: check the image ids of the annotation file or the path overrides"
            )
        return self.stores[key]

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self.store_for(image_id).get(image_id)

    def __contains__(self, image_id: object) -> bool:
        if not isinstance(image_id, str):
            return False
        if self.route is None:
            return any(image_id in s for s in self.stores.values())
        key = self.route(image_id)
        return key in self.stores and image_id in self.stores[key]

    def ids(self) -> Iterable[str]:
        seen: set[str] = set()
        for store in self.stores.values():
            for image_id in store.ids():
                if image_id not in seen:
                    seen.add(image_id)
                    yield image_id

    def close(self) -> None:
        for store in self.stores.values():
            close = getattr(store, "close", None)
            if close is not None:
                close()


def _describe(store: FeatureStore) -> str:
    return str(getattr(store, "path", None) or getattr(store, "directory", None) or type(store).__name__)


def combine_stores(
    stores: Mapping[str, FeatureStore], route: Callable[[str], str | None] | None = None
) -> FeatureStore:
    """The only store of ``stores``, or a :class:`RoutedStore` over all of them."""
    return next(iter(stores.values())) if len(stores) == 1 else RoutedStore(stores, route)
