"""Task registry: one module per task (dataset, prompt, collate, prediction, submission writer).

    from vlcli.tasks import get_task
    task = get_task("vqa")
    ds = task.build_dataset(settings, "karpathy_train", tokenizer, store, train=True)
    loader = DataLoader(ds, batch_size=settings.derived.per_task["vqa"].batch_size, collate_fn=ds.collate)
    out = model(**task.model_inputs(batch))
    preds = task.predict(model, batch, settings, tokenizer)
    task.write_submission(preds, test_ds, "snap/run/submit.json")
"""

from __future__ import annotations

import difflib

from vlcli.tasks.base import Example, SubmissionError, Task, TaskDataError, TaskDataset, UnknownTaskError
from vlcli.tasks.caption import CaptionTask
from vlcli.tasks.gqa import GQATask
from vlcli.tasks.nlvr import NLVRTask
from vlcli.tasks.vqa import VQATask

TASKS: dict[str, Task] = {t.name: t for t in (VQATask(), GQATask(), NLVRTask(), CaptionTask())}
"""Implemented tasks by name."""


def get_task(name: str) -> Task:
    """The task called ``name``; UnknownTaskError (with the closest name) otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UnknownTaskError(
            f"task {name!r} is not implemented; {hint}use one of {', '.join(TASKS)}"
        ) from None


__all__ = [
    "TASKS",
    "Example",
    "SubmissionError",
    "Task",
    "TaskDataError",
    "TaskDataset",
    "UnknownTaskError",
    "get_task",
]
