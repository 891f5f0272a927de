"""The data-root layout (spec data-and-eval §0.1, §1.1–1.4, §2.3) as data.

For a task (vqa, gqa, nlvr, caption), a split (comma-separated names allowed) and a ``feature_type``
this module says which annotation files are read and which feature files or folders serve which
image ids, all relative to ``data_root`` (default ``datasets``) so the released bundle drops in
unchanged. Every path has a *logical name* (``coco.butd.train2014``, ``vqa.questions``, ...) that a
``overrides`` mapping can point elsewhere; docs/data.md lists them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlcli.config.derive import FEATURE_TYPES, GRID_FEAT_DIM, RAW_TYPES
from vlcli.data.features import (
    BUTDStore,
    CLIPStore,
    ConsolidatedStore,
    FeatureError,
    FeatureStore,
    SubstringRoute,
    combine_stores,
)

TASKS: tuple[str, ...] = ("vqa", "gqa", "nlvr", "caption")

# Precomputed CLIP grid features: ``feature_type`` -> channel width (spec §2.3); one table for the project.
CLIP_FEAT_DIM: dict[str, int] = GRID_FEAT_DIM
RAW_FEATURE_TYPES: tuple[str, ...] = RAW_TYPES

DEFAULT_PATHS: dict[str, str] = {
    # annotations
    "vqa.questions": "vqa/{split}.json",
    "vqa.answers.train2014": "vqa/v2_mscoco_train2014_annotations.json",
    "vqa.answers.val2014": "vqa/v2_mscoco_val2014_annotations.json",
    "gqa.questions": "GQA/{split}.json",
    "nlvr.annotations": "nlvr/{split}.json",
    "caption.annotations": "COCO/dataset_coco.json",
    # BUTD region features: one h5 per image set
    "coco.butd.train2014": "COCO/features/train2014_obj36.h5",
    "coco.butd.val2014": "COCO/features/val2014_obj36.h5",
    "coco.butd.test2015": "COCO/features/test2015_obj36.h5",
    "vg.butd": "VG/features/vg_gqa_obj36.h5",
    "gqa.butd.testdev": "GQA/features/gqa_testdev_obj36.h5",
    "nlvr.butd": "nlvr/features/{split}_obj36.h5",
    # CLIP grid features: one folder of per-image h5 files (or a consolidated .h5 file)
    "coco.clip": "COCO/clip_features/data_clip_{type}_att",
    "vg.clip": "VG/clip_features/data_clip_{type}_att",
    "gqa.clip": "GQA/clip_features/data_clip_{type}_att",
    "nlvr.clip": "nlvr/clip_features/data_clip_{type}_att",
    # raw images (raw_* feature types; also the input of `vlcli extract-features`)
    "coco.images.train2014": "COCO/images/train2014",
    "coco.images.val2014": "COCO/images/val2014",
    "coco.images.test2015": "COCO/images/test2015",
    "vg.images": "VG/VG_100K",
    "gqa.images": "GQA/images",
    "nlvr.images": "nlvr/images",
    # RefCOCOg (spec §1.5): REFER annotations and candidate boxes (GT instances / MAttNet detections)
    "refcoco.refs": "RefCOCO/refcocog/refs(umd).p",
    "refcoco.instances": "RefCOCO/refcocog/instances.json",
    "refcoco.boxes.gt": "RefCOCO/refcocog/features/{split}_boxes_GT.h5",
    "refcoco.boxes.detected": "RefCOCO/refcocog/features/{split}_boxes_mattnet.h5",
    # VCR (spec §1.6)
    "vcr.annotations": "VCR/{split}.jsonl",
    "vcr.boxes.gt": "VCR/features/{split}_boxes_GT.h5",
    "vcr.boxes.detected": "VCR/features/{split}_boxes36.h5",
    "vcr.images": "VCR/vcr1images",
    # image classification (spec §1.7): TinyImageNet
    "cls.words": "tiny-imagenet-200/words.txt",
    "cls.clip": "tiny-imagenet-200/clip_features/{split}/data_clip_{type}_att",
    "cls.images": "tiny-imagenet-200/{split}",
    "cls.val_annotations": "tiny-imagenet-200/{split}/val_annotations.txt",
    # pretraining (spec §1.8): LXMERT files, VG vocabularies, the compact validation features
    "pretrain.annotations": "lxmert/{split}.json",
    "pretrain.answers": "lxmert/all_ans.json",
    "vg.objects_vocab": "VG/objects_vocab.txt",
    "vg.attributes_vocab": "VG/attributes_vocab.txt",
    "coco.butd.resplit_val": "COCO/features/resplit_val_obj36.h5",
}
"""Logical name -> path template relative to ``data_root``. ``{split}`` is one split name and
``{type}`` the CLIP ``feature_type``; an override may use the same placeholders or an absolute path."""

BUNDLE_HINT = "download the released VL-Adapter data bundle and unpack it under data_root"

Kind = Literal["annotation", "butd", "clip", "images"]


@dataclass(frozen=True)
class DataPath:
    """One file or folder a run reads: its logical name, resolved path, kind and the steps that create it."""

    name: str
    path: Path
    kind: Kind
    steps: tuple[str, ...]

    @property
    def creates(self) -> str:
        """The steps as one line: ``vlcli`` commands joined with ``&&``, then any other step."""
        commands = [s for s in self.steps if s.startswith("vlcli ")]
        notes = [s for s in self.steps if not s.startswith("vlcli ")]
        return "; then ".join(x for x in (" && ".join(commands), *notes) if x)

    def merged(self, other: DataPath) -> DataPath:
        """This path with ``other``'s steps added (the same CLIP folder needed by several splits)."""
        steps = self.steps + tuple(s for s in other.steps if s not in self.steps)
        return DataPath(self.name, self.path, self.kind, steps)


@dataclass(frozen=True)
class TaskLayout:
    """What one task + split + feature_type reads.

    ``features`` maps a source key (``train2014``, ``vg``, ``testdev``, ...) to its file or folder;
    ``route`` picks the key from an image id (None: the first source holding the id).
    """

    task: str
    split: str
    feature_type: str
    annotations: tuple[DataPath, ...]
    features: dict[str, DataPath] = field(default_factory=dict)
    route: SubstringRoute | None = None
    feat_dim: int | None = None

    def paths(self) -> list[DataPath]:
        """Every file or folder of this layout, annotations first, without repeats."""
        return merge_paths((*self.annotations, *self.features.values()))


def merge_paths(items: Iterable[DataPath]) -> list[DataPath]:
    """``items`` in order without repeated paths; a repeated path keeps the union of the steps."""
    out: dict[Path, DataPath] = {}
    for item in items:
        out[item.path] = out[item.path].merged(item) if item.path in out else item
    return list(out.values())


def _setting(settings: Any, name: str, default: Any) -> Any:
    """``settings.get(name)`` for the pydantic Settings (or a plain dict), ``default`` when unset."""
    try:
        value = settings.get(name)
    except (KeyError, AttributeError):
        return default
    return default if value is None else value


def _splits(split: str) -> list[str]:
    names = [s.strip() for s in str(split).split(",") if s.strip()]
    if not names:
        raise FeatureError(f"empty split name {split!r}; fix: name a split such as train, valid or test")
    return names


class _Resolver:
    """Turns logical names into paths under ``data_root`` with the overrides applied."""

    def __init__(self, data_root: str | os.PathLike[str], feature_type: str, overrides: Mapping[str, str] | None):
        self.root = Path(data_root)
        self.feature_type = feature_type
        self.raw = feature_type in RAW_FEATURE_TYPES
        self.clip_grid = feature_type in CLIP_FEAT_DIM
        self.overrides = dict(overrides or {})
        unknown = sorted(set(self.overrides) - set(DEFAULT_PATHS))
        if unknown:
            raise FeatureError(
                f"unknown data path name(s) {', '.join(unknown)}; fix: use one of the logical names in docs/data.md "
                f"({', '.join(sorted(DEFAULT_PATHS))})"
            )

    def path(self, name: str, split: str = "") -> Path:
        template = str(self.overrides.get(name, DEFAULT_PATHS[name]))
        try:
            text = template.format(split=split, type=self.feature_type)
        except (KeyError, IndexError, ValueError):
            raise FeatureError(
                f"data path {name} = {template!r}: only the placeholders {{split}} and {{type}} are allowed"
            ) from None
        p = Path(text).expanduser()
        return p if p.is_absolute() else self.root / p

    def annotation(self, name: str, split: str = "") -> DataPath:
        dataset = name.split(".", 1)[0]  # vqa / gqa / nlvr / caption: `vlcli convert` makes them
        convert = f"or run `vlcli convert {dataset} --data <official download folder>`"
        return DataPath(name, self.path(name, split), "annotation", (f"{BUNDLE_HINT} {convert}",))

    def butd(self, name: str, split: str = "") -> DataPath:
        return DataPath(name, self.path(name, split), "butd", ("download the released feature bundle (BUTD *_obj36.h5) into data_root",))

    def clip(self, name: str, image_names: tuple[str, ...]) -> DataPath:
        out = self.path(name)
        # `vlcli extract-features --out DIR` writes DIR/data_clip_{type}_att/{image}.h5 (spec §3.4).
        out_dir = out.parent
        steps = tuple(
            f"vlcli extract-features --feature_type {self.feature_type} --images {self.path(img)} --out {out_dir}"
            for img in image_names
        )
        if out.name != f"data_clip_{self.feature_type}_att":
            steps += (f"point {name} at {out_dir / f'data_clip_{self.feature_type}_att'}, the folder the command writes",)
        return DataPath(name, out, "clip", steps)

    def images(self, name: str) -> DataPath:
        return DataPath(name, self.path(name), "images", (f"download the raw images of {name} and unpack them there",))


# COCO image sets a VQA split reads (by id substring); unknown splits are assumed to mix train/val.
_VQA_SETS: dict[str, tuple[str, ...]] = {
    "train": ("train2014",),
    "karpathy_train": ("train2014", "val2014"),
    "karpathy_val": ("val2014",),
    "karpathy_test": ("val2014",),
    "minival": ("val2014",),
    "nominival": ("val2014",),
    "val": ("val2014",),
}
_COCO_ROUTE_RULES = (("train2014", "train2014"), ("val2014", "val2014"), ("test2015", "test2015"))


def _vqa_sets(split: str) -> tuple[str, ...]:
    if split == "vg_qa_full":
        return ("vg",)
    if split.startswith("test"):  # test, test-dev, test_4, ...
        return ("test2015",)
    return _VQA_SETS.get(split, ("train2014", "val2014"))


def _gqa_source(split: str, gqa_folder: bool) -> str:
    """The feature source of a GQA split; ``gqa_folder``: submit images come from GQA's own folder."""
    if split in ("train", "valid"):
        return "vg"
    if split == "testdev":
        return "testdev"
    if split.startswith("submit"):
        # The original reads GQA's submit images from the VG BUTD file but from GQA's CLIP folder (spec §1.2);
        # raw images come from GQA's own image folder (the submit images are not VG images).
        return "testdev" if gqa_folder else "vg"
    raise FeatureError(f"unknown GQA split {split!r}; fix: use train, valid, testdev or submit")


def task_layout(
    task: str,
    split: str,
    feature_type: str = "butd",
    data_root: str | os.PathLike[str] = "datasets",
    overrides: Mapping[str, str] | None = None,
    feat_dim: int | None = None,
) -> TaskLayout:
    """The annotation files and feature sources of ``task`` on ``split`` (comma-separated names allowed).

    For ``raw_*`` feature types ``features`` lists the raw image folders (kind ``images``).
    """
    if task not in TASKS:
        raise FeatureError(f"unknown task {task!r} for the data layout; fix: use one of {', '.join(TASKS)}")
    if feature_type not in FEATURE_TYPES:
        raise FeatureError(f"unknown feature_type {feature_type!r}; fix: use one of {', '.join(FEATURE_TYPES)}")
    r = _Resolver(data_root, feature_type, overrides)
    names = _splits(split)
    annotations, features, route = _LAYOUTS[task](r, names)
    dim = CLIP_FEAT_DIM[feature_type] if r.clip_grid else feat_dim
    # One annotation entry per file (caption's single Karpathy file serves every split name).
    return TaskLayout(task, ",".join(names), feature_type, tuple(merge_paths(annotations)), features, route, dim)


_Parts = tuple[list[DataPath], dict[str, DataPath], SubstringRoute | None]


def _coco_features(r: _Resolver, sets: Iterable[str]) -> dict[str, DataPath]:
    """COCO image sets (train2014, ...) as sources: one path per set, or the one CLIP folder of all of them."""
    sets = tuple(sets)
    if r.clip_grid:
        return {"coco": r.clip("coco.clip", tuple(f"coco.images.{x}" for x in sets))} if sets else {}
    if r.raw:
        return {x: r.images(f"coco.images.{x}") for x in sets}
    return {x: r.butd(f"coco.butd.{x}") for x in sets}


def _source(r: _Resolver, prefix: str, butd: str, split: str = "") -> DataPath:
    """The image folder ``{prefix}.images``, CLIP folder ``{prefix}.clip`` or BUTD file ``butd`` of one source."""
    images = f"{prefix}.images"
    if r.raw:
        return r.images(images)
    return r.clip(f"{prefix}.clip", (images,)) if r.clip_grid else r.butd(butd, split)


def _vqa_layout(r: _Resolver, names: list[str]) -> _Parts:
    annotations = [r.annotation("vqa.questions", s) for s in names]
    sets = list(dict.fromkeys(x for s in names for x in _vqa_sets(s)))
    # The official answers are the ground truth of every evaluated split (spec §1.1).
    if any(not s.startswith("test") and s != "vg_qa_full" for s in names):
        annotations += [r.annotation("vqa.answers.train2014"), r.annotation("vqa.answers.val2014")]
    features = _coco_features(r, (x for x in sets if x != "vg"))
    if "vg" in sets:
        features["vg"] = _source(r, "vg", "vg.butd")
    if r.clip_grid:
        return annotations, features, SubstringRoute([("COCO_", "coco")], default="vg")
    return annotations, features, SubstringRoute([rule for rule in _COCO_ROUTE_RULES if rule[1] in features], default="vg")


def _gqa_layout(r: _Resolver, names: list[str]) -> _Parts:
    # GQA and VG ids do not say which set they come from: the first source holding the id serves it (no route).
    features: dict[str, DataPath] = {}
    for s in names:
        source = _gqa_source(s, r.clip_grid or r.raw)  # raw: the GQA images folder holds the submit images
        if source not in features:
            features[source] = _source(r, "vg", "vg.butd") if source == "vg" else _source(r, "gqa", "gqa.butd.testdev")
    return [r.annotation("gqa.questions", s) for s in names], features, None


def _nlvr_layout(r: _Resolver, names: list[str]) -> _Parts:
    # One image folder / CLIP folder serves every split; BUTD has a file per split.
    features: dict[str, DataPath] = {}
    for s in names:
        features.setdefault("images" if r.raw else "clip" if r.clip_grid else s, _source(r, "nlvr", "nlvr.butd", s))
    return [r.annotation("nlvr.annotations", s) for s in names], features, None


def _caption_layout(r: _Resolver, names: list[str]) -> _Parts:
    # Karpathy splits of COCO train2014 + val2014 images in one file, routed by id substring.
    for s in names:
        if s.rsplit("_", 1)[-1] not in ("train", "val", "test", "restval"):
            raise FeatureError(f"unknown caption split {s!r}; fix: use karpathy_train, karpathy_val or karpathy_test")
    features = _coco_features(r, ("train2014", "val2014"))
    return [r.annotation("caption.annotations")], features, SubstringRoute(_COCO_ROUTE_RULES[:2])


_LAYOUTS = {"vqa": _vqa_layout, "gqa": _gqa_layout, "nlvr": _nlvr_layout, "caption": _caption_layout}


def layout_for(settings: Any, task: str, split: str, overrides: Mapping[str, str] | None = None) -> TaskLayout:
    """:func:`task_layout` with ``data_root``, ``feature_type`` and ``feat_dim`` taken from the settings."""
    feature_type = str(_setting(settings, "feature_type", "butd"))
    if overrides is None:
        overrides = _setting(settings, "data_paths", None)
    return task_layout(
        task,
        split,
        feature_type,
        _setting(settings, "data_root", "datasets"),
        overrides,
        feat_dim=int(_setting(settings, "feat_dim", 2048)) if feature_type == "butd" else None,
    )


def layout_resolver(settings: Any) -> _Resolver:
    """The resolver of logical data paths for ``settings`` (data_root, feature_type, data_paths overrides)."""
    return _Resolver(_setting(settings, "data_root", "datasets"), str(_setting(settings, "feature_type", "butd")),
                     _setting(settings, "data_paths", None))


def data_path(settings: Any, name: str, split: str = "") -> Path:
    """The file or folder of logical ``name`` (see DEFAULT_PATHS) under the settings' ``data_root``, with
    ``data_paths`` overrides applied; ``{split}`` and ``{type}`` (feature_type) filled in."""
    r = layout_resolver(settings)
    if name not in DEFAULT_PATHS:
        raise FeatureError(f"unknown data path name {name!r}; fix: use one of {', '.join(sorted(DEFAULT_PATHS))}")
    return r.path(name, split)


def _open(item: DataPath, n_boxes: int | None, feat_dim: int | None) -> FeatureStore:
    if item.kind == "butd":
        return BUTDStore(item.path, n_boxes=n_boxes, feat_dim=feat_dim, hint=item.creates)
    if item.kind == "clip":
        # A CLIP path that names an .h5 file is a consolidated store (vlcli's single-file format).
        if item.path.suffix == ".h5":
            return ConsolidatedStore(item.path, feat_dim=feat_dim, hint=item.creates)
        return CLIPStore(item.path, feat_dim=feat_dim, hint=item.creates)
    raise FeatureError(f"{item.path}: {item.name} is not a feature store")  # pragma: no cover - guarded by callers


def open_features(
    settings: Any, task: str, split: str, overrides: Mapping[str, str] | None = None, *, train: bool = False
) -> FeatureStore:
    """The feature store of ``task`` on ``split`` for the settings' ``feature_type`` (files open lazily).

    BUTD files keep the first ``n_boxes`` regions (``max_n_boxes`` for captioning); CLIP grids are
    returned whole (token reduction happens in the model). ``raw_*`` types give an
    :class:`~vlcli.data.images.ImageStore` of the image folders, with the training transform when ``train``.
    """
    layout = layout_for(settings, task, split, overrides)
    if layout.feature_type in RAW_FEATURE_TYPES:
        from vlcli.data.images import image_stores

        return combine_stores(image_stores(settings, task, layout.features, train), layout.route)
    n_boxes = None
    if layout.feature_type == "butd":
        n_boxes = int(_setting(settings, "max_n_boxes" if task == "caption" else "n_boxes", 36))
    return combine_stores({key: _open(item, n_boxes, layout.feat_dim) for key, item in layout.features.items()},
                          layout.route)
