"""What every task shares: the example record, the torch dataset, collate, prediction and submission files.

A task module (``vqa``, ``gqa``, ``nlvr``, ``caption``) reads the original annotation files into
:class:`Example` records; :class:`TaskDataset` turns them into token ids plus visual features on every
read (re-sampling the target where a record has several), and :meth:`Task.collate` pads them into a
batch whose keys match :class:`vlcli.model.vl.VLModel`'s arguments (:meth:`Task.model_inputs`).
Per-task prompts, batch sizes and lengths come from ``settings.derived.per_task[task]``
(:func:`vlcli.config.derive.derive`); they are never recomputed here.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlcli.atomic import atomic_write
from vlcli.errors import VlcliError

if TYPE_CHECKING:
    from vlcli.config.settings import Settings, TaskRun
    from vlcli.data.features import FeatureStore
    from vlcli.data.layout import DataPath
    from vlcli.model.tokenizer import VLTokenizer
    from vlcli.model.vl import VLModel

IGNORE_INDEX = -100
ROLES = ("train", "valid", "test", "submit")


class TaskDataError(VlcliError):
    """An annotation file is missing, unreadable or not in the task's original format."""


class SubmissionError(VlcliError):
    """Predictions do not cover the split exactly once, or the submission cannot be written."""


class UnknownTaskError(VlcliError):
    """A task name no module implements."""


@dataclass
class Example:
    """One model input built from an annotation record.

    ``targets`` are the candidate target texts of a training example; one is drawn per read with
    probability ``probs`` (uniform when None) and carries the loss weight ``weights[i]`` (1.0 when None).
    ``image_ids`` has one id (two for NLVR2, in img0, img1 order).
    """

    id: Hashable
    image_ids: tuple[str, ...]
    text: str
    targets: list[str] = field(default_factory=list)
    probs: list[float] | None = None
    weights: list[float] | None = None


# ------------------------------------------------------------------------------- file helpers


def read_json(path: Path, what: str) -> Any:
    """Parse the JSON annotation file ``path``; TaskDataError naming the file and the fix otherwise."""
    if not path.is_file():
        raise TaskDataError(f"{path}: {what} not found; put it there or set --data_root to the folder holding it")
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskDataError(f"{path}: cannot read {what} ({exc}); restore the original file") from exc


def require(record: Mapping[str, Any], keys: Sequence[str], path: Path, index: int) -> None:
    """TaskDataError unless ``record`` (entry ``index`` of ``path``) is a dict holding every key."""
    if not isinstance(record, Mapping):
        raise TaskDataError(f"{path}: entry {index} is a {type(record).__name__}, not an object; use the original file")
    missing = [k for k in keys if k not in record]
    if missing:
        raise TaskDataError(
            f"{path}: entry {index} has no {', '.join(repr(k) for k in missing)}; use the original annotation format"
        )


def select_topk(items: list[Any], topk: int | float | None, seed: int) -> list[Any]:
    """``train_topk`` / ``valid_topk``: int N = the first N, float in (0, 1] = a seeded fraction, <= 0 = all.

    The fraction keeps ``int(topk * len)`` items chosen by ``random.Random(seed)`` in file order.
    """
    if topk is None or topk <= 0:
        return items
    if isinstance(topk, float):
        if topk >= 1.0:
            return items
        keep = sorted(random.Random(seed).sample(range(len(items)), int(topk * len(items))))
        return [items[i] for i in keep]
    return items[: int(topk)]


def split_names(split: str) -> list[str]:
    """``"train,valid"`` -> ``["train", "valid"]`` (the original's comma-separated split lists)."""
    names = [s.strip() for s in split.split(",") if s.strip()]
    if not names:
        raise TaskDataError(f"split {split!r}: no split name; give e.g. --train train")
    return names


# ------------------------------------------------------------------------------------ dataset


class TaskDataset(Dataset):
    """Examples of one task split as model inputs; items are dicts collated by :meth:`Task.collate`.

    ``rng`` draws the target of multi-target training examples on every read (VQA answers ∝ score);
    :meth:`reseed` gives DataLoader workers their own stream (see :func:`seed_worker`).
    """

    def __init__(
        self,
        task: Task,
        split: str,
        examples: list[Example],
        tokenizer: VLTokenizer,
        store: FeatureStore,
        *,
        train: bool,
        max_text_length: int | None,
        target_max_length: int | None,
        rng: np.random.Generator,
        references: dict[Hashable, Any] | None = None,
    ):
        self.task = task
        self.split = split
        self.examples = examples
        self.tokenizer = tokenizer
        self.store = store
        self.train = train
        self.max_text_length = max_text_length
        self.target_max_length = target_max_length
        self.rng = rng
        self.references: dict[Hashable, Any] = references if references is not None else {}
        self._input_ids = EncodedInputs(len(examples), max_text_length)
        self._target_ids = EncodedTexts(target_max_length)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def ids(self) -> list[Hashable]:
        """Example ids in dataset order (question ids, NLVR2 identifiers, COCO image ids)."""
        return [ex.id for ex in self.examples]

    def reseed(self, seed: int) -> None:
        """Restart the target-sampling stream from ``seed``."""
        self.rng = np.random.default_rng(seed)

    def redraw(self, key: Sequence[int]) -> None:
        """Seed this batch's draws from its key (:class:`vlcli.data.sampling.KeyedBatch`): the target-sampling
        stream and, in a DataLoader worker, torch's generator (raw-image augmentation)."""
        self.rng = np.random.default_rng(list(key))
        if torch.utils.data.get_worker_info() is not None:  # never the training process's own generator
            torch.manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0]))

    def choose_target(self, ex: Example) -> tuple[str, float]:
        """The target text of this read and its loss weight ("" with weight 0 when there is none)."""
        if not ex.targets:
            return "", 0.0
        i = 0
        if len(ex.targets) > 1:
            p = None if ex.probs is None else np.asarray(ex.probs, dtype=np.float64)
            i = int(self.rng.choice(len(ex.targets), p=p))
        weight = 1.0 if ex.weights is None else float(ex.weights[i])
        return ex.targets[i], weight

    def visual(self, ex: Example) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, F) and boxes (N, 4), or (I, N, F) / (I, N, 4) for several images."""
        pairs = [self.store.get(image_id) for image_id in ex.image_ids]
        if len(pairs) == 1:
            return pairs[0]
        n = max(f.shape[0] for f, _ in pairs)
        if any(f.shape[0] != n for f, _ in pairs):
            feats, boxes, _ = pad_visual([f for f, _ in pairs], [b for _, b in pairs])
            return feats, boxes
        return np.stack([f for f, _ in pairs]), np.stack([b for _, b in pairs])

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        feats, boxes = self.visual(ex)
        item: dict[str, Any] = {
            "id": ex.id,
            "input_ids": self.tokenizer.encode(ex.text, self.max_text_length),
            "feats": feats,
            "boxes": boxes,
            "target": None,
            "target_ids": None,
            "weight": 1.0,
        }
        if self.train:
            target, weight = self.choose_target(ex)
            item["target"] = target
            item["target_ids"] = self.tokenizer.encode(target, self.target_max_length)
            item["weight"] = weight
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """A whole batch at once (the DataLoader calls this instead of ``__getitem__`` per example): the
        features of every image read in one pass into one float16 buffer, the texts tokenised in one call.
        The items equal ``[self[i] for i in indices]`` (features in their stored dtype); examples with several
        images, stores without a batch reader and datasets that build their own items take that path."""
        key = getattr(indices, "draw_key", None)
        if key is not None:
            self.redraw(key)
        examples = [self.examples[i] for i in indices]
        read = getattr(self.store, "read_batch", None)
        own_items = type(self).__getitem__ is not TaskDataset.__getitem__
        if read is None or own_items or any(len(ex.image_ids) != 1 for ex in examples):
            return [self[i] for i in indices]
        visual = read([ex.image_ids[0] for ex in examples])
        if visual is None:
            return [self[i] for i in indices]
        feats, boxes = visual
        inputs = self._input_ids.get(self.tokenizer, indices, examples)
        items = PreparedBatch(
            {"id": ex.id, "input_ids": ids, "feats": feats[k], "boxes": boxes[k], "target": None, "target_ids": None,
             "weight": 1.0} for k, (ex, ids) in enumerate(zip(examples, inputs, strict=True)))
        items.feats, items.boxes = feats, boxes
        if self.train:
            chosen = [self.choose_target(ex) for ex in examples]  # the same draws, in the same order
            targets = self._target_ids.get(self.tokenizer, [t for t, _ in chosen])
            for item, (target, weight), ids in zip(items, chosen, targets, strict=True):
                item.update(target=target, target_ids=ids, weight=weight)
        return items

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``collate_fn`` for a DataLoader over this dataset."""
        return self.task.collate(items, self.tokenizer.pad_token_id)


class EncodedInputs:
    """The input ids of each example of a dataset, tokenised on the example's first batched read (one tokenizer
    call for a batch's new examples) and kept as a row of an examples x ``max_length`` int32 matrix (its pages
    are only allocated once written), so epochs after the first skip the tokenizer. Without a ``max_length``
    nothing is kept."""

    def __init__(self, n: int, max_length: int | None):
        self.max_length = max_length
        self.lengths = np.full(n, -1, np.int32) if max_length else None
        self.rows: np.ndarray | None = None

    def get(self, tokenizer: VLTokenizer, indices: Sequence[int], examples: Sequence[Example]) -> list[list[int]]:
        if self.lengths is None:
            return tokenizer.encode_many([ex.text for ex in examples], self.max_length)
        if self.rows is None:
            self.rows = np.zeros((len(self.lengths), self.max_length), np.int32)
        new = [k for k, i in enumerate(indices) if self.lengths[i] < 0]
        if new:
            for k, ids in zip(new, tokenizer.encode_many([examples[k].text for k in new], self.max_length), strict=True):
                self.rows[indices[k], :len(ids)] = ids
                self.lengths[indices[k]] = len(ids)
        return [self.rows[i, :self.lengths[i]].tolist() for i in indices]


class EncodedTexts:
    """Token ids of texts (training targets: VQA / GQA answers repeat), tokenised once per distinct text; at
    most ``limit`` texts are kept (captions hardly repeat)."""

    def __init__(self, max_length: int | None, limit: int = 1 << 16):
        self.max_length, self.limit = max_length, limit
        self.memo: dict[str, tuple[int, ...]] = {}

    def get(self, tokenizer: VLTokenizer, texts: Sequence[str]) -> list[list[int]]:
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if not new:
            return [list(self.memo[t]) for t in texts]
        fresh = dict(zip(new, tokenizer.encode_many(new, self.max_length), strict=True))
        out = [list(self.memo[t] if t in self.memo else fresh[t]) for t in texts]
        for t, ids in fresh.items():
            if len(self.memo) >= self.limit:
                break
            self.memo[t] = tuple(ids)
        return out


class PreparedBatch(list):
    """Items of :meth:`TaskDataset.__getitems__` plus their features and boxes as one (B, N, F) / (B, N, 4)
    array each, so collate stacks nothing."""

    feats: np.ndarray
    boxes: np.ndarray


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's dataset copy its own sampling stream."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, TaskDataset):
        info.dataset.reseed(int(info.seed % 2**32) + worker_id)


def pad_visual(
    feats: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack arrays whose second-to-last axis (tokens) differs, zero-padded; also return the token mask."""
    n = max(f.shape[-2] for f in feats)
    lead = feats[0].shape[:-2]
    out_f = np.zeros((len(feats), *lead, n, feats[0].shape[-1]), np.float32)
    out_b = np.zeros((len(feats), *lead, n, 4), np.float32)
    mask = np.zeros((len(feats), *lead, n), np.int64)
    for i, (f, b) in enumerate(zip(feats, boxes, strict=True)):
        out_f[i, ..., : f.shape[-2], :] = f
        out_b[i, ..., : b.shape[-2], :] = b
        mask[i, ..., : f.shape[-2]] = 1
    return out_f, out_b, mask


def pad_ids(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """(B, max len) LongTensor of ``seqs`` right-padded with ``value``."""
    width = max((len(s) for s in seqs), default=0)
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------- task


class Task:
    """One task: how to read its splits, batch them, predict, and write the leaderboard file.

    Subclasses set the class attributes and implement :meth:`load_examples`, :meth:`write_rows` and,
    where prediction is not free generation, :meth:`predict`.
    """

    name: str = ""
    # Default split of each role (the original's multitask splits, spec data-and-eval §7).
    splits: dict[str, str] = {}
    # "example": per-example mean token loss (times the weight); "token": mean over all target tokens.
    loss_reduction: str = "example"
    # Whether the sampled target's score multiplies the example loss (VQA).
    weighted: bool = False
    # Whether --num_beams applies to this task's generation (rule R41: captioning only).
    uses_beams: bool = False
    # Default file name of the leaderboard file (spec data-and-eval §5).
    submission_file: str = "submit.json"
    # Region features whose boxes are named by position (<vis_extra_id_k>): never pooled or subsampled.
    region_features: bool = False
    # The metric that selects BEST (multitask: averaged over tasks, see vlcli.train.scoring).
    primary_metric: str = "accuracy"
    # The dataset class build_dataset instantiates (a task with several inputs per example subclasses it).
    dataset_class: type[TaskDataset] = TaskDataset
    # Logical data path (vlcli.data.layout.DEFAULT_PATHS) of the file a split's examples are read from.
    examples_file: str = ""

    # ------------------------------------------------------------------------------ features

    def required_paths(self, settings: Settings, split: str) -> list[DataPath]:
        """Files and folders ``split`` reads, for :func:`vlcli.data.preflight.preflight` (vqa, gqa, nlvr and
        caption are described by :mod:`vlcli.data.layout`; other tasks override this)."""
        from vlcli.data.layout import layout_for

        return layout_for(settings, self.name, split).paths()

    def open_store(self, settings: Settings, split: str, *, train: bool = False) -> FeatureStore:
        """The visual inputs of ``split`` (:func:`vlcli.data.layout.open_features`); ``train`` selects
        the training transform of raw images."""
        from vlcli.data.layout import open_features

        return open_features(settings, self.name, split, train=train)

    # ----------------------------------------------------------------------------- datasets

    def run(self, settings: Settings) -> TaskRun:
        """This task's derived values (batch sizes, lengths, prompt)."""
        derived = settings.derived
        if derived is None or self.name not in derived.per_task:
            raise UnknownTaskError(
                f"task {self.name!r} is not part of this run's tasks; add it with --tasks or run `finetune {self.name}`"
            )
        return derived.per_task[self.name]

    def input_length(self, settings: Settings) -> int | None:
        """Maximum input length in tokens (None = no truncation)."""
        return self.run(settings).max_text_length

    def target_length(self, settings: Settings) -> int | None:
        """Maximum target length in tokens (None = no truncation)."""
        return None

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        """Examples of one split name (in file order) and the references for evaluation, by id."""
        raise NotImplementedError

    def role_of(self, split: str, train: bool) -> str:
        """``train`` / ``valid`` / ``test``: which topk setting applies to ``split``."""
        if train:
            return "train"
        return "valid" if split == self.splits.get("valid") else "test"

    def split_files(self, settings: Settings, split: str) -> list[Path]:
        """The file(s) the examples of ``split`` come from (for messages about the split): ``examples_file``
        of each split name, else every annotation file the split reads."""
        if self.examples_file:
            return list(dict.fromkeys(self.data_path(settings, self.examples_file, n) for n in split_names(split)))
        return [p.path for name in split_names(split) for p in self.required_paths(settings, name)
                if p.kind == "annotation"]

    def select(self, settings: Settings, split: str, role: str, items: list[Any]) -> list[Any]:
        """``items`` of ``split`` (examples; pretraining: image records) cut by the role's ``train_topk`` /
        ``valid_topk``. The one check that a split is not empty: a TaskDataError naming the split, its
        file(s) and, when the option emptied it, the option; raised before any model is built."""
        topk = {"train": settings.get("train_topk"), "valid": settings.get("valid_topk")}.get(role)
        selected = select_topk(items, topk, int(settings.get("seed")))
        if selected:
            return selected
        try:
            files = [str(p) for p in self.split_files(settings, split)]
        except VlcliError:  # the message must not fail; the split name is enough then
            files = []
        where = f" ({', '.join(files)})" if files else ""
        if not items:
            raise TaskDataError(f"{self.name} {role} split {split!r}{where} has no examples; "
                                "check the file (or choose another split)")
        option = f"--{role}_topk"
        raise TaskDataError(f"{self.name} {role} split {split!r}{where}: {option} {topk} selects none of its "
                            f"{len(items)} examples; use a larger {option} (or -1 for all)")

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
    ) -> TaskDataset:
        """The dataset of ``split`` (comma-separated names are concatenated in order).

        ``train`` draws targets on every read and returns labels. ``role`` picks the subset option:
        ``train`` -> ``train_topk``, ``valid`` -> ``valid_topk``, ``test``/``submit`` -> all (a
        leaderboard file must cover the whole split); default from ``train`` and the task's splits.
        ``rng`` drives target sampling (default: seeded with ``--seed``).
        """
        role = role or self.role_of(split, train)
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}; got {role!r}")
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        for name in split_names(split):
            exs, refs = self.load_examples(settings, name, train=train)
            examples.extend(exs)
            references.update(refs)
        selected = self.select(settings, split, role, examples)
        if not train and len(selected) < len(examples):
            kept = {ex.id for ex in selected}
            references = {k: v for k, v in references.items() if k in kept}
        examples = selected
        return self.dataset_class(
            self,
            split,
            examples,
            tokenizer,
            store,
            train=train,
            max_text_length=self.input_length(settings),
            target_max_length=self.target_length(settings),
            rng=rng if rng is not None else np.random.default_rng(settings.train.seed),
            references=references,
        )

    def data_path(self, settings: Settings, name: str, split: str = "") -> Path:
        """The file of logical ``name`` (:data:`vlcli.data.layout.DEFAULT_PATHS`) for ``split``: the one place
        every task file is resolved, so ``--data_paths`` moves what the loaders read, not only the preflight."""
        from vlcli.data.layout import data_path

        return data_path(settings, name, split)

    def input_text(self, settings: Settings, sent: str) -> str:
        """``{prompt}{sent}{post_prompt}`` with this task's prompt."""
        return f"{self.run(settings).prompt}{sent}{settings.dataset.post_prompt}"

    # ------------------------------------------------------------------------------ batches

    def collate(self, items: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """Pad text to the batch maximum; stack visual inputs; labels padded with -100.

        Keys: ``task``, ``ids``, ``input_ids``, ``attention_mask``, ``vis_feats`` ((B, N, F) or
        (B, I, N, F)), ``vis_pos``, ``vis_attention_mask`` (only when token counts differ),
        and for training items ``labels``, ``targets`` and (weighted tasks) ``loss_weights``.
        """
        if not items:
            raise ValueError("collate needs at least one item")
        input_ids = pad_ids([it["input_ids"] for it in items], pad_token_id)
        lengths = torch.tensor([len(it["input_ids"]) for it in items])
        batch: dict[str, Any] = {
            "task": self.name,
            "ids": [it["id"] for it in items],
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
        }
        if isinstance(items, PreparedBatch):  # one buffer already (float16 stays float16 until the device)
            batch["vis_feats"], batch["vis_pos"] = torch.from_numpy(items.feats), torch.from_numpy(items.boxes)
            return self._labels(batch, items)
        feats = [np.asarray(it["feats"], np.float32) for it in items]
        boxes = [np.asarray(it["boxes"], np.float32) for it in items]
        if len({f.shape for f in feats}) == 1:
            batch["vis_feats"] = torch.from_numpy(np.stack(feats))
            batch["vis_pos"] = torch.from_numpy(np.stack(boxes))
        else:
            f, b, mask = pad_visual(feats, boxes)
            batch["vis_feats"], batch["vis_pos"] = torch.from_numpy(f), torch.from_numpy(b)
            batch["vis_attention_mask"] = torch.from_numpy(mask)
        return self._labels(batch, items)

    def _labels(self, batch: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
        """Training items' ``labels`` (padded with -100), ``targets`` and (weighted tasks) ``loss_weights``."""
        if all(it["target_ids"] is not None for it in items):
            batch["labels"] = pad_ids([it["target_ids"] for it in items], IGNORE_INDEX)
            batch["targets"] = [it["target"] for it in items]
            if self.weighted:
                batch["loss_weights"] = torch.tensor([it["weight"] for it in items], dtype=torch.float32)
        return batch

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of ``VLModel.forward`` for a training batch."""
        out = {k: batch[k] for k in ("input_ids", "attention_mask", "vis_feats", "vis_pos") if k in batch}
        for key in ("labels", "loss_weights", "vis_attention_mask"):
            if key in batch:
                out[key] = batch[key]
        out["task"] = self.name
        out["loss_reduction"] = self.loss_reduction
        if self.region_features:
            out["reduce_visual"] = False
        return out

    def train_accuracy(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[int, int]:
        """``(correct, counted)`` of a training batch for ``--log_train_accuracy``: examples whose
        teacher-forced argmax equals the whole target."""
        labels = batch["labels"]
        valid = labels.ne(IGNORE_INDEX)
        hit = (logits.detach().argmax(-1).eq(labels) | ~valid).all(dim=1) & valid.any(dim=1)
        return int(hit.sum()), int(valid.any(dim=1).sum())

    # --------------------------------------------------------------------------- prediction

    def num_beams(self, settings: Settings) -> int:
        """Beam size of this task's generation (``--num_beams`` for captioning, greedy otherwise; R41)."""
        return settings.inference.num_beams if self.uses_beams else 1

    def predict(
        self, model: VLModel, batch: Mapping[str, Any], settings: Settings, tokenizer: VLTokenizer
    ) -> dict[Hashable, str]:
        """``{id: answer}`` by free generation up to the task's ``gen_max_length``, special tokens skipped."""
        visual = {"vis_attention_mask": batch["vis_attention_mask"]} if "vis_attention_mask" in batch else {}
        ids = model.generate(
            batch["input_ids"],
            batch["attention_mask"],
            batch["vis_feats"],
            batch["vis_pos"],
            task=self.name,
            num_beams=self.num_beams(settings),
            max_length=self.run(settings).gen_max_length,
            **visual,
        )
        return dict(zip(batch["ids"], tokenizer.decode_many(ids), strict=True))

    # ------------------------------------------------------------------------------ metrics

    def score(self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
              settings: Settings) -> dict[str, Any]:
        """Metrics of ``predictions`` against ``references``, both restricted to the labelled ids
        (:func:`vlcli.train.scoring.score` does that and dispatches here)."""
        raise NotImplementedError(f"task {self.name!r} has no evaluator")

    def labelled(self, reference: Any) -> bool:
        """Whether ``reference`` can score a prediction (test / submission splits have none)."""
        return reference is not None

    # --------------------------------------------------------------------------- submission

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """Write ``(id, prediction)`` rows, already checked and in split order, to ``path``."""
        raise NotImplementedError

    def write_submission(
        self,
        predictions: Mapping[Hashable, Any] | Iterable[tuple[Hashable, Any]],
        split_examples: TaskDataset | Iterable[Hashable],
        path: str | Path,
    ) -> int:
        """Check that every id of the split is predicted exactly once, then write the official format.

        ``predictions``: ``{id: answer}`` or ``(id, answer)`` pairs (e.g. gathered from several ranks);
        ``split_examples``: the split's dataset or its ids. The file is written atomically (temporary
        file + ``os.replace``) in split order; returns the number of rows.
        """
        pairs = list(predictions.items()) if isinstance(predictions, Mapping) else list(predictions)
        split_ids = split_examples.ids if isinstance(split_examples, TaskDataset) else list(split_examples)
        path = Path(path)
        check_coverage(pairs, split_ids, path, self.name)
        by_id = dict(pairs)
        rows = [(i, by_id[i]) for i in split_ids]
        atomic_write(path, lambda tmp: self.write_rows(rows, tmp))
        return len(rows)


def check_coverage(pairs: list[tuple[Hashable, Any]], split_ids: list[Hashable], path: Path, task: str) -> None:
    """SubmissionError unless each split id has exactly one prediction and no other id has one."""
    wanted = set(split_ids)
    counts = Counter(i for i, _ in pairs)
    missing = [i for i in split_ids if i not in counts]
    extra = [i for i in counts if i not in wanted]
    twice = [i for i, n in counts.items() if n > 1]
    if not (missing or extra or twice):
        return
    parts = []
    for label, ids in (("missing", missing), ("not in the split", extra), ("predicted more than once", twice)):
        if ids:
            shown = ", ".join(repr(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
            parts.append(f"{len(ids)} {label} ({shown})")
    raise SubmissionError(
        f"{path}: not written: predictions for {task} do not cover the split's {len(wanted)} ids exactly once: "
        f"{'; '.join(parts)}; predict the whole split (without valid_topk) and pass its ids"
    )


def write_json_rows(path: Path, objects: list[dict[str, Any]]) -> None:
    """A JSON list, UTF-8, one object per line (any valid JSON is accepted by the servers)."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write("[\n" + ",\n".join(json.dumps(o, ensure_ascii=False) for o in objects) + "\n]\n")
