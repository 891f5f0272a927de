"""Image classification on TinyImageNet (spec data-and-eval §1.7; features §2.2–2.3; metric §4.8).

The examples of a split are its images, one per feature file of ``cls.clip``
(``tiny-imagenet-200/clip_features/{split}/data_clip_{type}_att/{image}.h5``, or a consolidated ``.h5``
when the logical name points at one), image id = file stem, in sorted order. Any precomputed
``feature_type`` works: the original hard-coded RN101 whatever ``--feature_type`` said (spec §9).

The class of an image is its WordNet id: the part of the id before the first ``_`` (training images
``n01443537_0``). TinyImageNet's validation images are named ``val_N``; their WordNet ids come from
the official ``val_annotations.txt`` (logical name ``cls.val_annotations``); the original assumed
renamed files (spec §1.7 [?]). The class name is the first comma-separated synonym of the id's
``words.txt`` line (``cls.words``). Splits whose name starts with ``test`` (TinyImageNet's unlabelled
test images) may have no labels; any other image without a class is an error.

Input: the task prompt alone (``settings.derived.per_task["cls"].prompt``), target: the class name
(at most 20 tokens), prediction: free generation, metric: top-1 exact match
(:mod:`vlcli.metrics.cls`). The submission file the original could not write (``--submit`` crashed,
spec §9.13) is ``[{"image_id", "prediction"}]``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcli.data import layout
from vlcli.data.features import CLIPStore, ConsolidatedStore, FeatureError
from vlcli.tasks.base import Example, Task, TaskDataError, write_json_rows

if TYPE_CHECKING:
    from vlcli.config.settings import Settings
    from vlcli.data.features import FeatureStore
    from vlcli.data.layout import DataPath

TARGET_MAX_LENGTH = 20  # the original's hard-coded target length
WNID = re.compile(r"n\d{8}")  # the form of a WordNet noun id, e.g. n01443537
UNLABELLED_SPLIT_PREFIX = "test"  # TinyImageNet's test images come without labels
UNPACK_HINT = "unpack the official tiny-imagenet-200.zip under data_root (it holds words.txt and the images)"


# ------------------------------------------------------------------------------- file readers


def _lines(path: Path, what: str, fix: str) -> list[str]:
    """The lines of the text file ``path``; TaskDataError naming the file and ``fix`` otherwise."""
    if not path.is_file():
        raise TaskDataError(f"{path}: {what} not found; {fix}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskDataError(f"{path}: cannot read {what} ({exc}); {fix}") from exc


def read_words(path: Path) -> dict[str, str]:
    """``words.txt`` (``wnid<TAB>name1, name2, ...``) as ``{wnid: name1}``.

    A space instead of the tab is accepted (WordNet ids contain none). Blank lines are skipped; a
    line without a name, or a WordNet id listed twice with different names, is an error.
    """
    fix = "use the official tiny-imagenet-200/words.txt (or point --data_paths cls.words at it)"
    names: dict[str, str] = {}
    for number, line in enumerate(_lines(path, "TinyImageNet words.txt", fix), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 1) if "\t" in line else line.strip().split(None, 1)
        wnid = parts[0].strip()
        name = parts[1].split(",", 1)[0].strip() if len(parts) == 2 else ""
        if not wnid or not name:
            raise TaskDataError(f"{path}: line {number} is not 'WNID<TAB>name, synonym, ...'; {fix}")
        if names.get(wnid, name) != name:
            raise TaskDataError(f"{path}: line {number} names WordNet id {wnid} again ({names[wnid]!r}, {name!r}); {fix}")
        names[wnid] = name
    return names


def read_annotations(path: Path) -> dict[str, str]:
    """``val_annotations.txt`` (``val_N.JPEG<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1``) as ``{val_N: wnid}``."""
    fix = "use the official val_annotations.txt (or point --data_paths cls.val_annotations at it)"
    wnids: dict[str, str] = {}
    for number, line in enumerate(_lines(path, "TinyImageNet val_annotations.txt", fix), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise TaskDataError(f"{path}: line {number} is not 'IMAGE<TAB>WNID<TAB>...'; {fix}")
        wnids[Path(parts[0]).stem] = parts[1]
    return wnids


# ---------------------------------------------------------------------------------------- task


class ClassificationTask(Task):
    """TinyImageNet classification by generating the class name."""

    name = "cls"
    # TinyImageNet has no labelled test split: the labelled val split serves validation and test; the
    # submission covers the (unlabelled) test images, whose features must be extracted like the others.
    splits = {"train": "train", "valid": "val", "test": "val", "submit": "test"}
    submission_file = "predictions.json"
    primary_metric = "accuracy"

    def target_length(self, settings: Settings) -> int | None:
        return TARGET_MAX_LENGTH

    # ------------------------------------------------------------------------------ features

    def _feature_type(self, settings: Settings) -> str:
        return str(settings.get("feature_type"))

    def extraction_hint(self, settings: Settings, split: str, target: Path) -> str:
        """The commands that write ``target`` (the ``cls.clip`` folder or file of ``split``)."""
        feature_type = self._feature_type(settings)
        images = layout.data_path(settings, "cls.images", split)
        consolidated = target.suffix == ".h5"
        listing = f"{split}_images.txt"  # TinyImageNet keeps images in subfolders: extract from a list
        hint = (f"find {images} -name '*.JPEG' > {listing} && vlcli extract-features --feature_type {feature_type} "
                f"--images {listing} --out {target.parent}" + (" --layout consolidated" if consolidated else ""))
        written = f"data_clip_{feature_type}_att" + (".h5" if consolidated else "")
        if target.name != written:
            hint += f"; then point cls.clip at {target.parent / written}, what the command writes"
        return hint

    def open_store(self, settings: Settings, split: str, *, train: bool = False) -> FeatureStore:
        """The CLIP features of ``split`` (a folder of per-image h5 files or one consolidated .h5 file), or for
        ``raw_*`` types its images (``cls.images``, any depth), with horizontal flips when augmenting."""
        feature_type = self._feature_type(settings)
        if feature_type in layout.RAW_FEATURE_TYPES:
            from vlcli.data.images import ImageStore, image_transform

            folder = layout.data_path(settings, "cls.images", split)
            return ImageStore(folder, image_transform(settings, self.name, train), hint=UNPACK_HINT)
        if feature_type not in layout.CLIP_FEAT_DIM:
            raise FeatureError(
                f"feature_type {feature_type}: the classification task reads precomputed CLIP features only; "
                f"fix: extract them with `vlcli extract-features` and use --feature_type {'/'.join(layout.CLIP_FEAT_DIM)}"
            )
        path = layout.data_path(settings, "cls.clip", split)
        dim = layout.CLIP_FEAT_DIM[feature_type]
        hint = self.extraction_hint(settings, split, path)
        if path.suffix == ".h5":
            return ConsolidatedStore(path, feat_dim=dim, hint=hint)
        return CLIPStore(path, feat_dim=dim, hint=hint)

    def required_paths(self, settings: Settings, split: str) -> list[DataPath]:
        """What a run on ``split`` reads, for :func:`vlcli.data.preflight.preflight` (existence checks only;
        ``cls.val_annotations`` is optional, read only for ``val_N`` image names)."""
        from vlcli.data.layout import DataPath

        words = layout.data_path(settings, "cls.words")
        items = [DataPath("cls.words", words, "annotation", (UNPACK_HINT,))]
        if self._feature_type(settings) in layout.RAW_FEATURE_TYPES:
            images = layout.data_path(settings, "cls.images", split)
            items.append(DataPath("cls.images", images, "images", (UNPACK_HINT,)))
        else:
            clip = layout.data_path(settings, "cls.clip", split)
            items.append(DataPath("cls.clip", clip, "clip", (self.extraction_hint(settings, split, clip),)))
        return items

    def image_ids(self, settings: Settings, split: str) -> list[str]:
        """The image ids of ``split``, sorted: the stems of its feature files, or of its image files for
        ``raw_*`` feature types (the folder ``cls.images``)."""
        raw = self._feature_type(settings) in layout.RAW_FEATURE_TYPES
        store = self.open_store(settings, split)
        try:
            ids = sorted(store.ids())
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()
        if not ids and raw:
            raise TaskDataError(f"{layout.data_path(settings, 'cls.images', split)}: no images for split {split!r}; "
                                f"{UNPACK_HINT}, or point --data_paths cls.images at the images")
        if not ids:
            path = layout.data_path(settings, "cls.clip", split)
            raise TaskDataError(
                f"{path}: no CLIP features for split {split!r}; fix: {self.extraction_hint(settings, split, path)}"
            )
        return ids

    # ----------------------------------------------------------------------------- examples

    def class_names(self, settings: Settings, split: str, image_ids: list[str]) -> dict[str, str | None]:
        """``{image id: class name}`` (None for an unlabelled image of a ``test*`` split)."""
        words_path = layout.data_path(settings, "cls.words")
        words = read_words(words_path)
        annotations_path = layout.data_path(settings, "cls.val_annotations", split)
        annotations: dict[str, str] | None = None  # read on the first id without a WordNet-id prefix
        out: dict[str, str | None] = {}
        for image_id in image_ids:
            prefix = image_id.split("_", 1)[0]
            wnid: str | None = prefix if "_" in image_id and prefix in words else None
            if wnid is None:
                if annotations is None:
                    annotations = read_annotations(annotations_path) if annotations_path.is_file() else {}
                wnid = annotations.get(image_id)
            if wnid is None:
                if WNID.fullmatch(prefix):
                    raise TaskDataError(
                        f"{words_path}: no line for WordNet id {prefix} (image {image_id!r}); use the official "
                        "tiny-imagenet-200/words.txt (or point --data_paths cls.words at it)"
                    )
                if split.startswith(UNLABELLED_SPLIT_PREFIX):
                    out[image_id] = None
                    continue
                raise self._no_class(image_id, split, annotations_path)
            name = words.get(wnid)
            if name is None:
                raise TaskDataError(
                    f"{words_path}: no line for WordNet id {wnid} (class of image {image_id!r} in {annotations_path}); "
                    "use the official tiny-imagenet-200/words.txt"
                )
            out[image_id] = name
        return out

    @staticmethod
    def _no_class(image_id: str, split: str, annotations_path: Path) -> TaskDataError:
        fix = "put the official val_annotations.txt there (or point --data_paths cls.val_annotations at it)"
        if not annotations_path.is_file():
            return TaskDataError(
                f"{annotations_path}: not found, and image {image_id!r} of split {split!r} has no WordNet-id prefix "
                f"(as in n01443537_0) to take its class from; {fix}"
            )
        return TaskDataError(f"{annotations_path}: image {image_id!r} of split {split!r} is not listed; {fix}")

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        ids = self.image_ids(settings, split)
        names = self.class_names(settings, split, ids)
        text = self.run(settings).prompt  # the input is the prompt alone (spec §1.7)
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        for image_id in ids:
            name = names[image_id]
            ex = Example(image_id, (image_id,), text)
            if name is not None:
                references[image_id] = name
            if train:
                if name is None:
                    raise TaskDataError(
                        f"split {split!r}: image {image_id!r} has no class label; training needs a labelled split "
                        "such as train"
                    )
                ex.targets = [name]
            examples.append(ex)
        return examples, references

    # ------------------------------------------------------------------------------ metrics

    def score(self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
              settings: Settings) -> dict[str, Any]:
        """Top-1 accuracy (percentage): generated text == class name, case-insensitive with --do_lower_case."""
        from vlcli.metrics.cls import top1_accuracy

        ignore_case = bool(settings.get("do_lower_case"))
        result = top1_accuracy(dict(predictions), dict(references), ignore_case=ignore_case)
        return {"accuracy": result["accuracy"]}

    # --------------------------------------------------------------------------- submission

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """``[{"image_id": str, "prediction": str}, ...]`` in split order."""
        write_json_rows(path, [{"image_id": str(i), "prediction": str(p)} for i, p in rows])
