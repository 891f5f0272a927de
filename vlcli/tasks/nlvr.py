"""NLVR2 (spec data-and-eval §1.3): ``nlvr/{split}.json`` with two images per statement.

Visual input = img0 then img1, batched as (B, 2, N, F); input ``{prompt}{sent}{post_prompt}``
**without truncation** (as the original); target ``true`` / ``false``. Prediction compares the
logits of the first token of each target at the first answer position (no generation).
"""

from __future__ import annotations

import csv
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcli.errors import VlcliError
from vlcli.tasks.base import Example, Task, TaskDataError, read_json, require

if TYPE_CHECKING:
    from vlcli.config.settings import Settings
    from vlcli.model.tokenizer import VLTokenizer
    from vlcli.model.vl import VLModel

TRUE, FALSE = "true", "false"


class NLVRTask(Task):
    """NLVR2 true/false statements about an image pair."""

    name = "nlvr"
    examples_file = "nlvr.annotations"
    splits = {"train": "train", "valid": "valid", "test": "test", "submit": "test"}
    submission_file = "submit.csv"

    def input_length(self, settings: Settings) -> int | None:
        return None  # the original never truncates NLVR2 statements

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        path = self.data_path(settings, "nlvr.annotations", split)
        records = read_json(path, f"NLVR2 file of split {split!r}")
        if not isinstance(records, list):
            raise TaskDataError(f"{path}: expected a JSON list of statements; use the original nlvr/{split}.json")
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        for i, rec in enumerate(records):
            require(rec, ("identifier", "img0", "img1", "sent"), path, i)
            images = (str(rec["img0"]), str(rec["img1"]))
            ex = Example(str(rec["identifier"]), images, self.input_text(settings, rec["sent"]))
            label = rec.get("label")
            if label is not None:
                if label not in (0, 1, True, False):
                    raise TaskDataError(f"{path}: entry {i}: 'label' must be 0 or 1; use the original format")
                references[ex.id] = bool(label)
            if train:
                if label is None:
                    raise TaskDataError(f"{path}: entry {i} has no 'label'; training needs a labelled split")
                ex.targets = [TRUE if label else FALSE]
            examples.append(ex)
        return examples, references

    def candidate_ids(self, tokenizer: VLTokenizer) -> list[int]:
        """Ids scored for ``true`` and ``false``: the first token of each target as the dataset encodes it.

        BART's encoded targets start with ``<s>``, which the model's answer prefix already holds, so the
        first token after it is taken.
        """
        out = []
        bos = getattr(tokenizer.hf, "bos_token_id", None)
        for word in (TRUE, FALSE):
            ids = tokenizer.encode(word)
            if bos is not None and len(ids) > 1 and ids[0] == bos:
                ids = ids[1:]
            out.append(ids[0])
        if out[0] == out[1]:
            raise VlcliError(
                "the tokenizer encodes 'true' and 'false' with the same first token; "
                "NLVR2 needs the backbone's own tokenizer"
            )
        return out

    def predict(
        self, model: VLModel, batch: Mapping[str, Any], settings: Settings, tokenizer: VLTokenizer
    ) -> dict[Hashable, str]:
        """``{identifier: "true" | "false"}`` from one decoder step."""
        visual = {"vis_attention_mask": batch["vis_attention_mask"]} if "vis_attention_mask" in batch else {}
        logits = model.score_candidates(
            batch["input_ids"],
            self.candidate_ids(tokenizer),
            batch["attention_mask"],
            batch["vis_feats"],
            batch["vis_pos"],
            task=self.name,
            **visual,
        )
        answers = [TRUE if bool(t > f) else FALSE for t, f in logits.tolist()]
        return dict(zip(batch["ids"], answers, strict=True))

    def score(self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
              settings: Settings) -> dict[str, Any]:
        """Accuracy and consistency (official grouping of statements by their identifier)."""
        from vlcli.metrics.nlvr import nlvr_metrics

        result = nlvr_metrics(dict(predictions), dict(references))
        return {"accuracy": result["accuracy"], "consistency": result["consistency"]}

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """Official CSV: ``identifier,True|False`` per line, no header (as the original's submit.csv)."""
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            for identifier, pred in rows:
                writer.writerow([identifier, _as_bool_word(pred, identifier)])


def _as_bool_word(pred: Any, identifier: Hashable) -> str:
    """``True`` / ``False`` from a bool, 0/1 or the text ``true``/``false`` (any case)."""
    if isinstance(pred, str):
        key = pred.strip().lower()
        if key in (TRUE, FALSE):
            return "True" if key == TRUE else "False"
    elif pred in (0, 1, True, False):
        return "True" if pred else "False"
    raise VlcliError(f"NLVR2 prediction for {identifier!r} is {pred!r}; predictions must be true or false")
