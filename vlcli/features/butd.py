"""Bottom-up-attention TSV -> the original per-split BUTD h5 (spec data-and-eval §2.1, §3.3).

The TSV (LXMERT's ``*_obj36.tsv``, py-bottom-up-attention's output) has one image per line and ten
tab-separated columns ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf,
num_boxes, boxes, features``; the array columns hold base64 of the raw bytes: int64 ids, float32
confidences, float32 boxes (num_boxes, 4) in pixels, float32 features (num_boxes, D). The h5 gets one
group per image id with ``obj_id, obj_conf, attr_id, attr_conf, boxes, features, img_h, img_w`` (the
original ``tsv_to_h5.py``), which :class:`vlcli.data.features.BUTDStore` reads.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from vlcli.features.common import ExtractionError, Progress, SilentProgress, atomic_path

FIELDNAMES: tuple[str, ...] = (
    "img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes", "boxes", "features",
)
# column -> (h5 dataset, dtype, per-box width or None for (N,), -1 = inferred)
ARRAYS: dict[str, tuple[str, np.dtype, int | None]] = {
    "objects_id": ("obj_id", np.dtype(np.int64), None),
    "objects_conf": ("obj_conf", np.dtype(np.float32), None),
    "attrs_id": ("attr_id", np.dtype(np.int64), None),
    "attrs_conf": ("attr_conf", np.dtype(np.float32), None),
    "boxes": ("boxes", np.dtype(np.float32), 4),
    "features": ("features", np.dtype(np.float32), -1),
}


@dataclass(frozen=True)
class ButdImage:
    """One decoded TSV row."""

    img_id: str
    img_h: int
    img_w: int
    arrays: dict[str, np.ndarray]  # h5 dataset name -> array


@dataclass
class ButdResult:
    """What a conversion did."""

    images: int
    target: Path
    feat_dim: int | None
    skipped_existing: bool = False


def butd_target(tsv: Path, out: Path) -> Path:
    """``--out FILE.h5`` as given; ``--out DIR`` -> ``DIR/{tsv stem}.h5`` (``train2014_obj36.tsv`` -> ``..._obj36.h5``)."""
    return out if out.suffix == ".h5" else out / f"{tsv.stem}.h5"


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", newline="") as f:
        yield from f


def read_tsv(path: Path) -> Iterator[tuple[int, ButdImage]]:
    """Decode the rows of a BUTD TSV: ``(line number, image)``; a malformed row raises ExtractionError."""
    # A features column is ~36*2048*4*4/3 bytes of base64: far over csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if line == 1 and row[0] == "img_id":
            continue  # a header row
        yield line, _decode(path, line, row)


def _decode(path: Path, line: int, row: list[str]) -> ButdImage:
    where = f"{path}:{line}"
    if len(row) != len(FIELDNAMES):
        raise ExtractionError(
            f"{where}: {len(row)} tab-separated columns, expected {len(FIELDNAMES)} ({', '.join(FIELDNAMES)}); "
            "fix: convert a bottom-up-attention TSV (e.g. LXMERT's *_obj36.tsv)"
        )
    item = dict(zip(FIELDNAMES, row, strict=True))
    try:
        img_h, img_w, n = int(item["img_h"]), int(item["img_w"]), int(item["num_boxes"])
    except ValueError:
        raise ExtractionError(f"{where}: img_h, img_w and num_boxes must be integers; fix: check the TSV") from None
    arrays: dict[str, np.ndarray] = {}
    for column, (name, dtype, width) in ARRAYS.items():
        try:
            raw = base64.b64decode(item[column], validate=True)
        except (binascii.Error, ValueError):
            raise ExtractionError(f"{where}: column {column} is not base64; fix: check the TSV") from None
        if len(raw) % dtype.itemsize:
            raise ExtractionError(f"{where}: column {column} has {len(raw)} bytes, not a whole number of {dtype} values")
        values = np.frombuffer(raw, dtype=dtype)
        shape = (n,) if width is None else (n, width)
        if width == -1:
            if n == 0 or values.size % n:
                raise ExtractionError(f"{where}: column {column} has {values.size} values for {n} boxes")
            shape = (n, values.size // n)
        if values.size != int(np.prod(shape)):
            raise ExtractionError(
                f"{where}: column {column} has {values.size} {dtype} values, expected {int(np.prod(shape))} "
                f"for num_boxes {n}; fix: check the TSV (ids are int64, the other arrays float32)"
            )
        arrays[name] = values.reshape(shape)
    return ButdImage(item["img_id"], img_h, img_w, arrays)


def convert_butd_tsv(tsv: Path, out: Path, progress: Progress | None = None) -> ButdResult:
    """Convert ``tsv`` to the per-split h5 at :func:`butd_target`; atomic (temp file, then ``os.replace``).

    An existing target is left alone (delete it to convert again); a repeated image id or a
    malformed row is an error naming the line, and no partial file is left behind.
    """
    progress = progress or SilentProgress()
    if not tsv.is_file():
        raise ExtractionError(f"--butd_tsv {tsv}: no such file")
    target = butd_target(tsv, out)
    if target.exists():
        with h5py.File(target, "r") as f:
            count = len(f.keys())
        return ButdResult(count, target, None, skipped_existing=True)
    count = 0
    feat_dim: int | None = None
    progress.start(None, f"BUTD {tsv.name}")
    try:
        with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
            for line, image in read_tsv(tsv):
                if "/" in image.img_id or not image.img_id:
                    raise ExtractionError(f"{tsv}:{line}: image id {image.img_id!r} cannot be an h5 group name")
                if image.img_id in f:
                    raise ExtractionError(f"{tsv}:{line}: image id {image.img_id!r} is repeated; fix: remove the duplicate row")
                width = image.arrays["features"].shape[1]
                if feat_dim is not None and width != feat_dim:
                    raise ExtractionError(f"{tsv}:{line}: features are {width} wide, earlier rows {feat_dim}")
                feat_dim = width
                group = f.create_group(image.img_id)
                for name, array in image.arrays.items():
                    group.create_dataset(name, data=array)
                group.create_dataset("img_h", data=image.img_h)
                group.create_dataset("img_w", data=image.img_w)
                count += 1
                progress.advance(1)
            if count == 0:
                raise ExtractionError(f"--butd_tsv {tsv}: holds no rows; fix: check the file")
    finally:
        progress.finish()
    return ButdResult(count, target, feat_dim)
