"""GQA (spec data-and-eval §1.2): LXMERT-format files ``GQA/{split}.json``.

Input ``{prompt}{sent}{post_prompt}`` (prompt ``gqa: ``, or the original's ``gpa: `` with
``--legacy_gqa_prompt``) truncated to ``max_text_length``; target = the answer of ``label`` (drawn
∝ score when there are several), untruncated, unweighted loss. Question ids are strings.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcli.tasks.base import Example, Task, TaskDataError, read_json, require, write_json_rows

if TYPE_CHECKING:
    from vlcli.config.settings import Settings


class GQATask(Task):
    """GQA with generated answers."""

    name = "gqa"
    examples_file = "gqa.questions"
    splits = {"train": "train,valid", "valid": "testdev", "test": "submit", "submit": "submit"}
    submission_file = "submit.json"

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        path = self.data_path(settings, "gqa.questions", split)
        records = read_json(path, f"GQA question file of split {split!r}")
        if not isinstance(records, list):
            raise TaskDataError(f"{path}: expected a JSON list of questions; use the LXMERT-format GQA/{split}.json")
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        for i, rec in enumerate(records):
            require(rec, ("img_id", "sent", "question_id"), path, i)
            qid = str(rec["question_id"])
            ex = Example(qid, (str(rec["img_id"]),), self.input_text(settings, rec["sent"]))
            label = rec.get("label") or {}
            if not isinstance(label, dict):
                raise TaskDataError(f"{path}: entry {i}: 'label' must map answers to scores; use the LXMERT format")
            label = {a: float(s) for a, s in label.items() if float(s) > 0}
            if train and label:
                total = sum(label.values())
                ex.targets = list(label)
                ex.probs = [label[a] / total for a in ex.targets]
            examples.append(ex)
            references[qid] = label
        return examples, references

    def labelled(self, reference: Any) -> bool:
        return bool(reference)

    def score(self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
              settings: Settings) -> dict[str, Any]:
        from vlcli.metrics.gqa import gqa_accuracy

        return {"accuracy": gqa_accuracy(dict(predictions), dict(references))["accuracy"]}

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """GQA format: ``[{"questionId": str, "prediction": str}, ...]``."""
        write_json_rows(path, [{"questionId": str(qid), "prediction": str(p)} for qid, p in rows])
