"""RefCOCOg referring-expression grounding (spec data-and-eval §1.5, §4.6, §0.4, §9 item 19).

Annotations are the REFER files, read without the REFER package: ``refs(umd).p`` (a pickled list of
refs, unpickled with a loader that only builds plain containers) and ``instances.json`` (the COCO
boxes of the referred objects). One example per referring sentence: id = ``sent_id``, image id =
``str(image_id)``, input ``visual grounding: {raw sentence}``. The candidates are the first
``n_boxes`` boxes of the image in a BUTD-layout h5 (COCO instance boxes for ``train``, MAttNet
detections for the other splits unless ``--RefCOCO_GT``); box ``k`` is the visual token tied to
``<vis_extra_id_k>``. Training targets ``<vis_extra_id_k>`` for a box drawn ∝ IoU among the boxes
with IoU >= 0.5; prediction is the best-scoring ``<vis_extra_id_k>`` of the image's real boxes at
the first decoder step; accuracy = predicted box with IoU >= 0.5 (:mod:`vlcli.metrics.refcoco`).
"""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlcli.data.features import BUTDStore, FeatureError, FeatureStore, combine_stores
from vlcli.data.layout import data_path
from vlcli.errors import VlcliError
from vlcli.metrics.refcoco import IOU_THRESHOLD, box_iou, refcoco_accuracy, xywh_to_xyxy
from vlcli.model.tokenizer import N_VIS, vis_token
from vlcli.tasks.base import (
    IGNORE_INDEX,
    Example,
    SubmissionError,
    Task,
    TaskDataError,
    TaskDataset,
    read_json,
    require,
    split_names,
    write_json_rows,
)

if TYPE_CHECKING:
    from vlcli.config.settings import Settings
    from vlcli.data.layout import DataPath
    from vlcli.model.tokenizer import VLTokenizer
    from vlcli.model.vl import VLModel

# The original hard-codes this prefix and ignores --prompt / --post_prompt (kept: checkpoints expect it).
PREFIX = "visual grounding: "
BOXES_HINT = "download the released RefCOCOg feature bundle (RefCOCO/refcocog/features/*.h5) into data_root"

# ------------------------------------------------------------------------------ annotation files

# The only globals a refs pickle may name: plain containers and scalars (py2 pickles say __builtin__).
_SAFE_BUILTINS = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool"})


class _PlainUnpickler(pickle.Unpickler):
    """Builds only plain Python data: a data file must not be able to run code when it is read."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"the pickle names {module}.{name}; only plain lists, dicts and strings are allowed")


def load_refs(path: Path) -> list[dict[str, Any]]:
    """The refs list of ``refs(umd).p``; TaskDataError naming the file when it is missing or not plain data."""
    if not path.is_file():
        raise TaskDataError(f"{path}: RefCOCOg refs file not found; put refs(umd).p there or set --data_root")
    try:
        # utf-8 decodes the Python 2 str objects of the original file (ASCII in practice) like unicode ones.
        refs = _PlainUnpickler(io.BytesIO(path.read_bytes()), encoding="utf-8").load()
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, pickle.UnpicklingError) as exc:
        raise TaskDataError(f"{path}: cannot read the RefCOCOg refs pickle ({exc}); restore the original file") from exc
    if not isinstance(refs, list):
        raise TaskDataError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}; use the original file")
    return refs


def load_ann_boxes(path: Path) -> dict[Any, list[float]]:
    """``annotation id -> [x1, y1, x2, y2]`` (pixels, x2 = x + w) from a COCO ``instances.json``."""
    data = read_json(path, "RefCOCOg instances file")
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        raise TaskDataError(f"{path}: no 'annotations' list; use the original RefCOCO/refcocog/instances.json")
    boxes: dict[Any, list[float]] = {}
    for i, ann in enumerate(anns):
        require(ann, ("id", "bbox"), path, i)
        _check_id(ann["id"], path, f"annotation {i}", "id")
        try:
            boxes[ann["id"]] = xywh_to_xyxy(ann["bbox"])
        except (TypeError, ValueError):
            raise TaskDataError(f"{path}: annotation {ann['id']!r}: 'bbox' must be [x, y, w, h]; use the original file") from None
    return boxes


# Parsed annotation files by (path, mtime, size): the three splits read the same two large files.
# Module level, not on the task, so that DataLoader workers started by spawn do not receive a copy.
_CACHE: dict[tuple, tuple[list[dict[str, Any]], dict[Any, list[float]]]] = {}


def _file_key(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), st.st_mtime_ns, st.st_size)


def load_annotations(refs_path: Path, instances_path: Path) -> tuple[list[dict[str, Any]], dict[Any, list[float]]]:
    """The refs and the annotation boxes, parsed once per file version."""
    key = (_file_key(refs_path), _file_key(instances_path))
    if key not in _CACHE:
        loaded = (load_refs(refs_path), load_ann_boxes(instances_path))
        _CACHE.clear()  # keep only the latest data root's files
        _CACHE[key] = loaded
    return _CACHE[key]


def _check_id(value: Any, path: Path, where: str, key: str) -> None:
    """Ids are ints or strings in the original files; anything else is a garbled file, not a crash."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TaskDataError(f"{path}: {where}: {key!r} must be an integer or string id, got {value!r}; "
                            "use the original file")


def in_split(ref_split: Any, split: str) -> bool:
    """REFER's split test: ``test`` matches every split containing "test" (testA, testB, ...), others exactly."""
    return split in str(ref_split) if split == "test" else str(ref_split) == split


def sentences_of(ref: Mapping[str, Any], path: Path, index: int) -> list[tuple[Hashable, str]]:
    """``(sent_id, raw sentence)`` of a ref; ids from ``sent_ids`` (as the original) or each sentence's ``sent_id``."""
    sents = ref["sentences"]
    ids = ref.get("sent_ids")
    if not isinstance(sents, list) or (ids is not None and (not isinstance(ids, list) or len(ids) != len(sents))):
        raise TaskDataError(f"{path}: ref {index}: 'sentences' (and 'sent_ids') must be lists of the same length")
    out = []
    for j, sent in enumerate(sents):
        sid = ids[j] if ids is not None else (sent.get("sent_id") if isinstance(sent, dict) else None)
        if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str) or sid is None:
            raise TaskDataError(f"{path}: ref {index}, sentence {j}: needs 'raw' text and a 'sent_id'; use the original file")
        _check_id(sid, path, f"ref {index}, sentence {j}", "sent_id")
        out.append((sid, sent["raw"]))
    return out


# ------------------------------------------------------------------------------ candidate boxes


def read_candidates(store: FeatureStore, image_id: str, n_boxes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``n_boxes`` candidates of an image: features (N, F), normalised boxes (N, 4) and the
    stored pixel boxes (N, 4) float64 that the IoU uses."""
    source = store.store_for(image_id)
    if not isinstance(source, BUTDStore):
        raise FeatureError(
            f"RefCOCOg reads candidate boxes from BUTD-layout h5 files (pixel boxes are needed), not a "
            f"{type(source).__name__}; open the split with RefCOCOTask.open_store"
        )
    feats, boxes = source.get(image_id)
    pixels = np.asarray(source.extras(image_id, ["boxes"])["boxes"], dtype=np.float64).reshape(-1, 4)
    n = min(n_boxes, feats.shape[0])
    if n == 0:
        raise FeatureError(f"{source.path}: image {image_id!r} has no candidate boxes; re-create the box file")
    return feats[:n], boxes[:n], pixels[:n]


# ------------------------------------------------------------------------------------- dataset


@dataclass
class RefExample(Example):
    """A referring sentence: the referred object's box ``[x1, y1, x2, y2]`` and the original ids."""

    ref_id: Hashable = None
    image_id: Hashable = None
    ref_box: tuple[float, ...] = ()


class RefCOCODataset(TaskDataset):
    """Items carry the candidates' IoU with the referred box; training items draw their target box."""

    n_boxes: int = 36
    shuffle_boxes: bool = False

    @cached_property
    def answer_position(self) -> int:
        """Decoder position of the ``<vis_extra_id_k>`` token in an encoded target (T5 0, BART 1 after ``<s>``)."""
        return self.tokenizer.encode(vis_token(0)).index(self.tokenizer.vis_token_id(0))

    @cached_property
    def box_token_ids(self) -> list[int]:
        """Ids of ``<vis_extra_id_0..n_boxes-1>``."""
        return [self.tokenizer.vis_token_id(k) for k in range(self.n_boxes)]

    def draw_target(self, ious: np.ndarray) -> int | None:
        """A box index drawn ∝ IoU among the boxes with IoU >= 0.5 (None when no box is correct)."""
        scores = np.where(ious >= IOU_THRESHOLD, ious, 0.0)
        total = scores.sum()
        if total <= 0:
            return None
        return int(self.rng.choice(len(scores), p=scores / total))

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex: RefExample = self.examples[index]  # type: ignore[assignment]
        feats, boxes, pixels = read_candidates(self.store, ex.image_ids[0], self.n_boxes)
        if self.train and self.shuffle_boxes:  # permute first: the target follows its box
            order = self.rng.permutation(len(feats))
            feats, boxes, pixels = feats[order], boxes[order], pixels[order]
        ious = box_iou(pixels, ex.ref_box)
        item: dict[str, Any] = {
            "id": ex.id,
            "ref_id": ex.ref_id,
            "image_id": ex.image_id,
            "input_ids": self.tokenizer.encode(ex.text, self.max_text_length),
            "feats": feats,
            "boxes": boxes,
            "pixel_boxes": pixels,
            "ious": ious,
            "box_token_ids": self.box_token_ids[: len(feats)],
            "answer_position": self.answer_position,
            "target": None,
            "target_ids": None,
            "weight": 1.0,
        }
        if self.train:
            k = self.draw_target(ious)
            item["target"] = k
            # No correct candidate: an encoded empty target keeps the shapes; collate ignores the whole row.
            item["target_ids"] = self.tokenizer.encode("" if k is None else vis_token(k), self.target_max_length)
            item["weight"] = 0.0 if k is None else 1.0
        return item


# ---------------------------------------------------------------------------------------- task


class RefCOCOTask(Task):
    """RefCOCOg (umd split) grounding: pick the candidate box a sentence refers to."""

    name = "refcoco"
    examples_file = "refcoco.refs"
    splits = {"train": "train", "valid": "val", "test": "test", "submit": "test"}
    submission_file = "predictions.json"
    primary_metric = "accuracy"
    region_features = True
    dataset_class = RefCOCODataset

    # ------------------------------------------------------------------------------ features

    def boxes_name(self, settings: Settings, split: str) -> str:
        """Logical data path of a split's candidate boxes: GT for ``train`` (and every split with
        ``--RefCOCO_GT``), MAttNet detections otherwise (chosen by split name, as the original)."""
        return "refcoco.boxes.gt" if split == "train" or settings.get("RefCOCO_GT") else "refcoco.boxes.detected"

    def open_store(self, settings: Settings, split: str, *, train: bool = False) -> FeatureStore:
        """All stored boxes of each image of ``split`` (the dataset keeps the first ``n_boxes``; images
        have different counts, so the store must not require ``n_boxes`` of them)."""
        stores: dict[str, FeatureStore] = {
            name: BUTDStore(data_path(settings, self.boxes_name(settings, name), name),
                            feat_dim=settings.derived.feat_dim, hint=BOXES_HINT)
            for name in split_names(split)
        }
        return combine_stores(stores)

    def required_paths(self, settings: Settings, split: str) -> list[DataPath]:
        """The REFER files and each split's candidate-box file, for preflight."""
        from vlcli.data.layout import BUNDLE_HINT, DataPath

        items = [DataPath(name, data_path(settings, name), "annotation", (BUNDLE_HINT,))
                 for name in ("refcoco.refs", "refcoco.instances")]
        for name in split_names(split):
            logical = self.boxes_name(settings, name)
            items.append(DataPath(logical, data_path(settings, logical, name), "butd", (BOXES_HINT,)))
        return items

    def n_boxes(self, settings: Settings) -> int:
        """``--n_boxes``, at most the 100 ``<vis_extra_id_k>`` tokens a box can be named by."""
        n = int(settings.get("n_boxes"))
        if not 1 <= n <= N_VIS:
            raise VlcliError(f"--n_boxes {n}: RefCOCOg names boxes by <vis_extra_id_0..{N_VIS - 1}>; use 1..{N_VIS}")
        return n

    # ----------------------------------------------------------------------------- datasets

    def build_dataset(self, settings: Settings, split: str, tokenizer: VLTokenizer, store: FeatureStore, *,
                      train: bool, role: str | None = None, rng: np.random.Generator | None = None) -> TaskDataset:
        ds = super().build_dataset(settings, split, tokenizer, store, train=train, role=role, rng=rng)
        ds.n_boxes = self.n_boxes(settings)
        ds.shuffle_boxes = bool(settings.get("shuffle_boxes"))
        return ds

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        refs_path = data_path(settings, "refcoco.refs")
        refs, ann_boxes = load_annotations(refs_path, data_path(settings, "refcoco.instances"))
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        for i, ref in enumerate(refs):
            require(ref, ("ref_id", "ann_id", "image_id", "split", "sentences"), refs_path, i)
            for key in ("ref_id", "ann_id", "image_id"):
                _check_id(ref[key], refs_path, f"ref {i}", key)
            if not in_split(ref["split"], split):
                continue
            box = ann_boxes.get(ref["ann_id"])
            if box is None:
                raise TaskDataError(
                    f"{refs_path}: ref {ref['ref_id']!r} refers to annotation {ref['ann_id']!r}, which instances.json "
                    "lacks; use the instances.json of the same RefCOCOg release"
                )
            for sent_id, raw in sentences_of(ref, refs_path, i):
                if sent_id in references:
                    raise TaskDataError(f"{refs_path}: sent_id {sent_id!r} occurs twice; use the original file")
                examples.append(RefExample(sent_id, (str(ref["image_id"]),), f"{PREFIX}{raw}",
                                           ref_id=ref["ref_id"], image_id=ref["image_id"], ref_box=tuple(box)))
                references[sent_id] = {"box": box, "ref_id": ref["ref_id"], "image_id": ref["image_id"]}
        if not examples:
            raise TaskDataError(f"{refs_path}: no refs of split {split!r}; RefCOCOg (umd) has train, val and test")
        return examples, references

    # ------------------------------------------------------------------------------ batches

    def collate(self, items: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """The base batch plus, always, ``vis_attention_mask`` (B, V); ``ious`` (B, V) and the pixel
        ``candidate_boxes`` (B, V, 4) (0 on padding); ``box_token_ids`` (B, V); ``answer_position`` (B,).
        Training rows without a correct box get all-ignored labels and ``loss_weights`` make the loss
        the mean over the rows that have a target."""
        batch = super().collate(items, pad_token_id)
        counts = torch.tensor([len(it["feats"]) for it in items])
        width = int(counts.max())
        batch["vis_attention_mask"] = (torch.arange(width) < counts[:, None]).long()
        batch["ious"] = torch.zeros(len(items), width, dtype=torch.float32)
        batch["candidate_boxes"] = torch.zeros(len(items), width, 4, dtype=torch.float64)
        batch["box_token_ids"] = torch.zeros(len(items), width, dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["feats"])
            batch["ious"][i, :n] = torch.as_tensor(it["ious"], dtype=torch.float32)
            batch["candidate_boxes"][i, :n] = torch.as_tensor(it["pixel_boxes"], dtype=torch.float64)
            batch["box_token_ids"][i, :n] = torch.as_tensor(it["box_token_ids"], dtype=torch.long)
        batch["answer_position"] = torch.tensor([it["answer_position"] for it in items], dtype=torch.long)
        batch["ref_ids"] = [it["ref_id"] for it in items]
        batch["image_ids"] = [it["image_id"] for it in items]
        if "labels" in batch:
            has_target = torch.tensor([it["target"] is not None for it in items])
            batch["labels"][~has_target] = IGNORE_INDEX
            # VLModel's "example" reduction is mean(weight · example loss) over the whole batch, and an
            # all-ignored row has loss 0: weights B / #targets give the mean over target rows (§0.4).
            n = int(has_target.sum())
            batch["loss_weights"] = has_target.float() * (len(items) / n) if n else torch.zeros(len(items))
        return batch

    def train_accuracy(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[int, int]:
        """``(correct, examples)``: the teacher-forced first-answer-step logits restricted to the real
        boxes' ``<vis_extra_id_k>``; correct when the chosen box has IoU >= 0.5 (rows without a correct
        box count as wrong)."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        step = logits.detach()[rows, batch["answer_position"].to(logits.device)].float()  # (B, vocab)
        scores = step.gather(1, batch["box_token_ids"].to(logits.device))
        scores = scores.masked_fill(batch["vis_attention_mask"].to(logits.device) == 0, float("-inf"))
        chosen = scores.argmax(dim=1)
        ious = batch["ious"].to(logits.device)[rows, chosen]
        return int((ious >= IOU_THRESHOLD).sum()), int(logits.shape[0])

    # --------------------------------------------------------------------------- prediction

    def predict(
        self, model: VLModel, batch: Mapping[str, Any], settings: Settings, tokenizer: VLTokenizer
    ) -> dict[Hashable, dict[str, Any]]:
        """``{sent_id: {"box_index", "box", "ref_id", "image_id"}}`` from one decoder step.

        The argmax runs over ``<vis_extra_id_k>`` of the example's real boxes only (padding masked to
        -inf); the original's argmax over the whole vocabulary could pick a word (spec §9 item 19).
        """
        mask = batch["vis_attention_mask"]
        candidates = [tokenizer.vis_token_id(k) for k in range(mask.shape[1])]
        logits = model.score_candidates(
            batch["input_ids"], candidates, batch["attention_mask"], batch["vis_feats"], batch["vis_pos"],
            task=self.name, vis_attention_mask=mask, reduce_visual=False,
        )
        chosen = logits.float().masked_fill(mask.to(logits.device) == 0, float("-inf")).argmax(dim=1).tolist()
        boxes = batch["candidate_boxes"].cpu()
        out: dict[Hashable, dict[str, Any]] = {}
        for row, (sent_id, k) in enumerate(zip(batch["ids"], chosen, strict=True)):
            out[sent_id] = {"box_index": int(k), "box": boxes[row, k].tolist(),
                            "ref_id": batch["ref_ids"][row], "image_id": batch["image_ids"][row]}
        return out

    # ------------------------------------------------------------------------------ metrics

    def score(self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
              settings: Settings) -> dict[str, Any]:
        """``accuracy`` (% of examples whose predicted box has IoU >= 0.5), ``correct``, ``total``."""
        return refcoco_accuracy(predictions, references)

    # --------------------------------------------------------------------------- submission

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """``[{"sent_id", "ref_id", "image_id", "box": [x1, y1, x2, y2]}]`` (the original writes no file)."""
        objects = []
        for sent_id, pred in rows:
            if not (isinstance(pred, Mapping) and all(k in pred for k in ("box", "ref_id", "image_id"))):
                raise SubmissionError(
                    f"{path}: not written: the RefCOCOg prediction for sent_id {sent_id!r} lacks box, ref_id or "
                    "image_id; use the predictions vlcli writes"
                )
            objects.append({"sent_id": sent_id, "ref_id": pred["ref_id"], "image_id": pred["image_id"],
                            "box": [float(v) for v in pred["box"]]})
        write_json_rows(path, objects)
