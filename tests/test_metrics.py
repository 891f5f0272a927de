"""Metric values computed by hand: VQA (both evaluator versions), GQA, NLVR2, COCO captions."""

from __future__ import annotations

import pytest

from vlcli.metrics import MetricsInputError, gqa_accuracy, nlvr_metrics, question_accuracy, vqa_accuracy
from vlcli.metrics.caption import JavaMissingError, caption_metrics, java_available, simple_tokenize
from vlcli.metrics.nlvr import consistency_key
from vlcli.metrics.vqa import normalize_answer, process_punctuation


def answers(*groups: tuple[int, str]) -> list[dict]:
    """10 official answer dicts from (count, answer) groups, with distinct answer ids."""
    out = [a for n, a in groups for _ in range(n)]
    assert len(out) == 10
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(out)]


# question_id: (prediction, human answers, answer_type, question_type, expected vlt5, expected official)
# acc(n) for n matching humans = [n*min(1,(n-1)/3) + (10-n)*min(1,n/3)] / 10: 0->0, 1->0.3, 2->0.6, 3->0.9, >=4->1
VQA_CASES = {
    # unanimous "yes": vlt5 normalises the prediction ("Yes." -> "yes", n=10 -> 1.0); official compares raw
    # strings when the humans agree ("Yes." != "yes" -> 0.0)
    1: ("Yes.", answers((10, "yes")), "yes/no", "is the", 1.0, 0.0),
    # vlt5: humans get punctuation only, "two" stays "two": n("2")=3 -> (3*2/3 + 7*1)/10 = 0.9
    # official: humans fully normalised, "two" -> "2": n=6 -> 1.0
    2: ("2", answers((3, "2"), (3, "two"), (4, "3")), "number", "how many", 0.9, 1.0),
    # digit-comma-digit: "1,000" -> "1000" on both sides in both versions: n=10 -> 1.0
    3: ("1,000 ", answers((5, "1,000"), (5, "1000")), "number", "how many", 1.0, 1.0),
    # articles: prediction "The dog" -> "dog"; vlt5 keeps the humans' "a dog"/"the dog": n=2 ->
    # (2*1/3 + 8*2/3)/10 = 0.6; official strips the articles of all 10 humans too: n=10 -> 1.0
    4: ("The dog", answers((2, "dog"), (4, "a dog"), (4, "the dog")), "other", "what is the", 0.6, 1.0),
    # contractions: prediction "dont" -> "don't"; vlt5 humans keep "dont": n("don't")=1 -> 9*(1/3)/10 = 0.3;
    # official maps the 9 "dont" -> "don't": n=10 -> 1.0
    5: ("dont", answers((1, "don't"), (9, "dont")), "other", "what is the", 0.3, 1.0),
    # number word vs unanimous digits: vlt5 "two" -> "2", n=10 -> 1.0; official raw "two" != "2" -> 0.0
    6: ("two", answers((10, "2")), "number", "how many", 1.0, 0.0),
    # split humans (spec example): 8 net, netting, mesh; "netting": 9 of 10 subsets hold it once -> 0.3
    7: ("netting", answers((8, "net"), (1, "netting"), (1, "mesh")), "other", "what is", 0.3, 0.3),
}


def vqa_annotations() -> list[dict]:
    return [
        {"question_id": qid, "image_id": 100 + qid, "answers": ans, "answer_type": atype, "question_type": qtype,
         "multiple_choice_answer": ans[0]["answer"]}
        for qid, (_, ans, atype, qtype, _, _) in VQA_CASES.items()
    ]


def vqa_predictions() -> dict[int, str]:
    return {qid: case[0] for qid, case in VQA_CASES.items()}


# vlt5:     [1.0, 0.9, 1.0, 0.6, 0.3, 1.0, 0.3] sum 5.1 / 7 = 0.728571 -> 72.86
#   yes/no 1.0 -> 100.0; number (0.9+1+1)/3 = 0.96667 -> 96.67; other (0.6+0.3+0.3)/3 = 0.4 -> 40.0
#   is the 100.0; how many 96.67; what is the (0.6+0.3)/2 -> 45.0; what is 30.0
# official: [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.3] sum 4.3 / 7 = 0.614286 -> 61.43
#   yes/no 0.0; number (1+1+0)/3 -> 66.67; other (1+1+0.3)/3 = 0.76667 -> 76.67
#   is the 0.0; how many 66.67; what is the 100.0; what is 30.0
VQA_EXPECTED = {
    "vlt5": {
        "overall": 72.86,
        "perAnswerType": {"yes/no": 100.0, "number": 96.67, "other": 40.0},
        "perQuestionType": {"is the": 100.0, "how many": 96.67, "what is the": 45.0, "what is": 30.0},
    },
    "official": {
        "overall": 61.43,
        "perAnswerType": {"yes/no": 0.0, "number": 66.67, "other": 76.67},
        "perQuestionType": {"is the": 0.0, "how many": 66.67, "what is the": 100.0, "what is": 30.0},
    },
}


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Yes.", "yes"), ("Two", "2"), ("a dog", "dog"), ("The Red-Bus", "red bus"), ("3.5", "3.5"),
        ("1,000", "1000"), ("1,000-2,000", "10002000"), ("3/4", "3 4"), ("left / right", "left right"),
        ("dont", "don't"), ("Im not sure", "im not sure"), ("none", "0"), ("(none)", "0"),
        ("hot dog!", "hot dog"), ("yes!!", "yes"), ("one-way", "1 way"), ("U.S.A.", "usa"), ("a.m.", "am"),
        ("10:30", "10:30"), ("girl's", "girl's"), ("the", ""), ("2.", "2"), ("  whats\tup\n", "what's up"),
    ],
)
def test_normalize_answer_spec_table(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_punctuation_alone_keeps_case_articles_and_number_words():
    # the part vlt5 applies to human answers: no lower-casing, no articles, no number map
    assert process_punctuation("The Red-Bus") == "The Red Bus"
    assert process_punctuation("two") == "two"
    # the official count bug: at most 32 periods are removed (re.UNICODE == 32 passed as count)
    assert process_punctuation("." * 40) == "." * 8


@pytest.mark.parametrize("mode", ["vlt5", "official"])
def test_question_accuracy_per_case(mode):
    col = 4 if mode == "vlt5" else 5
    for qid, case in VQA_CASES.items():
        got = question_accuracy(case[0], [a["answer"] for a in case[1]], mode)  # type: ignore[arg-type]
        assert got == pytest.approx(case[col]), (qid, mode)


def test_spec_worked_examples():
    gt = ["red"] * 2 + ["dark red"] + ["maroon"] * 7
    # red: n=2 -> 0.6; "Red." normalised -> 0.6; maroon n=7 -> 1.0; "dark red" n=1 -> 0.3
    assert [question_accuracy(p, gt) for p in ("red", "Red.", "maroon", "dark red")] == pytest.approx(
        [0.6, 0.6, 1.0, 0.3])
    assert question_accuracy("nets", ["net"] * 8 + ["netting", "mesh"]) == 0.0
    assert question_accuracy("net", ["net"] * 8 + ["netting", "mesh"]) == 1.0


@pytest.mark.parametrize("mode", ["vlt5", "official"])
def test_vqa_accuracy_overall_and_breakdowns(mode):
    res = vqa_accuracy(vqa_predictions(), vqa_annotations(), mode=mode)
    expected = VQA_EXPECTED[mode]
    assert res["mode"] == mode and res["questions"] == 7
    assert res["overall"] == expected["overall"]
    assert res["perAnswerType"] == expected["perAnswerType"]
    assert res["perQuestionType"] == expected["perQuestionType"]
    assert res["perQuestion"][2] == pytest.approx(0.9 if mode == "vlt5" else 1.0)


def test_vqa_accuracy_does_not_mutate_annotations():
    anns = vqa_annotations()
    vqa_accuracy(vqa_predictions(), anns, mode="official")
    assert anns[2]["answers"][0]["answer"] == "1,000"  # the official code rewrites GT answers in place


def test_vqa_questions_define_the_set():
    preds = vqa_predictions()
    res = vqa_accuracy({1: preds[1], 7: preds[7]}, vqa_annotations(), questions=[{"question_id": 1}, 7], mode="vlt5")
    assert res["overall"] == 65.0  # (1.0 + 0.3) / 2
    with pytest.raises(MetricsInputError, match="1 question\\(s\\) have no prediction: 7"):
        vqa_accuracy({1: "yes"}, vqa_annotations(), questions=[1, 7])
    with pytest.raises(MetricsInputError, match="unknown question ids: 2"):
        vqa_accuracy({1: "yes", 2: "2"}, vqa_annotations(), questions=[1])
    with pytest.raises(MetricsInputError, match="no annotation: 99"):
        vqa_accuracy({99: "yes"}, vqa_annotations())
    with pytest.raises(MetricsInputError, match="unknown VQA evaluation mode"):
        vqa_accuracy({1: "yes"}, vqa_annotations(), mode="v3")  # type: ignore[arg-type]


def test_vqa_official_rounding():
    # 1 of 3 questions right: 100/3 = 33.333... -> 33.33 (round to 2 decimals as setAccuracy does)
    anns = [{"question_id": i, "answers": answers((10, "yes")), "answer_type": "yes/no", "question_type": "is"}
            for i in (1, 2, 3)]
    assert vqa_accuracy({1: "yes", 2: "no", 3: "no"}, anns)["overall"] == 33.33


def test_gqa_exact_match():
    labels = {"q1": {"left": 1.0}, "q2": {"table": 1.0}, "q3": "Yes"}
    # exact, case-sensitive: q1 right, q2 wrong ("Table"), q3 wrong ("yes" != "Yes") -> 1/3 -> 33.33
    res = gqa_accuracy({"q1": "left", "q2": "Table", "q3": "yes"}, labels)
    assert res == {"accuracy": 33.33, "score": 1.0, "questions": 3}
    # stripped + lower-cased: all three right -> 100.0
    assert gqa_accuracy({"q1": " left", "q2": "Table", "q3": "yes"}, labels, normalize=True)["accuracy"] == 100.0
    with pytest.raises(MetricsInputError, match="unknown question ids: q9"):
        gqa_accuracy({"q1": "left", "q2": "Table", "q3": "yes", "q9": "x"}, labels)
    with pytest.raises(MetricsInputError, match="1 question.s. have no prediction: q3"):
        gqa_accuracy({"q1": "left", "q2": "Table"}, labels)


def test_nlvr_accuracy_and_consistency():
    labels = {
        "dev-850-0-0": 1, "dev-850-1-0": 0, "dev-850-2-0": 1,  # sentence dev-850--0, three image pairs
        "dev-850-0-1": "True", "dev-850-1-1": "False",  # sentence dev-850--1
        "dev-851-0-0": True,  # sentence dev-851--0
    }
    preds = {
        "dev-850-0-0": 1, "dev-850-1-0": 0, "dev-850-2-0": 0,  # one wrong -> group inconsistent
        "dev-850-0-1": "true", "dev-850-1-1": False,  # both right -> consistent
        "dev-851-0-0": "False",  # wrong -> inconsistent
    }
    res = nlvr_metrics(preds, labels)
    # accuracy: 2 + 2 + 0 = 4 of 6 -> 66.67; consistency: 1 of 3 groups -> 33.33
    assert res == {"accuracy": 66.67, "consistency": 33.33, "examples": 6, "groups": 3}
    assert consistency_key("dev-850-1-0") == "dev-850--0"  # the official key (pair index blanked)
    with pytest.raises(MetricsInputError, match="no prediction: dev-851-0-0"):
        nlvr_metrics({k: v for k, v in preds.items() if k != "dev-851-0-0"}, labels)
    with pytest.raises(MetricsInputError, match="not one of 0/1"):
        nlvr_metrics({**preds, "dev-851-0-0": "maybe"}, labels)


CAPTION_REFS = {
    1: ["A dog runs on the grass.", "a dog is running"],
    2: ["a black cat sits on a mat", "a cat"],
}
CAPTION_PREDS = {1: "a dog runs on the grass", 2: "A cat sits on the sofa."}


@pytest.fixture(scope="module")
def caption_scores() -> dict[str, float]:
    if not java_available():
        pytest.skip("no `java` on PATH (PTB tokenizer, METEOR)")
    return caption_metrics(CAPTION_PREDS, CAPTION_REFS)


def test_caption_bleu1_by_hand(caption_scores):
    # After PTB tokenisation (lower-case, "." dropped):
    #  image 1: 6 hypothesis words, all in ref 1 -> 6 clipped matches; closest ref length 6
    #  image 2: "a cat sits on the sofa": a, cat, sits, on match ref 1 -> 4; closest ref length 7 (|7-6| < |2-6|)
    # corpus: matches 10 / 12 words; ref length 13 > 12 -> brevity penalty exp(1 - 13/12)
    import math

    assert caption_scores["Bleu_1"] == pytest.approx(10 / 12 * math.exp(1 - 13 / 12), rel=1e-6)
    assert set(caption_scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert 0 < caption_scores["METEOR"] < 1 and 0 < caption_scores["ROUGE_L"] < 1
    assert caption_scores["Bleu_4"] < caption_scores["Bleu_1"]


def test_cider_prefers_the_identical_caption():
    refs = {1: ["a dog runs on the grass", "a brown dog running on grass"], 2: ["a red bus on a street"],
            3: ["two people eating pizza"]}
    same = {1: "a dog runs on the grass", 2: "a red bus on a street", 3: "two people eating pizza"}
    other = {1: "a cat sleeps on a sofa", 2: "a red bus on a street", 3: "two people eating pizza"}
    high = caption_metrics(same, refs, tokenizer="simple")
    low = caption_metrics(other, refs, tokenizer="simple")
    assert high["CIDEr"] > low["CIDEr"] > 0
    assert high["Bleu_1"] == pytest.approx(1.0) and "METEOR" not in high
    assert simple_tokenize("A Dog, running.") == "a dog running"


def test_caption_coverage_and_java_errors(monkeypatch):
    with pytest.raises(MetricsInputError, match="no predicted caption: 2"):
        caption_metrics({1: "a dog"}, CAPTION_REFS, tokenizer="simple")
    with pytest.raises(MetricsInputError, match="without references: 9"):
        caption_metrics({**CAPTION_PREDS, 9: "x"}, CAPTION_REFS, tokenizer="simple")
    monkeypatch.setattr("vlcli.metrics.caption.shutil.which", lambda name: None)
    with pytest.raises(JavaMissingError, match="needs Java"):
        caption_metrics(CAPTION_PREDS, CAPTION_REFS)
