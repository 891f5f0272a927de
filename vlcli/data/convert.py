"""Convert the official downloads into the training files the original code (and vlcli) reads.

Each converter reads a folder holding the official files under their official names and writes the
original's preprocessed layout (spec data-and-eval §0.1, §1.1-1.4) into ``out``:

* VQA v2 (``v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json``,
  ``v2_mscoco_{train2014,val2014}_annotations.json``): ``train.json``, ``val.json``, ``test.json``,
  ``test_dev.json`` and, with a Karpathy split file, ``karpathy_{train,val,test}.json``; the answer
  table ``trainval_ans2label.json`` / ``trainval_label2ans.json`` (answers given as
  ``multiple_choice_answer`` at least ``min_answer_count`` times in train+val: 3129 with 9, as in the
  bottom-up-attention / LXMERT preprocessing); the annotation files are copied (the evaluator reads them).
  Soft scores: an answer given by 0/1/2/3/≥4 of the 10 annotators scores 0/0.3/0.6/0.9/1.0 (answers
  normalised with the official VQA normaliser), only answers in the table are kept.
* GQA (``{train,val,testdev}_balanced_questions.json``, ``submission_all_questions.json``): ``train.json``,
  ``valid.json``, ``testdev.json``, ``submit.json`` in LXMERT's format and the answer table.
* NLVR2 (``train.json``, ``dev.json``, ``test1.json``; JSON lines): ``train.json``, ``valid.json``,
  ``test.json`` with ``identifier``, ``img0``, ``img1``, ``label`` (0/1), ``sent``, ``uid``.
* COCO captions (``captions_{train,val}2014.json`` + a Karpathy split file): ``dataset_coco.json``.
  The split file is either Karpathy's own ``dataset_coco.json`` (copied after a check) or a JSON object
  ``{"train": [coco ids], "restval": [...], "val": [...], "test": [...]}``.

Every output is written atomically (temporary file, then rename). Converters return the list of files
written with their record counts.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlcli.atomic import atomic_write, write_json
from vlcli.errors import VlcliError

SCORE_BY_COUNT = (0.0, 0.3, 0.6, 0.9)  # 0..3 matching annotators; 4 or more -> 1.0
VQA_QUESTIONS = {
    "train": "v2_OpenEnded_mscoco_train2014_questions.json",
    "val": "v2_OpenEnded_mscoco_val2014_questions.json",
    "test": "v2_OpenEnded_mscoco_test2015_questions.json",
    "test_dev": "v2_OpenEnded_mscoco_test-dev2015_questions.json",
}
VQA_ANNOTATIONS = {
    "train": "v2_mscoco_train2014_annotations.json",
    "val": "v2_mscoco_val2014_annotations.json",
}
VQA_IMAGE_SETS = {"train": "train2014", "val": "val2014", "test": "test2015", "test_dev": "test2015"}
GQA_FILES = {
    "train": "train_balanced_questions.json",
    "valid": "val_balanced_questions.json",
    "testdev": "testdev_balanced_questions.json",
    "submit": "submission_all_questions.json",
}
NLVR_FILES = {"train": "train.json", "valid": "dev.json", "test": "test1.json"}
COCO_CAPTIONS = {"train2014": "captions_train2014.json", "val2014": "captions_val2014.json"}
KARPATHY_SPLITS = ("train", "restval", "val", "test")


class ConvertError(VlcliError):
    """An official file is missing or does not have the official structure."""


Written = list[tuple[Path, int]]


# ------------------------------------------------------------------------------------------ helpers


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ConvertError(f"{path}: no such file; download it from the dataset's official site")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{path}: not readable JSON ({exc})") from exc


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConvertError(f"{path}: no such file; download it from the dataset's official site")
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConvertError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
    return records


def _field(record: dict, key: str, path: Path) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ConvertError(f"{path}: a record has no {key!r} field; is this the official file?")
    return record[key]


def _write(path: Path, data: Any, count: int, written: Written) -> None:
    """Write ``data`` as JSON (atomically) and record ``(path, count)``."""
    write_json(path, data)
    written.append((path, count))


def _write_answer_table(out: Path, table: dict[str, int], label2ans: list[str], written: Written) -> None:
    _write(out / "trainval_ans2label.json", table, len(table), written)
    _write(out / "trainval_label2ans.json", label2ans, len(label2ans), written)


def _copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def answer_table(answers: Iterable[str], min_count: int) -> tuple[dict[str, int], list[str]]:
    """(ans2label, label2ans) of the answers seen at least ``min_count`` times, most frequent first."""
    counts = Counter(answers)
    kept = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return {a: i for i, a in enumerate(kept)}, kept


def soft_scores(answers: Iterable[str], table: dict[str, int] | None) -> dict[str, float]:
    """VQA soft score per answer from the annotators' (normalised) answers; only answers in ``table``."""
    counts = Counter(answers)
    return {
        a: (SCORE_BY_COUNT[c] if c < len(SCORE_BY_COUNT) else 1.0)
        for a, c in counts.items()
        if table is None or a in table
    }


# --------------------------------------------------------------------------------------------- VQA


def coco_stem(image_set: str, image_id: int) -> str:
    """``COCO_val2014_000000391895``: the image ids the original's VQA and caption files use."""
    return f"COCO_{image_set}_{int(image_id):012d}"


def convert_vqa(data: Path, out: Path, karpathy: Path | None = None, min_answer_count: int = 9) -> Written:
    from vlcli.metrics.vqa import normalize_answer

    data, out = Path(data), Path(out)
    annotations: dict[str, dict[int, dict]] = {}
    for split, name in VQA_ANNOTATIONS.items():
        if (data / name).exists() or split == "train":
            raw = _field(_read_json(data / name), "annotations", data / name)
            annotations[split] = {int(_field(a, "question_id", data / name)): a for a in raw}
    table, label2ans = answer_table(
        (
            normalize_answer(a["multiple_choice_answer"])
            for anns in annotations.values()
            for a in anns.values()
        ),
        min_answer_count,
    )
    written: Written = []
    by_split: dict[str, list[dict]] = {}
    for split, name in VQA_QUESTIONS.items():
        if not (data / name).exists() and split != "train":
            continue
        questions = _field(_read_json(data / name), "questions", data / name)
        records = []
        for q in questions:
            qid = int(_field(q, "question_id", data / name))
            record = {
                "img_id": coco_stem(VQA_IMAGE_SETS[split], _field(q, "image_id", data / name)),
                "sent": _field(q, "question", data / name),
                "question_id": qid,
            }
            ann = annotations.get(split, {}).get(qid)
            if ann is not None:
                human = [normalize_answer(a["answer"]) for a in ann["answers"]]
                record.update(
                    label=soft_scores(human, table),
                    answer_type=ann.get("answer_type"),
                    question_type=ann.get("question_type"),
                    answers=ann["answers"],
                )
            elif split in annotations:
                raise ConvertError(
                    f"{data / name}: question {qid} has no annotation in {VQA_ANNOTATIONS[split]}"
                )
            records.append(record)
        by_split[split] = records
        _write(out / f"{split}.json", records, len(records), written)
    if karpathy is not None:
        image_split = _karpathy_image_splits(Path(karpathy))
        parts: dict[str, list[dict]] = {"karpathy_train": [], "karpathy_val": [], "karpathy_test": []}
        for split in ("train", "val"):
            for record in by_split.get(split, []):
                which = image_split.get(record["img_id"])
                if which is not None:
                    parts[f"karpathy_{'train' if which == 'restval' else which}"].append(record)
        for name, records in parts.items():
            _write(out / f"{name}.json", records, len(records), written)
    _write_answer_table(out, table, label2ans, written)
    for split, name in VQA_ANNOTATIONS.items():
        if split in annotations:
            _copy(data / name, out / name)
            written.append((out / name, len(annotations[split])))
    return written


def _karpathy_image_splits(path: Path) -> dict[str, str]:
    """Image stem (``COCO_val2014_...``) -> Karpathy split (train / restval / val / test)."""
    data = _read_json(path)
    images = _field(data, "images", path)
    out = {}
    for image in images:
        stem = Path(_field(image, "filename", path)).stem
        out[stem] = _field(image, "split", path)
    return out


# --------------------------------------------------------------------------------------------- GQA


def convert_gqa(data: Path, out: Path, min_answer_count: int = 1) -> Written:
    data, out = Path(data), Path(out)
    written: Written = []
    answers: list[str] = []
    splits: dict[str, list[dict]] = {}
    for split, name in GQA_FILES.items():
        if not (data / name).exists() and split != "train":
            continue
        questions = _read_json(data / name)
        if not isinstance(questions, dict):
            raise ConvertError(
                f"{data / name}: expected an object {{question_id: question}}; is this the official file?"
            )
        records = []
        for qid, q in questions.items():
            record = {
                "img_id": str(_field(q, "imageId", data / name)),
                "sent": _field(q, "question", data / name),
                "question_id": str(qid),
            }
            if "answer" in q and split != "submit":
                record["label"] = {q["answer"]: 1.0}
                if split in ("train", "valid"):
                    answers.append(q["answer"])
            records.append(record)
        splits[split] = records
    table, label2ans = answer_table(answers, min_answer_count)
    for split, records in splits.items():
        _write(out / f"{split}.json", records, len(records), written)
    _write_answer_table(out, table, label2ans, written)
    return written


# ------------------------------------------------------------------------------------------- NLVR2


def nlvr_image_ids(identifier: str) -> tuple[str, str]:
    """``train-10171-0-0`` -> (``train-10171-0-img0``, ``train-10171-0-img1``)."""
    stem = identifier.rsplit("-", 1)[0]
    return f"{stem}-img0", f"{stem}-img1"


def convert_nlvr(data: Path, out: Path) -> Written:
    data, out = Path(data), Path(out)
    written: Written = []
    for split, name in NLVR_FILES.items():
        if not (data / name).exists() and split != "train":
            continue
        records = []
        for i, line in enumerate(_read_jsonl(data / name)):
            identifier = str(_field(line, "identifier", data / name))
            label = str(_field(line, "label", data / name)).lower()
            if label not in ("true", "false"):
                raise ConvertError(
                    f"{data / name}: {identifier} has label {line['label']!r}; expected True or False"
                )
            img0, img1 = nlvr_image_ids(identifier)
            records.append(
                {
                    "identifier": identifier,
                    "img0": img0,
                    "img1": img1,
                    "label": int(label == "true"),
                    "sent": _field(line, "sentence", data / name),
                    "uid": f"nlvr2_{split}_{i}",
                }
            )
        _write(out / f"{split}.json", records, len(records), written)
    return written


# ----------------------------------------------------------------------------------------- caption


def convert_caption(data: Path, out: Path, splits: Path) -> Written:
    """``dataset_coco.json`` in Karpathy's format from the official captions and a split file."""
    data, out, splits = Path(data), Path(out), Path(splits)
    split_data = _read_json(splits)
    target = out / "dataset_coco.json"
    if isinstance(split_data, dict) and "images" in split_data:  # Karpathy's own file: check and copy
        _karpathy_image_splits(splits)
        _copy(splits, target)
        return [(target, len(split_data["images"]))]
    if not isinstance(split_data, dict) or not set(split_data) <= set(KARPATHY_SPLITS):
        raise ConvertError(
            f"{splits}: expected Karpathy's dataset_coco.json or {{split: [coco ids]}} with splits "
            f"{', '.join(KARPATHY_SPLITS)}"
        )
    split_of = {int(i): s for s, ids in split_data.items() for i in ids}
    images: list[dict] = []
    for image_set, name in COCO_CAPTIONS.items():
        coco = _read_json(data / name)
        captions: dict[int, list[str]] = {}
        for ann in _field(coco, "annotations", data / name):
            captions.setdefault(int(ann["image_id"]), []).append(ann["caption"])
        for image in _field(coco, "images", data / name):
            cid = int(image["id"])
            if cid in split_of:
                images.append(
                    {
                        "filename": image["file_name"],
                        "filepath": image_set,
                        "cocoid": cid,
                        "split": split_of[cid],
                        "sentences": [{"raw": c} for c in captions.get(cid, [])],
                    }
                )
    missing = set(split_of) - {img["cocoid"] for img in images}
    if missing:
        raise ConvertError(
            f"{splits}: {len(missing)} COCO ids are in no official caption file, e.g. {sorted(missing)[:5]}"
        )
    write_json(target, {"images": images, "dataset": "coco"})
    return [(target, len(images))]


CONVERTERS = ("vqa", "gqa", "nlvr", "caption")
