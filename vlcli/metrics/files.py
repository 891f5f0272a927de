"""Read prediction and annotation files in the official formats (spec §5) and score them.

Every problem with a file (missing, not JSON, wrong structure, ids that do not line up) raises
:class:`MetricsInputError` with a message that names the file and says how to fix it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlcli.metrics.base import MetricsInputError, preview


def load_json(path: Path, role: str) -> Any:
    """Parse ``path``; ``role`` (e.g. ``--predictions``) names the option in error messages."""
    if not path.exists():
        raise MetricsInputError(f"{role} {path}: no such file")
    if not path.is_file():
        raise MetricsInputError(f"{role} {path}: not a file")
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise MetricsInputError(
            f"{role} {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except UnicodeDecodeError:
        raise MetricsInputError(f"{role} {path}: not UTF-8 text; expected a JSON file") from None


def _records(data: Any, path: Path, role: str, key: str | None, fields: tuple[str, ...], example: str
             ) -> list[Mapping[str, Any]]:
    """The list of dict records of a file (``data[key]`` when ``key``), each with ``fields``."""
    items = data.get(key) if key is not None and isinstance(data, Mapping) else (data if key is None else None)
    where = f'a JSON object with a "{key}" list' if key else "a JSON list"
    if not isinstance(items, list):
        raise MetricsInputError(f"{role} {path}: expected {where} like {example}")
    for n, item in enumerate(items):
        if not isinstance(item, Mapping) or any(f not in item for f in fields):
            lacking = [f for f in fields if not isinstance(item, Mapping) or f not in item]
            raise MetricsInputError(
                f"{role} {path}: entry {n} lacks {', '.join(repr(f) for f in lacking)}; expected {where} like {example}"
            )
    return items


def _int_id(value: Any, path: Path, role: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise MetricsInputError(f"{role} {path}: {field} {value!r} is not an integer id")
    return int(value)


def _unique(pairs: list[tuple[Any, Any]], path: Path, role: str, field: str) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in pairs:
        if k in out:
            raise MetricsInputError(f"{role} {path}: {field} {k} appears more than once; keep one entry per id")
        out[k] = v
    return out


# --- VQA -------------------------------------------------------------------------------------------------
_VQA_PRED_EXAMPLE = '[{"question_id": 1, "answer": "yes"}]'
_VQA_ANN_EXAMPLE = '{"annotations": [{"question_id": 1, "answers": [{"answer": "yes"}, ...], ...}]}'
_VQA_Q_EXAMPLE = '{"questions": [{"question_id": 1, "image_id": 9, "question": "..."}]}'


def _id_text_pairs(path: Path, role: str, id_key: str, text_key: str, example: str) -> dict[int, str]:
    """``[{id_key: int, text_key: str}]`` -> ``{id: text}``; each id once."""
    items = _records(load_json(path, role), path, role, None, (id_key, text_key), example)
    pairs = []
    for item in items:
        if not isinstance(item[text_key], str):
            raise MetricsInputError(f"{role} {path}: {text_key} {item[text_key]!r} is not a string")
        pairs.append((_int_id(item[id_key], path, role, id_key), item[text_key]))
    return _unique(pairs, path, role, id_key)


def load_vqa_predictions(path: Path, role: str = "--predictions") -> dict[int, str]:
    """``[{"question_id", "answer"}]`` (the submission format) -> ``{question_id: answer}``."""
    return _id_text_pairs(path, role, "question_id", "answer", _VQA_PRED_EXAMPLE)


def load_vqa_annotations(path: Path, role: str = "--annotations") -> dict[int, dict[str, Any]]:
    """The official annotation file -> ``{question_id: annotation}``."""
    items = _records(load_json(path, role), path, role, "annotations",
                     ("question_id", "answers", "answer_type", "question_type"), _VQA_ANN_EXAMPLE)
    pairs = []
    for item in items:
        qid = _int_id(item["question_id"], path, role, "question_id")
        answers = item["answers"]
        if (not isinstance(answers, list) or not answers
                or not all(isinstance(a, Mapping) and isinstance(a.get("answer"), str) for a in answers)):
            raise MetricsInputError(
                f'{role} {path}: question {qid}: "answers" must be a non-empty list of {{"answer": str, ...}}'
            )
        pairs.append((qid, dict(item)))
    return _unique(pairs, path, role, "question_id")


def load_vqa_questions(path: Path, role: str = "--questions") -> list[int]:
    """The official question file -> the question ids in file order."""
    items = _records(load_json(path, role), path, role, "questions", ("question_id",), _VQA_Q_EXAMPLE)
    ids = [_int_id(item["question_id"], path, role, "question_id") for item in items]
    return list(_unique([(q, None) for q in ids], path, role, "question_id"))


def score_vqa_files(predictions: Path, annotations: Path, questions: Path | None = None,
                    mode: str = "vlt5") -> dict[str, Any]:
    """Score a VQA results file like the official evaluator: every evaluated question needs one prediction.

    The evaluated set is the question file's ids when given (they must all be annotated), otherwise every
    annotated question.
    """
    from vlcli.metrics.vqa import vqa_accuracy

    preds = load_vqa_predictions(predictions)
    gts = load_vqa_annotations(annotations)
    if questions is not None:
        qids = load_vqa_questions(questions)
        no_gt = [q for q in qids if q not in gts]
        if no_gt:
            raise MetricsInputError(
                f"--annotations {annotations}: {len(no_gt)} question(s) of --questions {questions} are not "
                f"annotated ({preview(no_gt)}); pass the annotation file of the same split"
            )
        source = f"--questions {questions}"
    else:
        qids = list(gts)
        source = f"--annotations {annotations}"
    if not qids:
        raise MetricsInputError(f"{source}: no questions to evaluate")
    wanted = set(qids)
    unknown = [q for q in preds if q not in wanted]
    if unknown:
        raise MetricsInputError(
            f"--predictions {predictions}: {len(unknown)} prediction(s) for question ids not in {source} "
            f"({preview(unknown)}); evaluate against the split the predictions were made on"
        )
    missing = [q for q in qids if q not in preds]
    if missing:
        raise MetricsInputError(
            f"--predictions {predictions}: {len(missing)} question(s) of {source} have no prediction "
            f"({preview(missing)}); predict every question, or pass --questions with the subset you predicted"
        )
    result = vqa_accuracy(preds, gts, qids, mode=mode)  # type: ignore[arg-type]
    result.pop("perQuestion")
    return {"task": "vqa", **result}


# --- COCO captions ---------------------------------------------------------------------------------------
_CAP_PRED_EXAMPLE = '[{"image_id": 391895, "caption": "a man riding a bike"}]'
_CAP_ANN_EXAMPLE = '{"images": [{"id": 391895}], "annotations": [{"image_id": 391895, "caption": "...", "id": 1}]}'


def load_caption_predictions(path: Path, role: str = "--predictions") -> dict[int, str]:
    """``[{"image_id", "caption"}]`` -> ``{image_id: caption}``."""
    return _id_text_pairs(path, role, "image_id", "caption", _CAP_PRED_EXAMPLE)


def load_coco_references(path: Path, role: str = "--annotations") -> dict[int, list[str]]:
    """A COCO caption annotation file -> ``{image_id: [captions]}``; images listed without captions are errors."""
    data = load_json(path, role)
    items = _records(data, path, role, "annotations", ("image_id", "caption"), _CAP_ANN_EXAMPLE)
    refs: dict[int, list[str]] = {}
    images = data.get("images")
    if images is not None:
        if not isinstance(images, list) or not all(isinstance(i, Mapping) and "id" in i for i in images):
            raise MetricsInputError(f'{role} {path}: "images" must be a list of {{"id": int, ...}} like {_CAP_ANN_EXAMPLE}')
        for img in images:
            refs.setdefault(_int_id(img["id"], path, role, "images[].id"), [])
    for item in items:
        if not isinstance(item["caption"], str):
            raise MetricsInputError(f"{role} {path}: caption {item['caption']!r} is not a string")
        refs.setdefault(_int_id(item["image_id"], path, role, "image_id"), []).append(item["caption"])
    empty = [i for i, caps in refs.items() if not caps]
    if empty:
        raise MetricsInputError(f"{role} {path}: {len(empty)} image(s) have no caption ({preview(empty)})")
    if not refs:
        raise MetricsInputError(f"{role} {path}: no captions")
    return refs


def score_caption_files(predictions: Path, annotations: Path, spice: bool = False) -> dict[str, Any]:
    """Score a caption results file against a COCO caption annotation file (every image needs one caption)."""
    from vlcli.metrics.caption import caption_metrics

    preds = load_caption_predictions(predictions)
    refs = load_coco_references(annotations)
    unknown = [i for i in preds if i not in refs]
    if unknown:
        raise MetricsInputError(
            f"--predictions {predictions}: {len(unknown)} caption(s) for image ids not in --annotations "
            f"{annotations} ({preview(unknown)}); evaluate against the split the captions were made on"
        )
    missing = [i for i in refs if i not in preds]
    if missing:
        raise MetricsInputError(
            f"--predictions {predictions}: {len(missing)} image(s) of --annotations {annotations} have no "
            f"caption ({preview(missing)}); caption every image, or pass an annotation file with only those images"
        )
    return {"task": "caption", "images": len(refs), **caption_metrics(preds, refs, spice=spice)}
