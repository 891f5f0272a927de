"""LXMERT-format pretraining records and their expansion into examples (spec data-and-eval §1.8).

One record per image: ``{"img_id", "sentf": {source: [sentence, ...]}, "labelf": {qa_source: [label, ...]}}``
with caption sources ``mscoco`` / ``vg`` and QA sources ``vqa`` / ``gqa`` / ``visual7w`` (``labelf[s][i]``
is the ``{answer: score}`` label of ``sentf[s][i]``). :func:`expand` makes the examples of one record:

* per sentence (sentences of <= 2 words and repeats within the image skipped): ``qa`` for labelled
  sources (skipped when no answer survives the answer table), ``lm`` for captions, ``caption`` for COCO
  captions (all captions without ``--caption_cocoonly``), ``itm`` for COCO captions (all captions
  without ``--itm_cocoonly``);
* per image: ``--ground_upsample`` examples each of ``ground_caption`` and ``refer``.

``--caption_only`` keeps only caption sources, ``--coco_only`` only ``mscoco`` sentences (grounding
examples are still made for every image, as in the original).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlcli.pretraining.answers import AnswerTable
from vlcli.tasks.base import Example, TaskDataError, read_json, require

CAPTION_SOURCES = ("mscoco", "vg")
COCO_SOURCE = "mscoco"
QA_SOURCES = ("vqa", "gqa", "visual7w")
MIN_WORDS = 3  # sentences of <= 2 words are skipped (the original's T5/BART rule)


@dataclass
class PretrainExample(Example):
    """One pretraining example: the objective, where its text comes from and (qa) its label.

    ``text`` is the raw sentence (empty for grounding examples); the model input and target are built
    on every read by :class:`vlcli.tasks.pretrain.PretrainDataset`.
    """

    objective: str = ""
    source: str = ""
    label: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Expansion:
    """Which examples :func:`expand` makes (``--losses`` and the data filters)."""

    losses: frozenset[str]
    caption_only: bool = False
    coco_only: bool = False
    caption_cocoonly: bool = True
    itm_cocoonly: bool = True
    ground_upsample: int = 1

    @classmethod
    def from_settings(cls, settings: Any, losses: Sequence[str]) -> Expansion:
        return cls(
            losses=frozenset(losses),
            caption_only=bool(settings.get("caption_only")),
            coco_only=bool(settings.get("coco_only")),
            caption_cocoonly=bool(settings.get("caption_cocoonly")),
            itm_cocoonly=bool(settings.get("itm_cocoonly")),
            ground_upsample=int(settings.get("ground_upsample")),
        )

    @property
    def itm_sources(self) -> tuple[str, ...]:
        """Caption sources ITM uses (its positives and the pool of its negatives)."""
        return (COCO_SOURCE,) if self.itm_cocoonly else CAPTION_SOURCES

    @property
    def caption_sources(self) -> tuple[str, ...]:
        return (COCO_SOURCE,) if self.caption_cocoonly else CAPTION_SOURCES

    def keeps(self, source: str) -> bool:
        if self.caption_only and source not in CAPTION_SOURCES:
            return False
        return not (self.coco_only and source != COCO_SOURCE)


# ------------------------------------------------------------------------------------- reading


def read_records(path: Path, split: str) -> list[dict[str, Any]]:
    """The image records of ``lxmert/{split}.json``, checked; TaskDataError naming the file otherwise."""
    data = read_json(path, f"LXMERT pretraining file of split {split!r}")
    if not isinstance(data, list):
        raise TaskDataError(
            f"{path}: expected a JSON list of image records; use the LXMERT file lxmert/{split}.json"
        )
    for i, rec in enumerate(data):
        require(rec, ("img_id", "sentf"), path, i)
        sentf, labelf = rec["sentf"], rec.get("labelf", {})
        if not isinstance(sentf, Mapping) or not isinstance(labelf, Mapping):
            raise TaskDataError(
                f"{path}: entry {i}: 'sentf' and 'labelf' must be objects keyed by source; "
                "use the LXMERT format"
            )
        for source, sents in sentf.items():
            if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
                raise TaskDataError(f"{path}: entry {i}: sentf[{source!r}] must be a list of sentences")
            labels = labelf.get(source)
            if labels is not None and (not isinstance(labels, list) or len(labels) != len(sents)):
                raise TaskDataError(
                    f"{path}: entry {i}: labelf[{source!r}] must be a list with one label per "
                    f"sentence ({len(sents)}); use the LXMERT format"
                )
            for label in labels or []:
                if not isinstance(label, Mapping) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in label.values()
                ):
                    raise TaskDataError(
                        f"{path}: entry {i}: each labelf[{source!r}] label must map answers to "
                        "scores; use the LXMERT format"
                    )
    return data


def read_vocab(path: Path, what: str) -> list[str]:
    """VG ``objects_vocab.txt`` / ``attributes_vocab.txt``: line k = class k; its first comma-separated
    name, lower-cased (as the original)."""
    if not path.is_file():
        raise TaskDataError(
            f"{path}: {what} not found; put the VG vocabulary of the BUTD detector there "
            "(VG/objects_vocab.txt, VG/attributes_vocab.txt) or set --data_paths"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskDataError(f"{path}: cannot read {what} ({exc}); restore the original file") from exc
    names = [line.split(",")[0].lower().strip() for line in lines if line.strip()]
    if not names:
        raise TaskDataError(f"{path}: {what} is empty; restore the original file")
    return names


# ----------------------------------------------------------------------------------- expansion


def sentence_id(img_id: str, source: str, index: int, objective: str) -> str:
    """``{img_id}_{source}_{index:03d}_{objective}``: the original's uid plus the objective (one sentence
    gives several examples, e.g. lm and itm)."""
    return f"{img_id}_{source}_{index:03d}_{objective}"


def grounding_id(img_id: str, objective: str, repeat: int) -> str:
    """``{img_id}_{objective}_{repeat:03d}`` (the original's uid of grounding examples)."""
    return f"{img_id}_{objective}_{repeat:03d}"


def expand(record: Mapping[str, Any], how: Expansion, answers: AnswerTable | None) -> list[PretrainExample]:
    """The examples of one image record, in the original's order (sources, sentences, objectives).

    ``answers``: the answer table normalising QA labels (needed when ``qa`` is in the losses).
    """
    img_id = str(record["img_id"])
    images = (img_id,)
    losses = how.losses
    out: list[PretrainExample] = []
    seen: set[str] = set()
    labelf = record.get("labelf", {})
    for source, sents in record["sentf"].items():
        if not how.keeps(source):
            continue
        labels = labelf.get(source) if "qa" in losses else None
        for index, sent in enumerate(sents):
            if len(sent.split()) < MIN_WORDS or sent in seen:
                continue
            if labels is not None:
                label = answers.normalize_label(labels[index]) if answers is not None else dict(labels[index])
                label = {a: s for a, s in label.items() if s > 0}
                if not label:
                    continue  # no answer in the table: the question is dropped (the original `continue`s too)
                out.append(
                    PretrainExample(
                        sentence_id(img_id, source, index, "qa"),
                        images,
                        sent,
                        objective="qa",
                        source=source,
                        label=label,
                    )
                )
            # lm only on captions: the original also queued unlabelled questions for lm and then failed an
            # assertion on them (e.g. --losses lm with VQA sentences present).
            wanted = []
            if "lm" in losses and source in CAPTION_SOURCES:
                wanted.append("lm")
            if "caption" in losses and source in how.caption_sources:
                wanted.append("caption")
            if "itm" in losses and source in how.itm_sources:
                wanted.append("itm")
            out += [
                PretrainExample(
                    sentence_id(img_id, source, index, o), images, sent, objective=o, source=source
                )
                for o in wanted
            ]
            seen.add(sent)
    for objective in ("ground_caption", "refer"):
        if objective in losses:
            out += [
                PretrainExample(
                    grounding_id(img_id, objective, r), images, "", objective=objective, source=objective
                )
                for r in range(how.ground_upsample)
            ]
    return out


def reference(example: PretrainExample) -> dict[str, Any]:
    """What validation scores an example with: its objective, source and (qa) label."""
    ref: dict[str, Any] = {"objective": example.objective, "source": example.source}
    if example.objective == "qa":
        ref["label"] = example.label
    return ref


def expand_all(
    records: Sequence[tuple[Path, Mapping[str, Any]]], how: Expansion, answers: AnswerTable | None,
    with_references: bool = True,
) -> tuple[list[PretrainExample], dict[Hashable, Any]]:
    """Examples and references of ``(file, record)`` pairs; TaskDataError when an image appears twice."""
    examples: list[PretrainExample] = []
    origin: dict[str, Path] = {}
    for path, rec in records:
        img_id = str(rec["img_id"])
        if img_id in origin:
            raise TaskDataError(
                f"{path}: image {img_id!r} already has a record in {origin[img_id]}; "
                "give each image one record (example ids are built from the image id)"
            )
        origin[img_id] = path
        examples += expand(rec, how, answers)
    # Training never scores its examples: no references (they cost ~200 B each on LXMERT's ~9M examples).
    return examples, ({ex.id: reference(ex) for ex in examples} if with_references else {})
