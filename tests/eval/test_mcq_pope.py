"""The MCQ benchmarks (A-OKVQA, RealWorldQA, MMStar) and POPE on small hand-built records; every expected score is
worked out by hand in the comments."""

from __future__ import annotations

import pytest

from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.eval.benchmarks import mcq, pope

NAN = float("nan")
CUPS = {"A": "red cup", "B": "blue cup", "C": "green bottle", "D": "cat"}


def mcq_record(answer: str, prediction: str, **fields) -> dict:
    return {"question": "Which object is tallest?", **CUPS, "answer": answer, "prediction": prediction, **fields}


def test_registered_in_the_perception_group_with_their_headlines():
    for name, headline in [
        ("a_okvqa", "accuracy"),
        ("realworldqa", "accuracy"),
        ("mmstar", "accuracy"),
        ("pope", "f1"),
    ]:
        benchmark = benchmarks.get(name)
        assert (benchmark.group, benchmark.headline) == ("perception", headline)


def test_record_options_skip_missing_none_nan_and_blank_cells():
    record = {"A": "x", "B": NAN, "C": "", "D": "  ", "E": None, "F": 3, "I": "not an option column"}
    assert mcq.record_options(record) == {"A": "x", "F": "3"}


def test_a_okvqa_accuracy():
    records = [
        mcq_record("B", "<think>…</think>\\boxed{B}"),  # hit: boxed letter
        mcq_record("A", "\\boxed{Red Cup}"),  # hit: the option given as its text
        mcq_record("C", "A or C"),  # miss: two letters, no option text -> None
        mcq_record("D", "The answer is D", E=NAN, F=""),  # hit: blank E/F are no options
    ]
    # 3 hits of 4.
    assert benchmarks.get("a_okvqa").score(records) == {"accuracy": 75.0, "count": 4}


def test_mmstar_accuracy_per_category():
    records = [
        mcq_record("A", "\\boxed{A}", category="coarse perception"),  # hit
        mcq_record("B", "\\boxed{C}", category="coarse perception"),  # miss
        mcq_record("C", "green bottle", category="math"),  # hit: option text
        mcq_record("D", "\\boxed{D}", category=NAN),  # hit, in no category
    ]
    # Overall 3/4; coarse perception 1/2; math 1/1.
    assert benchmarks.get("mmstar").score(records) == {
        "accuracy": 75.0,
        "count": 4,
        "accuracy/coarse perception": 50.0,
        "accuracy/math": 100.0,
    }


def test_realworldqa_scores_open_questions_by_normalised_exact_match():
    records = [
        {
            "question": "How many cars?",
            "answer": "2",
            "prediction": "<think>one, two</think> Two.",
        },  # "two" -> "2": hit
        {"question": "Uphill or downhill?", "answer": "Downhill", "prediction": "\\boxed{downhill}"},  # hit
        {"question": "How many lanes?", "answer": "3", "prediction": "3 lanes"},  # miss: exact match only
        {"question": "Which way?", "A": "left", "B": "right", "answer": "B", "prediction": "\\boxed{A}"},  # miss
        mcq_record("C", "\\boxed{(C)}"),  # hit
    ]
    # 3 hits of 5.
    assert benchmarks.get("realworldqa").score(records) == {"accuracy": 60.0, "count": 5}


def test_normalize_open_answer():
    assert mcq.normalize_open_answer("  Ten.. ") == "10"
    assert mcq.normalize_open_answer("Two cars") == "two cars"  # only a whole number word is mapped
    assert mcq.normalize_open_answer("3.5") == "3.5"


@pytest.mark.parametrize("name", ["a_okvqa", "realworldqa", "mmstar"])
def test_mcq_all_right_and_all_wrong(name):
    right = [mcq_record("A", "\\boxed{A}"), mcq_record("D", "cat")]
    wrong = [mcq_record("A", "\\boxed{B}"), mcq_record("D", "I cannot tell")]
    assert benchmarks.get(name).score(right)["accuracy"] == 100.0
    assert benchmarks.get(name).score(wrong)["accuracy"] == 0.0


@pytest.mark.parametrize("name", ["a_okvqa", "realworldqa", "mmstar", "pope"])
def test_an_empty_record_list_is_an_error(name):
    with pytest.raises(ValueError, match="no records"):
        benchmarks.get(name).score([])


def test_mcq_data_errors():
    with pytest.raises(ValueError, match="record 1: answer 'E' is not one of its option letters"):
        benchmarks.get("mmstar").score([mcq_record("A", "A"), mcq_record("E", "E")])
    with pytest.raises(ValueError, match="record 0 has no options"):
        benchmarks.get("a_okvqa").score([{"question": "How many?", "answer": "2", "prediction": "2"}])


def pope_record(category, answer: str, prediction: str) -> dict:
    return {
        "question": "Is there a dog in the image?",
        "answer": answer,
        "category": category,
        "prediction": prediction,
    }


def test_pope_overall_and_per_split():
    records = [
        pope_record("adversarial", "yes", "Yes"),  # TP
        pope_record("adversarial", "yes", "\\boxed{No}"),  # FN
        pope_record("adversarial", "no", "No, there is none."),  # TN
        pope_record("adversarial", "no", "Yes"),  # FP
        pope_record("popular", "Yes", "There is a dog."),  # unreadable on yes: FN, wrong
        pope_record("popular", "No", "I am not sure"),  # unreadable on no: TN for F1, wrong for accuracy
        pope_record("popular", "YES", "yes"),  # TP
        pope_record("random", " no ", "no"),  # TN
        pope_record("random", "yes", "YES."),  # TP
    ]
    scores = benchmarks.get("pope").score(records)
    expected = {
        # 9 pairs: right 1, 3, 7, 8, 9 -> 5/9; TP 3, predicted yes 4 (1, 4, 7, 9), actual yes 5 (1, 2, 5, 7, 9):
        # P = 3/4, R = 3/5, F1 = 2 * 0.45 / 1.35 = 2/3.
        "accuracy": 500 / 9,
        "precision": 75.0,
        "recall": 60.0,
        "f1": 200 / 3,
        "count": 9,
        # adversarial: right 2/4; TP 1, predicted yes 2, actual yes 2: P = R = F1 = 1/2.
        "accuracy/adversarial": 50.0,
        "precision/adversarial": 50.0,
        "recall/adversarial": 50.0,
        "f1/adversarial": 50.0,
        "count/adversarial": 4,
        # popular: right 1/3; TP 1, predicted yes 1, actual yes 2: P = 1, R = 1/2, F1 = 1 / 1.5 = 2/3.
        "accuracy/popular": 100 / 3,
        "precision/popular": 100.0,
        "recall/popular": 50.0,
        "f1/popular": 200 / 3,
        "count/popular": 3,
        # random: both right.
        "accuracy/random": 100.0,
        "precision/random": 100.0,
        "recall/random": 100.0,
        "f1/random": 100.0,
        "count/random": 2,
    }
    assert scores == pytest.approx(expected)
    # The headline pools the splits' questions; the mean of the splits' F1 would be (50 + 66.7 + 100) / 3 = 72.2.
    assert scores[benchmarks.get("pope").headline] == pytest.approx(200 / 3)


def test_pope_counts_a_question_once_per_split_it_belongs_to():
    records = [
        pope_record("adversarial,popular", "yes", "No"),  # FN, in two splits
        pope_record("random", "yes", "yes"),  # TP
        pope_record(NAN, "no", "no"),  # TN, in no split: overall only
    ]
    scores = pope.score_pope(records)
    # Overall pairs FN, FN, TP, TN: right 2/4; P = 1/1, R = 1/3, F1 = 2 * (1/3) / (4/3) = 1/2.
    # Counting the first question once would give accuracy 2/3, R = 1/2, F1 = 2/3.
    assert scores["accuracy"] == pytest.approx(50.0)
    assert scores["recall"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(50.0)
    assert scores["count"] == 3
    assert (scores["count/adversarial"], scores["count/popular"], scores["count/random"]) == (1, 1, 1)
    assert (scores["f1/adversarial"], scores["f1/popular"], scores["f1/random"]) == (0.0, 0.0, 100.0)
    assert not any(key.endswith("/nan") for key in scores)


def test_pope_all_right_all_wrong_and_zero_denominators():
    all_right = pope.score_pope([pope_record("random", "yes", "yes"), pope_record("random", "no", "no")])
    assert {key: all_right[key] for key in ("accuracy", "precision", "recall", "f1")} == dict.fromkeys(
        ("accuracy", "precision", "recall", "f1"), 100.0
    )
    # All wrong: TP 0 of 1 predicted yes and of 1 actual yes: P = R = 0, and F1's denominator P + R is 0 -> 0.
    all_wrong = pope.score_pope([pope_record("random", "yes", "no"), pope_record("random", "no", "yes")])
    assert {key: all_wrong[key] for key in ("accuracy", "precision", "recall", "f1")} == dict.fromkeys(
        ("accuracy", "precision", "recall", "f1"), 0.0
    )
    # Only "no" questions, all right: no predicted and no actual "yes", so P, R and F1 are 0 while accuracy is 100.
    only_no = pope.score_pope([pope_record("popular", "no", "No.")])
    assert (only_no["accuracy"], only_no["precision"], only_no["recall"], only_no["f1"]) == (100.0, 0.0, 0.0, 0.0)


def test_pope_rejects_an_answer_that_is_not_yes_or_no():
    with pytest.raises(ValueError, match="record 1: POPE answer 'maybe' is neither yes nor no"):
        pope.score_pope([pope_record("random", "yes", "yes"), pope_record("random", "maybe", "yes")])
