"""Evaluation metrics: VQA (official / VL-T5 evaluator versions), GQA, NLVR2, COCO captions.

Pure functions over in-memory predictions and references; :mod:`vlcli.metrics.files` reads the official
file formats. Nothing here prints.
"""

from vlcli.metrics.base import MetricsInputError
from vlcli.metrics.caption import JavaMissingError, caption_metrics, java_available
from vlcli.metrics.gqa import gqa_accuracy
from vlcli.metrics.nlvr import nlvr_metrics
from vlcli.metrics.vqa import normalize_answer, question_accuracy, vqa_accuracy

__all__ = [
    "JavaMissingError",
    "MetricsInputError",
    "caption_metrics",
    "gqa_accuracy",
    "java_available",
    "nlvr_metrics",
    "normalize_answer",
    "question_accuracy",
    "vqa_accuracy",
]
