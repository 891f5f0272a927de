"""VQA v2 accuracy with the official answer normalisation, in the two evaluator versions of spec §4.1.

The normalisation tables (contractions, number words, articles, punctuation marks) and the
period / comma regular expressions are data from the official VQA evaluation code,
``GT-Vision-Lab/VQA`` ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (Copyright (c) 2014,
Aishwarya Agrawal; BSD 2-Clause licence), as also copied by VL-T5 / VL-Adapter (``vqa_data.py``).

Modes:

- ``vlt5`` (official commit ``c4e6a0e``, what VL-T5 / VL-Adapter report): the prediction always gets the
  full normalisation; the 10 human answers get only the punctuation step (2+3), and only when they are
  not all identical.
- ``official`` (official HEAD ``a013f00``, what the evaluation server runs): human answers are always
  whitespace-cleaned; when they are not all identical, both sides get the full normalisation; when they
  are unanimous nothing more is normalised (raw string equality).

Accuracy of one question = mean over the 10 leave-one-out subsets of ``min(1, matches / 3)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from vlcli.metrics.base import MetricsInputError, check_ids, percent, preview

VqaEvalMode = Literal["official", "vlt5"]
MODES: tuple[str, ...] = ("official", "vlt5")
DEFAULT_MODE: VqaEvalMode = "vlt5"  # spec §4.1 [REC]: reproduce the paper's numbers by default

# --- data from the official VQA evaluator (BSD-2, GT-Vision-Lab/VQA) -----------------------------------
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've",
    "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: tuple[str, ...] = ("a", "an", "the")
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# The official look-behind "(?!<=\d)" is malformed (a look-ahead for the text "<=" + digit), so it never
# applies: every "." not followed by a digit is deleted. Kept as is for fidelity (spec §9.5).
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (== 32) as the *count* argument of sub(): at most 32 periods go.
_PERIOD_COUNT = int(re.UNICODE)
# ---------------------------------------------------------------------------------------------------------


def clean_whitespace(text: str) -> str:
    """Step 1: newlines and tabs become spaces; outer whitespace is stripped."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Steps 2+3: the official ``processPunctuation`` (punctuation marks, then periods)."""
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        # The condition looks at the *original* string, not the one being rewritten (as the official code).
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Steps 4-6: lower-case, number words to digits, drop articles, contractions table, single spaces."""
    words = []
    for word in text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """The full normalisation (steps 1-6) that both versions apply to a prediction."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))


def _leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    # The official code drops the current answer *dict* by inequality; answer dicts carry a distinct
    # answer_id, so that is "the other 9" by position, which is what we do.
    scores = []
    for i in range(len(answers)):
        matches = sum(1 for j, ans in enumerate(answers) if j != i and ans == prediction)
        scores.append(min(1.0, matches / 3))
    return float(sum(scores)) / len(scores)


def question_accuracy(prediction: str, answers: Sequence[str], mode: VqaEvalMode = DEFAULT_MODE) -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (usually 10)."""
    if mode not in MODES:
        raise MetricsInputError(f"unknown VQA evaluation mode {mode!r}; use one of: {', '.join(MODES)}")
    if not answers:
        raise MetricsInputError("a VQA question has no human answers to score against")
    if mode == "vlt5":
        pred = normalize_answer(prediction)
        gts = list(answers)
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
    else:
        pred = clean_whitespace(prediction)
        gts = [clean_whitespace(a) for a in answers]
        if len(set(gts)) > 1:
            gts = [process_digit_article(process_punctuation(a)) for a in gts]
            pred = process_digit_article(process_punctuation(pred))
    return _leave_one_out(pred, gts)


def _index_annotations(annotations: Mapping[Any, Mapping[str, Any]] | Iterable[Mapping[str, Any]]
                       ) -> dict[Any, Mapping[str, Any]]:
    if isinstance(annotations, Mapping):
        return dict(annotations)
    return {ann["question_id"]: ann for ann in annotations}


def _answers(ann: Mapping[str, Any]) -> list[str]:
    return [a["answer"] if isinstance(a, Mapping) else str(a) for a in ann["answers"]]


def vqa_accuracy(
    predictions: Mapping[Any, str],
    annotations: Mapping[Any, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    questions: Iterable[Any] | None = None,
    mode: VqaEvalMode = DEFAULT_MODE,
    digits: int = 2,
) -> dict[str, Any]:
    """Score ``question_id -> answer`` predictions against official-format annotations.

    ``annotations``: the official ``annotations`` list (or a dict keyed by question id), each with
    ``answers`` (10 dicts with ``answer``), ``answer_type`` and ``question_type``.
    ``questions``: question ids or official question dicts defining the evaluated set (every one needs a
    prediction); ``None`` scores exactly the predicted questions (VL-T5's behaviour).
    Returns ``overall``, ``perAnswerType``, ``perQuestionType`` (percentages rounded to ``digits`` as the
    official code does), ``perQuestion`` (accuracy in [0, 1]), ``mode`` and ``questions`` (count).
    """
    if mode not in MODES:
        raise MetricsInputError(f"unknown VQA evaluation mode {mode!r}; use one of: {', '.join(MODES)}")
    gts = _index_annotations(annotations)
    if questions is None:
        qids = list(predictions)
    else:
        qids = [q["question_id"] if isinstance(q, Mapping) else q for q in questions]
        check_ids(predictions, qids, "question(s)", "unknown question ids")
    no_gt = [q for q in qids if q not in gts]
    if no_gt:
        raise MetricsInputError(f"{len(no_gt)} question(s) have no annotation: {preview(no_gt)}")

    per_question: dict[Any, float] = {}
    by_qtype: dict[str, list[float]] = {}
    by_atype: dict[str, list[float]] = {}
    for qid in qids:
        ann = gts[qid]
        acc = question_accuracy(predictions[qid], _answers(ann), mode)
        per_question[qid] = acc
        by_qtype.setdefault(str(ann.get("question_type", "")), []).append(acc)
        by_atype.setdefault(str(ann.get("answer_type", "")), []).append(acc)
    return {
        "mode": mode,
        "questions": len(qids),
        "overall": percent(list(per_question.values()), digits),
        "perAnswerType": {k: percent(v, digits) for k, v in by_atype.items()},
        "perQuestionType": {k: percent(v, digits) for k, v in by_qtype.items()},
        "perQuestion": per_question,
    }
