"""Vision-language pretraining as a task (spec data-and-eval §1.8, §0.3, §6; ``vlcli pretrain``).

Reads the LXMERT files ``lxmert/{split}.json`` (train ``mscoco_resplit_train,vgnococo``, valid
``mscoco_resplit_val``), keeps ``train_topk`` / ``valid_topk`` *images* (before expansion: the original
sliced the list with a float and crashed, spec §9 item 12), expands them into examples of the objectives
in ``--losses`` (:mod:`vlcli.pretraining.lxmert`) and builds each example's input and target on every
read (:mod:`vlcli.pretraining.objectives`): masks, sampled answers, ITM negatives and grounded boxes are
redrawn from the dataset's random stream in training (the engine reseeds it per epoch) and fixed per
example in validation.

Visual input: BUTD region features only. Training images are routed by id to
``COCO/features/{train2014,val2014}_obj36.h5`` (``COCO_train2014_*`` / ``COCO_val2014_*``) or
``VG/features/vg_gqa_obj36.h5`` (everything else); validation reads ``COCO/features/resplit_val_obj36.h5``.
The detector labels (``obj_id`` / ``attr_id`` of each box, named by ``VG/{objects,attributes}_vocab.txt``)
feed ``ground_caption``, ``refer`` and ``--oscar_tags``.

Validation = the loss of every example (per objective and overall) plus, with ``qa``, the QA accuracy of
greedy generation: Σ label score of the generated answer / number of QA examples, overall and per QA
source. BEST is selected by ``selection``: the QA accuracy when ``qa`` is trained, else minus the mean
validation loss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlcli.data.features import BUTDStore, FeatureStore, SubstringRoute, combine_stores
from vlcli.data.layout import DataPath, data_path, merge_paths
from vlcli.errors import VlcliError
from vlcli.pretraining import objectives as obj
from vlcli.pretraining.answers import AnswerTable
from vlcli.pretraining.lxmert import Expansion, PretrainExample, expand_all, read_records, read_vocab
from vlcli.tasks.base import Task, TaskDataError, TaskDataset, split_names

if TYPE_CHECKING:
    from vlcli.config.settings import Settings
    from vlcli.model.tokenizer import VLTokenizer
    from vlcli.model.vl import VLModel

TAGGED = ("lm", "qa", "itm", "caption")  # objectives whose input --oscar_tags extends
FEATURE_HINT = (
    "download the released BUTD features (*_obj36.h5) into data_root, or convert a BUTD TSV with "
    "`vlcli extract-features --butd_tsv FILE --out DIR`"
)
RESPLIT_HINT = (
    "the original builds it from val2014_obj36.h5 with feature_extraction/coco_val_compact.py; or read "
    "val2014 directly: --data_paths coco.butd.resplit_val=COCO/features/val2014_obj36.h5"
)
# Which image sets a training split reads (by id substring); other split names read all three.
SPLIT_IMAGE_SETS = {
    "mscoco_resplit_train": ("train2014", "val2014"),
    "mscoco_resplit_val": ("val2014",),
    "vgnococo": ("vg",),
}
IMAGE_SET_FILES = {"train2014": "coco.butd.train2014", "val2014": "coco.butd.val2014", "vg": "vg.butd"}
IMAGE_FOLDERS = {"train2014": "coco.images.train2014", "val2014": "coco.images.val2014", "vg": "vg.images"}
IMAGES_HINT = "download the COCO 2014 / Visual Genome images and unpack them there (raw_* feature types)"
COCO_ROUTE = SubstringRoute([("COCO_train2014", "train2014"), ("COCO_val2014", "val2014")], default="vg")


class PretrainFeatureError(VlcliError):
    """Pretraining asked for visual features it cannot use (it reads BUTD region features only)."""


def parse_losses(settings: Any) -> list[str]:
    """The objectives of ``--losses`` in order, each once; VlcliError listing the valid names otherwise.

    On raw images the grounding objectives are dropped (they need the detector's boxes and labels; the
    original's raw variant dropped them too; rule R45 warns).
    """
    names: list[str] = []
    for name in str(settings.get("losses")).split(","):
        name = name.strip()
        if name and name not in names:
            names.append(name)
    bad = [n for n in names if n not in obj.OBJECTIVES]
    if bad or not names:
        what = f"unknown objective(s) {', '.join(bad)}" if bad else "no objective"
        raise VlcliError(f"--losses: {what}; valid: {', '.join(obj.OBJECTIVES)}")
    if _raw(settings) or _grid(settings):
        names = [n for n in names if n not in obj.GROUNDING]
        if not names:
            raise VlcliError(f"--losses {settings.get('losses')}: without BUTD boxes the grounding objectives are "
                             "dropped and nothing is left; add lm, qa, itm or caption")
    return names


@dataclass(frozen=True)
class ObjectiveConfig:
    """The settings that shape inputs and targets (spec §1.8 table)."""

    family: str
    word_mask_rate: float
    n_ground: int
    ground_weight: float
    oscar_tags: bool
    single_vqa_prefix: bool
    denoise_prefix: (
        str | None
    )  # BART: "denoise text:", omitted when lm is the only objective (as the original)

    @classmethod
    def from_settings(cls, settings: Any, family: str, losses: list[str]) -> ObjectiveConfig:
        return cls(
            family=family,
            word_mask_rate=float(settings.get("word_mask_rate")),
            n_ground=int(settings.get("n_ground")),
            ground_weight=float(settings.get("ground_weight")),
            oscar_tags=bool(settings.get("oscar_tags")),
            single_vqa_prefix=bool(settings.get("single_vqa_prefix")),
            denoise_prefix=None if losses == ["lm"] else obj.DENOISE_PREFIX,
        )


@dataclass(frozen=True)
class RegionVocab:
    """VG object and attribute names, indexed by the detector's ``obj_id`` / ``attr_id``."""

    objects: list[str]
    attributes: list[str]
    objects_path: Path
    attributes_path: Path


# ----------------------------------------------------------------------------------------- dataset


class PretrainDataset(TaskDataset):
    """Pretraining examples; every read builds the objective's input and target (and its loss weight)."""

    def __init__(
        self,
        *args: Any,
        config: ObjectiveConfig,
        vocab: RegionVocab | None,
        negatives: list[tuple[str, str]],
        seed: int,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.config = config
        self.vocab = vocab
        self.negatives = negatives  # (image id, caption) pool of ITM negatives
        self.seed = seed

    def example_rng(self, index: int) -> np.random.Generator:
        """Training: the dataset's stream (redrawn per read, reseeded per epoch); validation: fixed."""
        return self.rng if self.train else np.random.default_rng([self.seed, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        source, target, weight = self.texts(ex, self.example_rng(index))
        feats, boxes = self.visual(ex)
        return {
            "id": ex.id,
            "input_ids": self.tokenizer.encode(source, self.max_text_length),
            "feats": feats,
            "boxes": boxes,
            "target": target,
            "target_ids": self.tokenizer.encode(target, self.target_max_length),
            "weight": weight,
            "objective": ex.objective,
        }

    def texts(self, ex: PretrainExample, rng: np.random.Generator) -> tuple[str, str, float]:
        """``(input text, target text, loss weight)`` of one read of ``ex``."""
        c = self.config
        weight = 1.0
        if ex.objective == "lm":
            if c.family == "bart":
                source, target = obj.corrupt_bart(ex.text, c.word_mask_rate, rng, prefix=c.denoise_prefix)
            else:
                source, target = obj.corrupt_spans(ex.text, c.word_mask_rate, rng)
        elif ex.objective == "qa":
            source = obj.question_input(ex.text, ex.source, c.single_vqa_prefix)
            target = obj.sample_answer(ex.label, rng)
        elif ex.objective == "itm":
            negative = self.negative(ex.image_ids[0], rng) if rng.random() < 0.5 else None
            source, target = obj.image_text_match(ex.text, negative)
        elif ex.objective == "caption":
            source, target = obj.caption_pair(ex.text)
        else:
            build = obj.ground_caption if ex.objective == "ground_caption" else obj.refer_expression
            source, target = build(self.region_captions(ex.image_ids[0]), c.n_ground, rng)
            weight = c.ground_weight
        if c.oscar_tags and ex.objective in TAGGED:
            source = obj.with_tags(source, self.object_names(ex.image_ids[0]))
        return source, target, weight

    def negative(self, image_id: str, rng: np.random.Generator) -> str:
        """A caption of another image, uniformly from the pool (>= 2 images, checked when built)."""
        while True:
            other, caption = self.negatives[int(rng.integers(len(self.negatives)))]
            if other != image_id:
                return caption

    # ------------------------------------------------------------------------- detector labels

    @property
    def region_vocab(self) -> RegionVocab:
        """The VG vocabularies (loaded whenever ground_caption, refer or --oscar_tags need them)."""
        if self.vocab is None:
            raise RuntimeError("this pretraining dataset was built without the VG vocabularies")
        return self.vocab

    def _labels(self, image_id: str, keys: list[str]) -> dict[str, np.ndarray]:
        """The detector's ``obj_id`` / ``attr_id`` of the image's boxes, checked against the vocabularies."""
        store = self.store.store_for(image_id)
        if not isinstance(store, BUTDStore):
            raise TaskDataError(
                f"image {image_id!r}: pretraining needs BUTD features with obj_id/attr_id per box "
                "(ground_caption, refer, --oscar_tags); use the original *_obj36.h5 files"
            )
        labels = store.extras(image_id, keys)
        vocab = self.region_vocab
        for key, names, vocab_path in (
            ("obj_id", vocab.objects, vocab.objects_path),
            ("attr_id", vocab.attributes, vocab.attributes_path),
        ):
            if key in labels:
                values = labels[key].astype(np.int64).reshape(-1)
                bad = values[(values < 0) | (values >= len(names))]
                if bad.size:
                    raise TaskDataError(
                        f"{store.path}: image {image_id!r} has {key} {int(bad[0])}, outside {vocab_path} "
                        f"({len(names)} names); use the vocabulary of the detector that made the features"
                    )
                labels[key] = values
        return labels

    def region_captions(self, image_id: str) -> list[str]:
        """``"{attr} {obj}"`` of every box of the image (its first ``n_boxes``)."""
        labels = self._labels(image_id, ["obj_id", "attr_id"])
        vocab = self.region_vocab
        return obj.region_captions(labels["obj_id"], labels["attr_id"], vocab.objects, vocab.attributes)

    def object_names(self, image_id: str) -> list[str]:
        """Detected object names of the image's boxes, in box order (``--oscar_tags``)."""
        return [self.region_vocab.objects[i] for i in self._labels(image_id, ["obj_id"])["obj_id"]]


# -------------------------------------------------------------------------------------------- task


class PretrainTask(Task):
    """VL-T5 / VL-BART pretraining on COCO + Visual Genome (LXMERT data), objectives from ``--losses``."""

    name = "pretrain"
    examples_file = "pretrain.annotations"
    splits = {"train": "mscoco_resplit_train,vgnococo", "valid": "mscoco_resplit_val"}
    weighted = True  # the example weight carries --ground_weight
    primary_metric = "selection"
    dataset_class = PretrainDataset
    # Not region_features: grounding needs BUTD boxes, which are not pooled unless --downsample is asked
    # for BUTD (rule R20 warns); on raw images the grid is pooled like any other grid.

    def target_length(self, settings: Settings) -> int | None:
        return self.run(settings).gen_max_length  # the original truncated targets at gen_max_length

    def role_of(self, split: str, train: bool) -> str:
        return "train" if train else "valid"  # pretraining has no test split

    # --------------------------------------------------------------------------------- files

    def feature_paths(self, settings: Settings, split: str, *, train: bool) -> dict[str, DataPath]:
        """BUTD files of a split: by image set (training) or the compact validation file; for raw images the
        image folders (validation images are COCO val2014 images)."""
        _check_feature_type(settings)
        if _raw(settings):
            sets = {"val2014"} if not train else {s for n in split_names(split)
                                                  for s in SPLIT_IMAGE_SETS.get(n, tuple(IMAGE_FOLDERS))}
            return {key: DataPath(IMAGE_FOLDERS[key], data_path(settings, IMAGE_FOLDERS[key]), "images", (IMAGES_HINT,))
                    for key in IMAGE_FOLDERS if key in sets}
        if _grid(settings):
            return _grid_paths(settings, split, train)
        if not train:
            return {"resplit_val": _butd(settings, "coco.butd.resplit_val", RESPLIT_HINT)}
        sets = set()
        for name in split_names(split):
            sets.update(SPLIT_IMAGE_SETS.get(name, tuple(IMAGE_SET_FILES)))
        return {
            key: _butd(settings, IMAGE_SET_FILES[key], FEATURE_HINT) for key in IMAGE_SET_FILES if key in sets
        }

    def run_paths(self, settings: Settings, train_split: str, valid_split: str) -> list[DataPath]:
        """Every file a pretraining run reads: annotations, answer table, vocabularies, features."""
        losses = parse_losses(settings)
        items: list[DataPath] = []
        for split in (*split_names(train_split), *split_names(valid_split)):
            items.append(
                DataPath(
                    "pretrain.annotations",
                    data_path(settings, "pretrain.annotations", split),
                    "annotation",
                    ("download LXMERT's pretraining annotations (lxmert/*.json) into data_root",),
                )
            )
        if "qa" in losses:
            items.append(
                DataPath(
                    "pretrain.answers",
                    data_path(settings, "pretrain.answers"),
                    "annotation",
                    ("download LXMERT's answer table lxmert/all_ans.json into data_root",),
                )
            )
        if _needs_vocab(settings, losses):
            for name in ("vg.objects_vocab", "vg.attributes_vocab"):
                items.append(
                    DataPath(
                        name,
                        data_path(settings, name),
                        "annotation",
                        ("put the VG vocabulary of the BUTD detector (1600 objects / 400 attributes) there",),
                    )
                )
        items += self.feature_paths(settings, train_split, train=True).values()
        items += self.feature_paths(settings, valid_split, train=False).values()
        return merge_paths(items)

    def required_paths(self, settings: Settings, split: str) -> list[DataPath]:
        """The base hook: the files of a run that trains or validates on ``split`` (with the default other one)."""
        if split == self.splits["valid"]:
            return self.run_paths(settings, self.splits["train"], split)
        return self.run_paths(settings, split, self.splits["valid"])

    def preflight(self, settings: Settings, train_split: str, valid_split: str) -> None:
        """One MissingDataError listing every missing file, before any model is built."""
        from vlcli.data.preflight import check_paths

        check_paths(settings, self.run_paths(settings, train_split, valid_split))

    def open_store(self, settings: Settings, split: str, *, train: bool = False) -> FeatureStore:
        """Training images routed by id to the COCO / VG BUTD files (or image folders); validation images from
        resplit_val (raw: COCO val2014)."""
        paths = self.feature_paths(settings, split, train=train)
        stores: dict[str, FeatureStore]
        if _raw(settings):
            from vlcli.data.images import image_stores

            stores = dict(image_stores(settings, self.name, paths, train))
        elif _grid(settings):
            from vlcli.data.features import CLIPStore

            folders = {item.path: CLIPStore(item.path, hint=item.creates) for item in paths.values()}
            stores = {key: folders[paths[_GRID_FOLDER[key]].path] for key in _GRID_FOLDER if _GRID_FOLDER[key] in paths}
        else:
            n_boxes, feat_dim = int(settings.get("n_boxes")), int(settings.get("feat_dim"))
            stores = {key: BUTDStore(item.path, n_boxes=n_boxes, feat_dim=feat_dim, hint=item.creates)
                      for key, item in paths.items()}
        return combine_stores(stores, COCO_ROUTE)

    # ------------------------------------------------------------------------------ examples

    def _records(self, settings: Settings, split: str) -> list[tuple[Path, dict[str, Any]]]:
        out: list[tuple[Path, dict[str, Any]]] = []
        for name in split_names(split):
            path = data_path(settings, "pretrain.annotations", name)
            out += [(path, rec) for rec in read_records(path, name)]
        return out

    def _expand(
        self, settings: Settings, records: list[tuple[Path, dict[str, Any]]], with_references: bool = True
    ) -> tuple[list[PretrainExample], dict[Hashable, Any]]:
        losses = parse_losses(settings)
        answers = AnswerTable.from_file(data_path(settings, "pretrain.answers")) if "qa" in losses else None
        return expand_all(records, Expansion.from_settings(settings, losses), answers, with_references)

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[PretrainExample], dict[Hashable, Any]]:
        """Examples of one split name (all images) and their references (objective, source, qa label)."""
        return self._expand(settings, self._records(settings, split))

    def build_dataset(
        self,
        settings: Settings,
        split: str,
        tokenizer: VLTokenizer,
        store: FeatureStore,
        *,
        train: bool,
        role: str | None = None,
        rng: np.random.Generator | None = None,
    ) -> PretrainDataset:
        """The expanded examples of ``split``; ``train_topk`` / ``valid_topk`` count images."""
        seed = int(settings.get("seed"))
        records = self.select(settings, split, role or self.role_of(split, train), self._records(settings, split))
        examples, references = self._expand(settings, records, with_references=not train)
        if not examples:
            raise TaskDataError(
                f"split {split!r}: no pretraining example for --losses {settings.get('losses')} "
                "(check the losses, the source filters and train_topk/valid_topk)"
            )
        losses = parse_losses(settings)
        how = Expansion.from_settings(settings, losses)
        negatives = _itm_pool(examples, how) if "itm" in losses else []
        if any(ex.objective == "itm" for ex in examples) and len({img for img, _ in negatives}) < 2:
            raise TaskDataError(
                f"split {split!r}: itm needs captions of at least two images for its negatives; "
                "use more images (train_topk/valid_topk) or drop itm from --losses"
            )
        family = tokenizer.family
        return PretrainDataset(
            self,
            split,
            examples,
            tokenizer,
            store,
            train=train,
            max_text_length=self.input_length(settings),
            target_max_length=self.target_length(settings),
            rng=rng if rng is not None else np.random.default_rng(seed),
            references=references,
            config=ObjectiveConfig.from_settings(settings, family, losses),
            vocab=_load_vocab(settings) if _needs_vocab(settings, losses) else None,
            negatives=negatives,
            seed=seed,
        )

    # ------------------------------------------------------------------------------- batches

    def collate(self, items: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """The base batch plus ``objectives`` (one name per example)."""
        batch = super().collate(items, pad_token_id)
        batch["objectives"] = [it["objective"] for it in items]
        return batch

    def predict(
        self, model: VLModel, batch: Mapping[str, Any], settings: Settings, tokenizer: VLTokenizer
    ) -> dict[Hashable, dict[str, Any]]:
        """``{id: {"objective", "loss"[, "answer"]}}``: each example's mean token loss (unweighted, as the
        original's validation) and, for qa examples, the greedily generated answer."""
        out = model(**self.model_inputs(batch))
        losses = out.example_loss.float().tolist()
        preds: dict[Hashable, dict[str, Any]] = {
            i: {"objective": o, "loss": loss}
            for i, o, loss in zip(batch["ids"], batch["objectives"], losses, strict=True)
        }
        rows = [k for k, o in enumerate(batch["objectives"]) if o == "qa"]
        if rows:
            for i, answer in zip(
                [batch["ids"][k] for k in rows],
                self._answers(model, batch, rows, settings, tokenizer),
                strict=True,
            ):
                preds[i]["answer"] = answer
        return preds

    def _answers(
        self,
        model: VLModel,
        batch: Mapping[str, Any],
        rows: list[int],
        settings: Settings,
        tokenizer: VLTokenizer,
    ) -> list[str]:
        index = torch.tensor(rows, device=batch["input_ids"].device)
        visual = (
            {"vis_attention_mask": batch["vis_attention_mask"][index]}
            if "vis_attention_mask" in batch
            else {}
        )
        ids = model.generate(
            batch["input_ids"][index],
            batch["attention_mask"][index],
            batch["vis_feats"][index],
            batch["vis_pos"][index],
            task=self.name,
            num_beams=1,
            max_length=self.run(settings).gen_max_length,
            **visual,
        )
        return tokenizer.decode_many(ids)

    # ------------------------------------------------------------------------------- metrics

    def score(
        self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any], settings: Settings
    ) -> dict[str, Any]:
        """``loss`` (mean over examples), ``loss/{objective}``, with qa ``qa_accuracy`` and
        ``qa_accuracy/{source}`` (percent), and ``selection`` (what BEST maximises)."""
        losses: dict[str, list[float]] = defaultdict(list)
        qa_score: dict[str, float] = defaultdict(float)
        qa_count: dict[str, int] = defaultdict(int)
        for key, pred in predictions.items():
            ref = references[key]
            losses[ref["objective"]].append(float(pred["loss"]))
            if ref["objective"] == "qa":
                qa_score[ref["source"]] += float(ref["label"].get(pred.get("answer", ""), 0.0))
                qa_count[ref["source"]] += 1
        every = [x for values in losses.values() for x in values]
        result: dict[str, Any] = {"loss": float(np.mean(every))}
        result.update({f"loss/{o}": float(np.mean(losses[o])) for o in obj.OBJECTIVES if o in losses})
        if qa_count:
            total = sum(qa_count.values())
            result["qa_accuracy"] = round(100.0 * sum(qa_score.values()) / total, 2)
            for source in sorted(qa_count):
                result[f"qa_accuracy/{source}"] = round(100.0 * qa_score[source] / qa_count[source], 2)
        result["selection"] = result["qa_accuracy"] if qa_count else -result["loss"]
        return result


# ------------------------------------------------------------------------------------------ helpers


def _raw(settings: Any) -> bool:
    return str(settings.get("feature_type")).startswith("raw_")


def _grid(settings: Any) -> bool:
    """Precomputed CLIP grid features (vlcli's extension: the original raised NotImplementedError)."""
    from vlcli.config.derive import GRID_FEAT_DIM

    return settings.get("feature_type") in GRID_FEAT_DIM


_GRID_FOLDER = {"train2014": "coco", "val2014": "coco", "vg": "vg"}
"""Image set (the route's key) -> CLIP feature folder that holds its images."""


def _grid_paths(settings: Any, split: str, train: bool) -> dict[str, DataPath]:
    """CLIP feature folders of a split: COCO (train2014 and val2014 images) and VG; validation reads COCO val2014."""
    from vlcli.data.layout import layout_resolver

    sets = {"val2014"} if not train else {s for n in split_names(split)
                                          for s in SPLIT_IMAGE_SETS.get(n, tuple(IMAGE_FOLDERS))}
    resolver = layout_resolver(settings)
    out: dict[str, DataPath] = {}
    for image_set in sorted(sets):
        folder = _GRID_FOLDER[image_set]
        if folder not in out:
            out[folder] = resolver.clip(f"{folder}.clip", (IMAGE_FOLDERS[image_set],))
    return out


def _check_feature_type(settings: Any) -> None:
    feature_type = settings.get("feature_type")
    if feature_type != "butd" and not _raw(settings) and not _grid(settings):
        raise PretrainFeatureError(
            f"--feature_type {feature_type}: pretraining reads BUTD region features (their detector labels make "
            "the grounding objectives), CLIP grid features or raw images (both without grounding)"
        )


def _butd(settings: Any, name: str, hint: str) -> DataPath:
    return DataPath(name, data_path(settings, name), "butd", (hint,))


def _needs_vocab(settings: Any, losses: list[str]) -> bool:
    return bool(set(losses) & set(obj.GROUNDING)) or bool(settings.get("oscar_tags"))


def _load_vocab(settings: Any) -> RegionVocab:
    objects_path = data_path(settings, "vg.objects_vocab")
    attributes_path = data_path(settings, "vg.attributes_vocab")
    return RegionVocab(
        read_vocab(objects_path, "VG object vocabulary"),
        read_vocab(attributes_path, "VG attribute vocabulary"),
        objects_path,
        attributes_path,
    )


def _itm_pool(examples: list[PretrainExample], how: Expansion) -> list[tuple[str, str]]:
    """``(image id, caption)`` of every kept caption of the ITM sources, each once.

    The original drew negatives from all expanded examples of those sources (a caption appeared once per
    objective using it); here each caption counts once.
    """
    pool: dict[tuple[str, str], None] = {}
    for ex in examples:
        if ex.source in how.itm_sources and ex.text:
            pool.setdefault((ex.image_ids[0], ex.text), None)
    return list(pool)
