"""VQA v2 (spec data-and-eval §1.1): LXMERT-format question files ``vqa/{split}.json``.

Input ``{prompt}{sent}{post_prompt}`` truncated to the task's ``max_text_length``; the training target
is one answer of ``label`` drawn with probability ∝ score on every read (at most 10 tokens) and the
example loss is multiplied by that score. ``--raw_label`` draws one of the ten human answers instead
(weight 1), normalised as the official evaluator does with ``--answer_normalize``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcli.tasks.base import Example, Task, TaskDataError, read_json, require, write_json_rows

if TYPE_CHECKING:
    from vlcli.config.settings import Settings

ANSWER_MAX_LENGTH = 10  # the original's hard-coded target length


def answer_normalizer() -> Callable[[str], str]:
    """The official VQA answer normalisation (vlcli.metrics.vqa) followed by comma removal."""
    from vlcli.metrics.vqa import normalize_answer

    return lambda a: normalize_answer(a).replace(",", "")


class VQATask(Task):
    """VQA v2 with generated answers."""

    name = "vqa"
    examples_file = "vqa.questions"
    splits = {"train": "karpathy_train", "valid": "karpathy_val", "test": "karpathy_test", "submit": "test"}
    weighted = True
    submission_file = "submit.json"

    def target_length(self, settings: Settings) -> int | None:
        return ANSWER_MAX_LENGTH

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        path = self.data_path(settings, "vqa.questions", split)
        records = read_json(path, f"VQA question file of split {split!r}")
        if not isinstance(records, list):
            raise TaskDataError(f"{path}: expected a JSON list of questions; use the original vqa/{split}.json")
        raw = settings.dataset.raw_label
        normalize = answer_normalizer() if raw and settings.dataset.answer_normalize else None
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        for i, rec in enumerate(records):
            require(rec, ("img_id", "question_id"), path, i)
            sent = rec.get("sent", rec.get("question"))
            if not isinstance(sent, str):
                raise TaskDataError(f"{path}: entry {i} has no 'sent' (or 'question') text; use the original format")
            ex = Example(rec["question_id"], (str(rec["img_id"]),), self.input_text(settings, sent))
            if train:
                if raw:
                    ex.targets = _raw_answers(rec, path, i, normalize)
                else:
                    ex.targets, ex.probs, ex.weights = _scored(rec.get("label") or {}, path, i)
            examples.append(ex)
            references[ex.id] = rec
        return examples, references

    def labelled(self, reference: Any) -> bool:
        return reference is not None and bool(reference.get("answers") or reference.get("label"))

    def score(self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
              settings: Settings, mode: str | None = None) -> dict[str, Any]:
        """VQA accuracy against the human ``answers`` of the question records (evaluator version ``mode``,
        default ``vlt5``, what the paper reports), per answer type too; records without them (e.g. test-dev)
        are scored by the soft score of ``label`` (the original's "top-k score")."""
        from vlcli.metrics.vqa import DEFAULT_MODE, vqa_accuracy

        with_answers = {k: references[k] for k in predictions if references[k].get("answers")}
        if len(with_answers) == len(predictions):
            result = vqa_accuracy(dict(predictions), with_answers, mode=mode or DEFAULT_MODE)
            out = {"accuracy": result["overall"]}
            out.update({f"accuracy/{t}": v for t, v in result["perAnswerType"].items()})
            return out
        total = sum(float((references[k].get("label") or {}).get(str(v).strip(), 0.0)) for k, v in predictions.items())
        return {"accuracy": round(100.0 * total / len(predictions), 2)}

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """EvalAI format: ``[{"question_id": int, "answer": str}, ...]``."""
        write_json_rows(path, [{"question_id": qid, "answer": str(ans)} for qid, ans in rows])


def _scored(label: Any, path: Path, index: int) -> tuple[list[str], list[float] | None, list[float] | None]:
    """Answers, sampling probabilities ∝ score and the scores as loss weights (nothing for an empty label)."""
    if not isinstance(label, dict):
        raise TaskDataError(f"{path}: entry {index}: 'label' must map answers to scores; use the original format")
    label = {a: float(s) for a, s in label.items() if float(s) > 0}
    if not label:
        return [], None, None
    answers = list(label)
    scores = [label[a] for a in answers]
    total = sum(scores)
    return answers, [s / total for s in scores], scores


def _raw_answers(rec: dict, path: Path, index: int, normalize: Callable[[str], str] | None) -> list[str]:
    """The human answers of ``rec`` (drawn uniformly, weight 1), normalised when asked."""
    answers = rec.get("answers")
    if not isinstance(answers, list) or not answers:
        raise TaskDataError(
            f"{path}: entry {index} has no 'answers' list; --raw_label needs the raw human answers (drop --raw_label)"
        )
    texts = [a["answer"] if isinstance(a, dict) else str(a) for a in answers]
    return [normalize(t) for t in texts] if normalize else texts
