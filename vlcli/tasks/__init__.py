"""Task registry: one module per task (dataset, prompt, collate, prediction, metrics, submission writer).

    from vlcli.tasks import get_task
    task = get_task("vqa")
    ds = task.build_dataset(settings, "karpathy_train", tokenizer, task.open_store(settings, "karpathy_train"),
                            train=True)
    loader = DataLoader(ds, batch_size=settings.derived.per_task["vqa"].batch_size, collate_fn=ds.collate)
    out = model(**task.model_inputs(batch))
    preds = task.predict(model, batch, settings, tokenizer)
    task.write_submission(preds, test_ds, "snap/run/submit.json")

Task modules are imported on first use (``vlcli --help`` stays light).
"""

from __future__ import annotations

import difflib
import importlib

from vlcli.tasks.base import Example, SubmissionError, Task, TaskDataError, TaskDataset, UnknownTaskError

TASK_CLASSES: dict[str, str] = {
    "vqa": "vlcli.tasks.vqa:VQATask",
    "gqa": "vlcli.tasks.gqa:GQATask",
    "nlvr": "vlcli.tasks.nlvr:NLVRTask",
    "caption": "vlcli.tasks.caption:CaptionTask",
    "refcoco": "vlcli.tasks.refcoco:RefCOCOTask",
    "vcr": "vlcli.tasks.vcr:VCRTask",
    "cls": "vlcli.tasks.cls:ClassificationTask",
    "pretrain": "vlcli.tasks.pretrain:PretrainTask",
}
"""Task name -> ``module:Class``."""

_INSTANCES: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The task called ``name``; UnknownTaskError (with the closest name) otherwise."""
    if name not in _INSTANCES:
        spec = TASK_CLASSES.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, list(TASK_CLASSES), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownTaskError(f"task {name!r} is not implemented; {hint}use one of {', '.join(TASK_CLASSES)}")
        module, _, cls = spec.partition(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), cls)()
    return _INSTANCES[name]


__all__ = [
    "TASK_CLASSES",
    "Example",
    "SubmissionError",
    "Task",
    "TaskDataError",
    "TaskDataset",
    "UnknownTaskError",
    "get_task",
]
