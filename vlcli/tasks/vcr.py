"""VCR (spec data-and-eval §1.6, §4.7, §5.1): 4-way answer and rationale choice, scored as true / false.

Annotations: ``VCR/{split}.jsonl`` (logical name ``vcr.annotations``), one question per line; its token
lists mix words and lists of object indices. Visual input: exactly 36 regions per image, the ground-truth
boxes of ``vcr.boxes.gt`` (first ≤ 36) followed by detections from ``vcr.boxes.detected``; the object names
that replace index lists in the text come from the GT file's ``captions``.

Each question becomes 8 encoder inputs: 4 × ``vcr qa question: {q} answer: {a_i}`` and 4 ×
``vcr qar question: {q} answer: {a_gold} rationale: {r_j}``; without labels (and on the submission split)
the QA→R inputs are built for every answer (16). Targets are the first token of ``true`` / ``false``;
the loss is the QA loss plus the QA→R loss. A candidate's score is the softmax over (``true``, ``false``)
at the first answer position; the chosen candidate is the argmax over the four.

Deviations from the original (``vcr_data.py`` / ``vcr_model.py``), each marked in the code:
``--prompt`` is ignored (the text prefixes are hard-coded there too); ``unisex_names`` is not offered;
``train_topk`` / ``valid_topk`` work (the original sliced with a float, §9.12); a record is unlabelled
when it lacks ``answer_label`` (the original tested for "test" in ``annot_id``).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vlcli.data.features import BUTDStore, FeatureError, FeatureStore
from vlcli.errors import VlcliError
from vlcli.metrics.vcr import N_CHOICES, argmax
from vlcli.model.tokenizer import vis_token
from vlcli.tasks.base import (
    IGNORE_INDEX,
    Example,
    SubmissionError,
    Task,
    TaskDataError,
    TaskDataset,
    pad_ids,
    split_names,
)

if TYPE_CHECKING:
    from vlcli.config.settings import Settings
    from vlcli.data.layout import DataPath
    from vlcli.model.tokenizer import VLTokenizer
    from vlcli.model.vl import VLModel

N_BOXES = 36  # fixed by the original (it ignores --n_boxes for VCR)
TRUE, FALSE = "true", "false"
REQUIRED = ("annot_id", "img_id", "question", "answer_choices", "rationale_choices")
# The original's punctuation clean-up after joining tokens with spaces, applied in this order.
PUNCTUATION = (" ?", " '", " !", " .", " ,")
CSV_HEADER = (
    ["annot_id"]
    + [f"answer_{i}" for i in range(N_CHOICES)]
    + [f"rationale_conditioned_on_a{i}_{j}" for i in range(N_CHOICES) for j in range(N_CHOICES)]
)


# ----------------------------------------------------------------------------------------- text


class ObjectIndexError(ValueError):
    """An index list names an object the image's GT box file does not have."""

    def __init__(self, index: Any, n_objects: int):
        super().__init__(index, n_objects)
        self.index, self.n_objects = index, n_objects


def flatten(tokens: Sequence[Any], names: Sequence[str]) -> str:
    """One VCR token list as text: an index list ``[i, j]`` becomes ``"name_i <vis_extra_id_i> and name_j
    <vis_extra_id_j>"``; tokens are joined with spaces, then the spaces before ``? ' ! . ,`` are removed."""
    words: list[str] = []
    for token in tokens:
        if isinstance(token, list):
            for k, index in enumerate(token):
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
                    raise ObjectIndexError(index, len(names))
                if k:
                    words.append("and")
                words += [names[index], vis_token(index)]
        else:
            words.append(str(token))
    text = " ".join(words)
    for mark in PUNCTUATION:
        text = text.replace(mark, mark[1])
    return " ".join(text.split())


def qa_texts(question: str, answers: Sequence[str]) -> list[str]:
    """The 4 Q→A inputs."""
    return [f"vcr qa question: {question} answer: {a}" for a in answers]


def qar_texts(question: str, answer: str, rationales: Sequence[str]) -> list[str]:
    """The 4 QA→R inputs for one answer."""
    return [f"vcr qar question: {question} answer: {answer} rationale: {r}" for r in rationales]


# ---------------------------------------------------------------------------------------- data


@dataclass
class VCRExample(Example):
    """One question with its token lists; ``text`` is unused (the 8 or 20 inputs are built per read, since
    the object names live in the GT feature file)."""

    question: list[Any] = field(default_factory=list)
    answers: list[list[Any]] = field(default_factory=list)
    rationales: list[list[Any]] = field(default_factory=list)
    answer_label: int | None = None
    rationale_label: int | None = None
    all_rationales: bool = False  # QA→R inputs for every answer (16) instead of the gold one (4)
    source: str = ""  # "file:line" for error messages


class VCRStore(FeatureStore):
    """The 36 regions of a VCR image: GT boxes first (at most 36), detections filling up to 36.

    ``parts`` are (GT store, detection store) pairs, one per split name; an image is read from the first
    pair whose GT file holds it. Boxes are normalised by each file's own ``img_w`` / ``img_h`` (the original
    divides both by the detection file's size; the two files describe the same image).
    """

    def __init__(self, parts: Sequence[tuple[BUTDStore, BUTDStore]], n_boxes: int = N_BOXES):
        if not parts:
            raise FeatureError("a VCR feature store needs at least one (GT, detection) file pair")
        self.parts = list(parts)
        self.n_boxes = n_boxes

    @property
    def feat_dim(self) -> int:  # type: ignore[override]
        return self.parts[0][0].feat_dim

    def _pair(self, image_id: str) -> tuple[BUTDStore, BUTDStore]:
        for gt, detected in self.parts:
            if image_id in gt:
                return gt, detected
        files = ", ".join(str(gt.path) for gt, _ in self.parts)
        raise FeatureError(
            f"no GT boxes for VCR image {image_id!r} in {files}; fix: use the split's *_boxes_GT.h5"
        )

    def visual(self, image_id: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Features (36, F), normalised boxes (36, 4) and the names of all GT objects (``captions``)."""
        gt, detected = self._pair(image_id)
        gt_feats, gt_boxes = gt.get(image_id)
        n_gt = min(len(gt_feats), self.n_boxes)
        need = self.n_boxes - n_gt
        det_feats, det_boxes = detected.get(image_id)
        if len(det_feats) < need:
            raise FeatureError(
                f"{detected.path}: image {image_id!r} has {len(det_feats)} detected boxes but {need} are "
                f"needed to fill its {n_gt} GT boxes up to {self.n_boxes}; fix: use the released "
                f"{self.n_boxes}-box detections"
            )
        feats = np.concatenate([gt_feats[:n_gt], det_feats[:need]])
        boxes = np.concatenate([gt_boxes[:n_gt], det_boxes[:need]])
        names = [str(n) for n in gt.extras(image_id, ["captions"])["captions"]]
        return feats, boxes, names

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        feats, boxes, _ = self.visual(image_id)
        return feats, boxes

    def __contains__(self, image_id: object) -> bool:
        return any(image_id in gt and image_id in det for gt, det in self.parts)

    def ids(self) -> list[str]:
        return [i for gt, det in self.parts for i in gt.ids() if i in det]


def first_token_ids(tokenizer: VLTokenizer, words: Sequence[str]) -> list[int]:
    """The first target token of each word as a dataset encodes it (BART's leading ``<s>`` skipped)."""
    out = []
    bos = getattr(tokenizer.hf, "bos_token_id", None)
    for word in words:
        ids = tokenizer.encode(word)
        if bos is not None and len(ids) > 1 and ids[0] == bos:
            ids = ids[1:]
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise VlcliError(
            "the tokenizer encodes 'true' and 'false' with the same first token; "
            "VCR needs the backbone's own tokenizer"
        )
    return out


def answer_prefix(tokenizer: VLTokenizer) -> list[int]:
    """Decoder input before the answer token: T5 ``[pad]``, BART ``[</s>, <s>]``.

    The same ids as :meth:`VLModel.answer_prefix` reads from the backbone config (T5 starts decoding with
    its pad id, BART with ``</s>`` followed by the ``<s>`` its targets begin with); the dataset has only the
    tokenizer, so it derives them from there. The original trains BART on ``<s> true`` and takes the loss at
    the second position only; the ``<s>`` position gets label -100 here for the same effect.
    """
    hf = tokenizer.hf
    if tokenizer.family == "bart":
        return [int(hf.eos_token_id), int(hf.bos_token_id)]
    return [int(hf.pad_token_id)]


class VCRDataset(TaskDataset):
    """Items hold the 8 (or 20) encoded inputs of one question, its 36 regions and, for training, targets."""

    @cached_property
    def candidate_ids(self) -> tuple[int, int]:
        """Ids of ``true`` and ``false`` (the first token of each target)."""
        true_id, false_id = first_token_ids(self.tokenizer, (TRUE, FALSE))
        return true_id, false_id

    def _texts(self, ex: VCRExample, names: Sequence[str]) -> tuple[list[str], list[str]]:
        try:
            question = flatten(ex.question, names)
            answers = [flatten(a, names) for a in ex.answers]
            rationales = [flatten(r, names) for r in ex.rationales]
        except ObjectIndexError as err:
            raise TaskDataError(
                f"{ex.source}: object index {err.index!r}, but image {ex.image_ids[0]!r} has "
                f"{err.n_objects} GT objects (captions of vcr.boxes.gt); use the GT box file of this split"
            ) from None
        if ex.all_rationales:
            qar = [t for a in answers for t in qar_texts(question, a, rationales)]
        else:
            qar = qar_texts(question, answers[ex.answer_label], rationales)  # type: ignore[index]
        return qa_texts(question, answers), qar

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex: VCRExample = self.examples[index]  # type: ignore[assignment]
        if not isinstance(self.store, VCRStore):
            raise TypeError(
                "VCR reads its regions through VCRTask.open_store (a VCRStore of GT + detected boxes)"
            )
        feats, boxes, names = self.store.visual(ex.image_ids[0])
        qa, qar = self._texts(ex, names)
        tok = self.tokenizer
        item: dict[str, Any] = {
            "id": ex.id,
            "input_ids": [tok.encode(t, self.max_text_length) for t in qa + qar],
            "n_qa": len(qa),
            "feats": feats,
            "boxes": boxes,
            "labels": None,
        }
        if self.train:
            true_id, false_id = self.candidate_ids
            prefix = answer_prefix(tok)
            rows = [true_id if i == ex.answer_label else false_id for i in range(N_CHOICES)]
            rows += [true_id if j == ex.rationale_label else false_id for j in range(N_CHOICES)]
            # Only the answer token counts: the original keeps the first target token (BART: <s> + it).
            item["labels"] = [[IGNORE_INDEX] * (len(prefix) - 1) + [r] for r in rows]
            item["decoder_input_ids"] = [prefix] * len(rows)
            item["candidate_ids"] = (true_id, false_id)
            item["answer_label"], item["rationale_label"] = ex.answer_label, ex.rationale_label
        return item


# ---------------------------------------------------------------------------------------- task


class VCRTask(Task):
    """Visual Commonsense Reasoning: Q→A and QA→R as true / false scoring of each candidate."""

    name = "vcr"
    examples_file = "vcr.annotations"
    splits = {"train": "train", "valid": "val", "test": "test", "submit": "test"}
    submission_file = "test_submit.csv"
    primary_metric = "q_ar"  # the original's BEST criterion
    region_features = True
    dataset_class = VCRDataset

    # ------------------------------------------------------------------------------ files

    def open_store(self, settings: Settings, split: str, *, train: bool = False) -> FeatureStore:
        """GT + detected BUTD files of each split name (``vcr.boxes.gt``, ``vcr.boxes.detected``)."""
        from vlcli.data.layout import data_path

        dim = settings.derived.feat_dim
        parts = []
        for name in split_names(split):
            pair = []
            for logical in ("vcr.boxes.gt", "vcr.boxes.detected"):
                hint = f"put the released VCR features of split {name} there or set data_paths {logical}"
                pair.append(BUTDStore(data_path(settings, logical, name), feat_dim=dim, hint=hint))
            parts.append((pair[0], pair[1]))
        return VCRStore(parts)

    def required_paths(self, settings: Settings, split: str) -> list[DataPath]:
        """The files ``split`` reads (annotations, GT and detected boxes of each split name), for a preflight
        check before any model is built (:mod:`vlcli.data.preflight` lists the missing ones)."""
        from vlcli.data.layout import DataPath, data_path

        bundle = (
            "download the released VL-Adapter VCR annotations and features and unpack them under data_root"
        )
        out = []
        for name in split_names(split):
            out.append(
                DataPath(
                    "vcr.annotations", data_path(settings, "vcr.annotations", name), "annotation", (bundle,)
                )
            )
            for logical in ("vcr.boxes.gt", "vcr.boxes.detected"):
                out.append(DataPath(logical, data_path(settings, logical, name), "butd", (bundle,)))
        return out

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        """One example per line of ``VCR/{split}.jsonl`` (blank lines skipped); references hold the labels."""
        from vlcli.data.layout import data_path

        path = data_path(settings, "vcr.annotations", split)
        if not path.is_file():
            raise TaskDataError(
                f"{path}: VCR annotations of split {split!r} not found; put the original {split}.jsonl there "
                "or set --data_root / data_paths vcr.annotations"
            )
        # The submission file needs every answer's QA→R inputs, even if that split carries labels.
        every_answer = not train and split == self.splits["submit"]
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        seen: set[Hashable] = set()
        try:
            with path.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    if line.strip():
                        ex = self._example(line, f"{path}:{line_no}", train, every_answer)
                        if ex.id in seen:
                            raise TaskDataError(f"{path}:{line_no}: annot_id {ex.id!r} occurs twice; "
                                                "use the original file")
                        seen.add(ex.id)
                        examples.append(ex)
                        if ex.answer_label is not None:
                            references[ex.id] = {
                                "answer_label": ex.answer_label,
                                "rationale_label": ex.rationale_label,
                            }
        except (OSError, UnicodeDecodeError) as exc:
            raise TaskDataError(
                f"{path}: cannot read the VCR annotations ({exc}); restore the original file"
            ) from exc
        return examples, references

    def _example(self, line: str, source: str, train: bool, every_answer: bool) -> VCRExample:
        """Parse and check one jsonl line (``source`` = ``file:line`` for messages)."""
        fix = "use the original VCR annotation file"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"{source}: not a JSON object ({exc.msg}); {fix}") from None
        if not isinstance(rec, dict):
            raise TaskDataError(f"{source}: a {type(rec).__name__}, not a JSON object; {fix}")
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise TaskDataError(f"{source}: no {', '.join(repr(k) for k in missing)}; {fix}")
        _check_tokens(rec["question"], source, "question")
        for key in ("answer_choices", "rationale_choices"):
            choices = rec[key]
            if not isinstance(choices, list) or len(choices) != N_CHOICES:
                raise TaskDataError(f"{source}: {key!r} must be a list of {N_CHOICES} token lists; {fix}")
            for i, choice in enumerate(choices):
                _check_tokens(choice, source, f"{key}[{i}]")
        labels = [rec.get("answer_label"), rec.get("rationale_label")]
        if labels == [None, None]:
            if train:
                raise TaskDataError(
                    f"{source}: no answer_label / rationale_label; training needs a labelled split "
                    "(train or val)"
                )
            labels_ok: tuple[int | None, int | None] = (None, None)
        else:
            for key, value in zip(("answer_label", "rationale_label"), labels, strict=True):
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < N_CHOICES:
                    raise TaskDataError(f"{source}: {key!r} must be an index 0-3, got {value!r}; {fix}")
            labels_ok = (labels[0], labels[1])
        return VCRExample(
            id=str(rec["annot_id"]),
            image_ids=(str(rec["img_id"]),),
            text="",
            question=rec["question"],
            answers=rec["answer_choices"],
            rationales=rec["rationale_choices"],
            answer_label=labels_ok[0],
            rationale_label=labels_ok[1],
            # Deviation: the original decides by "test" in annot_id; here a missing label (or the
            # submission split) asks for the 16 QA→R inputs.
            all_rationales=not train and (labels_ok[0] is None or every_answer),
            source=source,
        )

    # ----------------------------------------------------------------------------- batches

    def collate(self, items: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
        """All inputs of the batch's questions flattened, question by question (QA first, then QA→R).

        Keys: ``ids`` (annot_ids), ``input_ids`` / ``attention_mask`` (ΣS, L), ``n_sequences`` (B,),
        ``n_qa`` (B,), ``vis_feats`` (B, 36, F) and ``vis_pos`` (B, 36, 4) once per question (repeated per
        input in :meth:`model_inputs`); for training also ``labels`` / ``decoder_input_ids`` (ΣS, 1 or 2),
        ``loss_weights`` (ΣS,), ``answer_label`` / ``rationale_label`` (B,) and ``candidate_ids`` (2,).
        """
        if not items:
            raise ValueError("collate needs at least one item")
        seqs = [s for it in items for s in it["input_ids"]]
        input_ids = pad_ids(seqs, pad_token_id)
        lengths = torch.tensor([len(s) for s in seqs])
        batch: dict[str, Any] = {
            "task": self.name,
            "ids": [it["id"] for it in items],
            "input_ids": input_ids,
            "attention_mask": (torch.arange(input_ids.shape[1]) < lengths[:, None]).long(),
            "n_sequences": torch.tensor([len(it["input_ids"]) for it in items]),
            "n_qa": torch.tensor([it["n_qa"] for it in items]),
            "vis_feats": torch.from_numpy(np.stack([np.asarray(it["feats"], np.float32) for it in items])),
            "vis_pos": torch.from_numpy(np.stack([np.asarray(it["boxes"], np.float32) for it in items])),
        }
        if all(it["labels"] is not None for it in items):
            batch["labels"] = torch.tensor([r for it in items for r in it["labels"]])
            batch["decoder_input_ids"] = torch.tensor([r for it in items for r in it["decoder_input_ids"]])
            batch["loss_weights"] = _sum_weights(items)
            batch["answer_label"] = torch.tensor([it["answer_label"] for it in items])
            batch["rationale_label"] = torch.tensor([it["rationale_label"] for it in items])
            batch["candidate_ids"] = torch.tensor(items[0]["candidate_ids"])
        return batch

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``VLModel.forward`` kwargs: each question's regions repeated for each of its inputs.

        The batch keeps one copy per question (less to collate and move to the device); the repeat is the
        one copy the (ΣS, 36, F) encoder input needs.
        """
        counts = batch["n_sequences"].to(batch["vis_feats"].device)
        out = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "vis_feats": batch["vis_feats"].repeat_interleave(counts, dim=0),
            "vis_pos": batch["vis_pos"].repeat_interleave(counts, dim=0),
            "task": self.name,
            "loss_reduction": "example",
            "reduce_visual": False,
        }
        for key in ("labels", "decoder_input_ids", "loss_weights"):
            if key in batch:
                out[key] = batch[key]
        return out

    def train_accuracy(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[int, int]:
        """``(questions with answer and rationale right, questions)``: Q→AR of the teacher-forced logits."""
        probs = _true_probs(logits[:, -1], batch["candidate_ids"].to(logits.device)).view(-1, 2, N_CHOICES)
        answer_ok = probs[:, 0].argmax(-1).eq(batch["answer_label"].to(logits.device))
        rationale_ok = probs[:, 1].argmax(-1).eq(batch["rationale_label"].to(logits.device))
        return int((answer_ok & rationale_ok).sum()), int(probs.shape[0])

    # -------------------------------------------------------------------------- prediction

    def predict(
        self, model: VLModel, batch: Mapping[str, Any], settings: Settings, tokenizer: VLTokenizer
    ) -> dict[Hashable, Any]:
        """``{annot_id: prediction}``: ``answer_probs`` (4), ``rationale_probs`` (4 given the gold answer, or
        4×4 with row i conditioned on answer i), ``answer`` and ``rationale`` (for the gold answer, or for
        the chosen one with 4×4). Probabilities are P(true) normalised over the 4 candidates."""
        candidates = first_token_ids(tokenizer, (TRUE, FALSE))
        counts = batch["n_sequences"].tolist()
        owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(
            batch["vis_feats"].device
        )
        chunk = N_CHOICES * len(counts)  # at most 4 inputs per question per forward, as the original
        parts = []
        for start in range(0, len(owner), chunk):
            rows = owner[start : start + chunk]
            logits = model.score_candidates(
                batch["input_ids"][start : start + chunk],
                candidates,
                batch["attention_mask"][start : start + chunk],
                batch["vis_feats"][rows],
                batch["vis_pos"][rows],
                task=self.name,
                reduce_visual=False,
            )
            parts.append(logits.float().softmax(-1)[:, 0].cpu())
        p_true = torch.cat(parts).split(counts)
        n_qa = batch["n_qa"].tolist()
        return {i: _prediction(p, q) for i, p, q in zip(batch["ids"], p_true, n_qa, strict=True)}

    # ----------------------------------------------------------------------------- metrics

    def score(
        self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any], settings: Settings
    ) -> dict[str, Any]:
        """Q→A, QA→R, Q→AR in percent (:func:`vlcli.metrics.vcr.vcr_metrics`)."""
        from vlcli.metrics.vcr import METRIC_KEYS, vcr_metrics

        result = vcr_metrics(dict(predictions), dict(references))
        return {k: result[k] for k in METRIC_KEYS}

    # -------------------------------------------------------------------------- submission

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """The leaderboard CSV: ``annot_id``, 4 answer and 16 answer-conditioned rationale probabilities,
        each group normalised over its 4 candidates."""
        table = [[annot_id, *_submission_values(annot_id, pred)] for annot_id, pred in rows]
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_HEADER)
            writer.writerows(table)


# ------------------------------------------------------------------------------------- helpers


def _check_tokens(tokens: Any, source: str, what: str) -> None:
    """TaskDataError unless ``tokens`` is a list of words and lists of object indices."""
    ok = isinstance(tokens, list) and all(
        isinstance(t, str)
        or (isinstance(t, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in t))
        for t in tokens
    )
    if not ok:
        raise TaskDataError(
            f"{source}: {what!r} must be a list of words and lists of object indices; "
            "use the original VCR file"
        )


def _sum_weights(items: list[dict[str, Any]]) -> torch.Tensor:
    """Per-input loss weights that turn the model's mean over all inputs into QA mean + QA→R mean."""
    n_qa = sum(it["n_qa"] for it in items)
    n_qar = sum(len(it["input_ids"]) - it["n_qa"] for it in items)
    total = n_qa + n_qar
    weights = []
    for it in items:
        weights += [total / n_qa] * it["n_qa"] + [total / n_qar] * (len(it["input_ids"]) - it["n_qa"])
    return torch.tensor(weights, dtype=torch.float32)


def _true_probs(logits: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """P(true) of each row: softmax over the (true, false) logits."""
    return logits[:, candidate_ids].float().softmax(-1)[:, 0]


def _normalised(p: torch.Tensor) -> list[float]:
    return (p / p.sum()).tolist()


def _prediction(p_true: torch.Tensor, n_qa: int) -> dict[str, Any]:
    """The JSON-ready prediction of one question from its inputs' P(true) (QA first, then QA→R)."""
    answer = _normalised(p_true[:n_qa])
    rows = [_normalised(r) for r in p_true[n_qa:].view(-1, N_CHOICES)]
    chosen = argmax(answer)  # the metric's argmax, so the indices agree with the scores
    if len(rows) == 1:  # conditioned on the gold answer
        rationale: list[Any] = rows[0]
        pick = argmax(rows[0])
    else:  # one row per answer: the rationale chosen for the chosen answer
        rationale = rows
        pick = argmax(rows[chosen])
    return {"answer_probs": answer, "rationale_probs": rationale, "answer": chosen, "rationale": pick}


def _group(values: Any, what: str, annot_id: Hashable) -> list[float]:
    """4 non-negative numbers normalised to sum 1; SubmissionError otherwise."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        numbers = []
    if (
        len(numbers) != N_CHOICES
        or not all(math.isfinite(v) and v >= 0 for v in numbers)
        or not sum(numbers) > 0
    ):
        raise SubmissionError(
            f"VCR prediction for {annot_id!r}: {what} must be {N_CHOICES} non-negative probabilities; "
            f"got {values!r}"
        )
    total = sum(numbers)
    return [v / total for v in numbers]


def _submission_values(annot_id: Hashable, pred: Any) -> list[float]:
    """The 20 CSV values of one prediction (answers, then rationales conditioned on answers 0..3)."""
    if not isinstance(pred, Mapping) or "answer_probs" not in pred or "rationale_probs" not in pred:
        raise SubmissionError(
            f"VCR prediction for {annot_id!r} needs answer_probs and rationale_probs; "
            "predict with `vlcli submit vcr`"
        )
    matrix = pred["rationale_probs"]
    if not (
        isinstance(matrix, list) and len(matrix) == N_CHOICES and all(isinstance(r, list) for r in matrix)
    ):
        raise SubmissionError(
            f"VCR prediction for {annot_id!r} has rationale probabilities for one answer only, the "
            "leaderboard needs them for all 4: predict the submission split (test), which gets every "
            "answer's QA→R inputs"
        )
    values = _group(pred["answer_probs"], "answer_probs", annot_id)
    for i, row in enumerate(matrix):
        values += _group(row, f"rationale_probs[{i}]", annot_id)
    return values
