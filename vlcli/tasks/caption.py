"""COCO captioning on the Karpathy split (spec data-and-eval §1.4): ``COCO/dataset_coco.json``.

Training has one example per reference sentence; validation / test one per image with every
reference. The input is the task prompt alone (``--no_prefix``: empty; ``--prefix span|denoise|mask``:
the original's fixed prefixes); the target is the caption truncated to ``gen_max_length``; the loss
is the token mean over the batch. Predictions are generated with ``--num_beams``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcli.errors import NotImplementedYetError
from vlcli.tasks.base import Example, Task, TaskDataError, read_json, require, write_json_rows

if TYPE_CHECKING:
    from vlcli.config.settings import Settings

PREFIXES = {"span": "span prediction:", "denoise": "denoise text: <mask>", "mask": "<mask>"}
SPLIT_ALIASES = {"restval": "train"}
COCO_NUMBER = re.compile(r"(\d+)$")


class CaptionTask(Task):
    """COCO captions (Karpathy split)."""

    name = "caption"
    examples_file = "caption.annotations"
    primary_metric = "CIDEr"
    splits = {"train": "karpathy_train", "valid": "karpathy_val", "test": "karpathy_test", "submit": "karpathy_test"}
    loss_reduction = "token"
    uses_beams = True
    submission_file = "captions.json"

    def target_length(self, settings: Settings) -> int | None:
        return self.run(settings).gen_max_length

    def caption_input(self, settings: Settings) -> str:
        """The encoder text of every caption example."""
        ds = settings.dataset
        if ds.oscar_tags:
            raise NotImplementedYetError(
                "--oscar_tags needs the BUTD detector's object classes, which feature stores do not provide; "
                "drop --oscar_tags"
            )
        if ds.no_prefix:
            return ""
        if ds.prefix is None:
            return self.run(settings).prompt
        if ds.prefix not in PREFIXES:
            raise TaskDataError(f"--prefix {ds.prefix!r}: unknown captioning prefix; use one of {', '.join(PREFIXES)}")
        return PREFIXES[ds.prefix]

    def load_examples(
        self, settings: Settings, split: str, *, train: bool
    ) -> tuple[list[Example], dict[Hashable, Any]]:
        path = self.data_path(settings, "caption.annotations")
        data = read_json(path, "Karpathy caption split file")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise TaskDataError(f"{path}: expected an object with an 'images' list; use the Karpathy dataset_coco.json")
        want = split.rsplit("_", 1)[-1]
        if want not in ("train", "val", "test"):
            raise TaskDataError(f"caption split {split!r}: use karpathy_train, karpathy_val or karpathy_test")
        text = self.caption_input(settings)
        examples: list[Example] = []
        references: dict[Hashable, Any] = {}
        for i, img in enumerate(data["images"]):
            require(img, ("filename", "split", "sentences"), path, i)
            if SPLIT_ALIASES.get(img["split"], img["split"]) != want:
                continue
            image_id = Path(str(img["filename"])).stem
            refs = [str(s["raw"]).strip() for s in img["sentences"]]
            references[image_id] = refs
            if train:
                for j, (s, ref) in enumerate(zip(img["sentences"], refs, strict=True)):
                    sid = s.get("sentid", f"{image_id}#{j}") if isinstance(s, dict) else f"{image_id}#{j}"
                    examples.append(Example(sid, (image_id,), text, targets=[ref]))
            else:
                examples.append(Example(image_id, (image_id,), text))
        return examples, references

    def labelled(self, reference: Any) -> bool:
        return bool(reference)

    def score(self, predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any],
              settings: Settings) -> dict[str, Any]:
        """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when available) via pycocoevalcap."""
        from vlcli.metrics.caption import caption_metrics

        return dict(caption_metrics(dict(predictions), dict(references)))

    def write_rows(self, rows: list[tuple[Hashable, Any]], path: Path) -> None:
        """COCO caption server format: ``[{"image_id": int, "caption": str}, ...]``."""
        write_json_rows(path, [{"image_id": coco_number(i), "caption": str(c)} for i, c in rows])


def coco_number(image_id: Hashable) -> int:
    """``COCO_val2014_000000391895`` -> 391895 (the numeric id the COCO server expects)."""
    if isinstance(image_id, int):
        return image_id
    match = COCO_NUMBER.search(str(image_id))
    if match is None:
        raise TaskDataError(f"image id {image_id!r} has no trailing COCO number; caption ids must be COCO file stems")
    return int(match.group(1))
