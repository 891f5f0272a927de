"""LXMERT's QA answer table (spec data-and-eval §1.8): ``lxmert/all_ans.json`` and its normalisation.

A pretraining QA label ``{answer: score}`` keeps the answers that, once normalised (lower-case, trailing
period and a leading article removed, number words -> digits, ``grey`` -> ``gray``, ``a man`` -> ``man``
...), are in the table; the others are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlcli.tasks.base import TaskDataError, read_json

# The original's rewrites after article stripping (its ``ANS_CONVERT``): "a man" etc. never survive the
# article stripping, the entries are kept for fidelity and for answers like "the the man".
REWRITES: dict[str, str] = {
    "a man": "man",
    "the man": "man",
    "a woman": "woman",
    "the woman": "woman",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "grey": "gray",
}
ARTICLES = ("a ", "an ", "the ")


def normalize_answer(answer: str) -> str:
    """LXMERT's ``convert_ans``: lower-case, drop one trailing period, strip the leading articles
    ``a``, ``an``, ``the`` (each at most once, in that order), then apply :data:`REWRITES`."""
    if not answer:
        return ""
    ans = answer.lower()
    if ans.endswith("."):
        ans = ans[:-1].strip()
    for article in ARTICLES:
        if ans.startswith(article):
            ans = ans[len(article) :].strip()
    return REWRITES.get(ans, ans)


class AnswerTable:
    """The set of answers pretraining QA may target (the ``ans`` of every ``all_ans.json`` entry)."""

    def __init__(self, answers: set[str]):
        self.answers = answers

    @classmethod
    def from_file(cls, path: Path) -> AnswerTable:
        """Read ``all_ans.json``, a JSON list of ``{"ans": str, ...}``; TaskDataError naming the file."""
        data = read_json(path, "LXMERT answer table (all_ans.json)")
        if not isinstance(data, list):
            raise TaskDataError(
                f'{path}: expected a JSON list of {{"ans": ...}} entries; use LXMERT\'s all_ans.json'
            )
        answers: set[str] = set()
        for i, entry in enumerate(data):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("ans"), str):
                raise TaskDataError(f"{path}: entry {i} has no 'ans' text; use LXMERT's all_ans.json")
            answers.add(entry["ans"])
        return cls(answers)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self.answers

    def normalize_label(self, label: Mapping[str, Any]) -> dict[str, float]:
        """``{normalised answer: score}`` for the answers in the table.

        Two answers that normalise to the same one keep the higher score; the original let the later
        one overwrite the earlier (``label[new] = label.pop(old)``), so the result depended on key order.
        """
        out: dict[str, float] = {}
        for answer, score in label.items():
            new = normalize_answer(str(answer))
            if new in self.answers:
                out[new] = max(float(score), out.get(new, float("-inf")))
        return out
