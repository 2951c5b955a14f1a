r"""The extended suite's scorers (appendix Table 9) on hand-built records; every expected score is worked out by hand
in the comments from the official rules (VLMEvalKit's ``vqa_eval.py``, ``yorn.py`` ``Hallusion_rating``,
``dynamath.py``, ``image_mcq.py``)."""

from __future__ import annotations

import pytest

from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.eval.benchmarks import dynamath, hallusionbench, vqa

NAN = float("nan")
EXTENDED = [
    "blink", "chartqa_test", "cv_bench_2d", "dynamath", "hallusionbench", "mathverse_mini_vo", "textvqa_val",
    "visonlyqa_real", "visonlyqa_synthetic", "vstarbench",
]  # fmt: skip


def boxed(answer: str) -> str:
    return f"<think>Looking closely.</think> \\boxed{{{answer}}}"


def test_the_extended_suite_is_registered_with_its_headlines():
    assert sorted(name for name, bench in benchmarks.BENCHMARKS.items() if bench.group == "extended") == EXTENDED
    headlines = {name: benchmarks.get(name).headline for name in EXTENDED}
    assert headlines == {**dict.fromkeys(EXTENDED, "accuracy"), "hallusionbench": "overall"}
    # VLMEvalKit scores TextVQA and ChartQA by rule only; the others have its judge step.
    assert [name for name in EXTENDED if benchmarks.get(name).judge is None] == ["chartqa_test", "textvqa_val"]


# --- TextVQA: VQA accuracy --------------------------------------------------------------------------------------

NORMALISATION_CASES = [
    ("The Stop sign.", "stop sign"),  # period dropped, lower case, article dropped
    ("two dogs", "2 dogs"),  # number words as digits
    ("None", "0"),
    ("dont", "don't"),  # contractions get their apostrophe
    ("3.5", "3.5"),  # a period inside a number stays
    ("hello, world", "hello world"),  # ", " touches a space: deleted
    ("coca-cola", "coca cola"),  # "-" touches no space: a space
    ("1,000", "1000"),  # a comma between digits deletes every mark
    ("\n  An apple\t", "apple"),
    ("yes/no", "yes no"),
]


@pytest.mark.parametrize("answer, normalised", NORMALISATION_CASES)
def test_vqa_answer_normalisation(answer, normalised):
    assert vqa.normalize_vqa_answer(answer) == normalised


TEN = ["stop"] * 3 + ["stop sign"] * 6 + ["sign"]


@pytest.mark.parametrize(
    "prediction, expected",
    [
        # k of the ten answers equal the prediction; each answer left out in turn scores min(matches left / 3, 1):
        ("Stop", 0.9),  # k = 3: 3 left-outs see 2 (2/3), 7 see 3 (1): (2 + 7) / 10
        ("STOP SIGN.", 1.0),  # k = 6: every left-out sees >= 5
        ("a sign", 0.3),  # k = 1: its own left-out sees 0, the 9 others see 1 (1/3): 3 / 10
        ("yield", 0.0),
    ],
)
def test_vqa_score_averages_over_the_ten_leave_one_out_subsets(prediction, expected):
    assert vqa.vqa_score(prediction, TEN) == pytest.approx(expected)


def test_vqa_score_of_two_matches_is_point_six():
    # k = 2: 2 left-outs see 1 (1/3), 8 see 2 (2/3): (2/3 + 16/3) / 10 = 0.6
    assert vqa.vqa_score("red", ["red", "red"] + ["blue"] * 8) == pytest.approx(0.6)


def test_textvqa_accuracy_reads_the_answer_list_and_the_boxed_answer():
    answers = str(TEN)  # the TSV cell: the list's repr
    records = [
        {"question": "What does the sign say?", "answer": answers, "prediction": boxed("Stop")},  # 0.9
        {"question": "What does the sign say?", "answer": answers, "prediction": "<think>hm</think> A sign."},  # 0.3
        {"question": "What does the sign say?", "answer": answers, "prediction": "yield"},  # 0
    ]
    # (0.9 + 0.3 + 0) / 3 = 40 %.
    assert benchmarks.get("textvqa_val").score(records) == {"accuracy": pytest.approx(40.0), "count": 3.0}


def test_record_answers():
    assert vqa.record_answers("['a', 'b']") == ["a", "b"]
    assert vqa.record_answers("[2007, 2008]") == ["2007", "2008"]
    assert vqa.record_answers("[not a list") == ["[not a list"]
    assert vqa.record_answers("14") == ["14"]


# --- ChartQA: relaxed accuracy ----------------------------------------------------------------------------------

RELAXED_CASES = [
    ("12", "12.5", True),  # |0.5| / 12 = 4.2 % <= 5 %
    ("12", "12.7", False),  # 5.8 %
    ("-10", "-10.4", True),  # 4 % of |-10|
    ("20%", "0.2", True),  # "20%" reads as 0.2
    ("20%", "20.5%", True),  # 0.205 vs 0.2: 2.5 %
    ("20%", "20", False),  # 20 vs 0.2
    ("0", "0", True),  # a target of 0 compares as text ...
    ("0", "0.0", False),  # ... so "0.0" is wrong
    ("Yes", "yes", True),  # text: case-insensitive equality
    ("Yes", "yes.", False),
    ("1,000", "1000", False),  # "1,000" is no number for float(): text comparison
    ("1000", "1e3", True),  # float("1e3") is a number
]


@pytest.mark.parametrize("target, prediction, right", RELAXED_CASES)
def test_relaxed_correctness(target, prediction, right):
    assert vqa.relaxed_correctness(target, prediction) is right


def test_chartqa_accuracy_with_split_breakdown():
    records = [
        {"question": "Max value?", "answer": "12", "prediction": boxed(" 12.5 "), "split": "human"},  # right
        {"question": "Max value?", "answer": "12", "prediction": "12.7", "split": "human"},  # wrong
        {"question": "Which year?", "answer": "2019", "prediction": "2019", "split": "augmented"},  # right
    ]
    assert benchmarks.get("chartqa_test").score(records) == pytest.approx(
        {"accuracy": 200 / 3, "count": 3.0, "accuracy/human": 50.0, "accuracy/augmented": 100.0}
    )


# --- HallusionBench ---------------------------------------------------------------------------------------------


def hallusion(index: str, subcategory: str, answer: str, prediction: str) -> dict:
    return {"index": index, "category": index[:2], "l2-category": subcategory, "question": "Is it so?",
            "answer": answer, "prediction": prediction}  # fmt: skip


def test_hallusionbench_question_figure_and_all_accuracies():
    # index: category_subcategory_x_set_figure_question; set 0 of "chart" has figures 0 and 1, questions 0 and 1.
    records = [
        hallusion("VS_chart_1_0_0_0", "chart", "Yes", "Yes"),  # right
        hallusion("VS_chart_1_0_0_1", "chart", "No", "No"),  # right
        hallusion("VS_chart_1_0_1_0", "chart", "No", "Yes"),  # wrong
        hallusion("VS_chart_1_0_1_1", "chart", "Yes", boxed("yes")),  # right
        hallusion("VD_map_1_1_0_0", "map", "Yes", "unsure"),  # unreadable: wrong
    ]
    # aAcc 3/5. Figures (chart,0,0) all right, (chart,0,1) not, (map,1,0) not: fAcc 1/3. Questions (chart,0,q0) has
    # a wrong figure, (chart,0,q1) right on both figures, (map,1,q0) wrong: qAcc 1/3. overall = (60 + 2 * 100/3) / 3.
    assert hallusionbench.score(records) == pytest.approx(
        {
            "overall": 380 / 9, "aAcc": 60.0, "fAcc": 100 / 3, "qAcc": 100 / 3, "count": 5.0,
            # VS = chart (records 0-3): aAcc 3/4, one figure of two, one question of two.
            "aAcc/VS": 75.0, "fAcc/VS": 50.0, "qAcc/VS": 50.0, "aAcc/chart": 75.0, "fAcc/chart": 50.0,
            "qAcc/chart": 50.0,
            "aAcc/VD": 0.0, "fAcc/VD": 0.0, "qAcc/VD": 0.0, "aAcc/map": 0.0, "fAcc/map": 0.0, "qAcc/map": 0.0,
        }
    )  # fmt: skip


def test_hallusionbench_malformed_records_are_errors():
    with pytest.raises(ValueError, match=r"hallusionbench record 0: index 'VS_chart_3' has no set/figure/question"):
        hallusionbench.score([hallusion("VS_chart_3", "chart", "Yes", "Yes")])
    with pytest.raises(ValueError, match=r"record 0: hallusionbench answer 'maybe' is neither yes nor no"):
        hallusionbench.score([hallusion("VS_chart_1_0_0_0", "chart", "maybe", "Yes")])


# --- DynaMath ---------------------------------------------------------------------------------------------------


def dyna(qid: str, answer_type: str, answer: str, prediction: str, subject: str, level: str) -> dict:
    return {"qid": qid, "varid": "1", "question": "q", "answer_type": answer_type, "answer": answer,
            "prediction": prediction, "subject": subject, "knowledge_level": level}  # fmt: skip


def test_dynamath_average_and_worst_case():
    geometry, statistics = ("analytic geometry", "high school"), ("statistics", "elementary school")
    records = [
        dyna("1", "float", "2.094", '{"solution": "...", "short answer": "2.094"}', *geometry),  # JSON reply: right
        dyna("1", "float", "3.142", boxed("3.1416"), *geometry),  # |0.0004| <= 0.001: right
        dyna("1", "float", "1.5", boxed("1.6"), *geometry),  # wrong: seed 1 fails its worst case
        dyna("2", "multiple choice", "B", boxed("(B)"), *statistics),  # right
        dyna("2", "text", "May", boxed("may"), *statistics),  # "may" in "may": right
    ]
    # Average 4/5; worst case: seed 1 has a wrong variant, seed 2 none: 1/2.
    assert dynamath.score(records) == pytest.approx(
        {
            "accuracy": 80.0, "worst_case": 50.0, "count": 5.0,
            "accuracy/analytic geometry": 200 / 3, "worst_case/analytic geometry": 0.0,
            "accuracy/high school": 200 / 3, "worst_case/high school": 0.0,
            "accuracy/statistics": 100.0, "worst_case/statistics": 100.0,
            "accuracy/elementary school": 100.0, "worst_case/elementary school": 100.0,
        }
    )  # fmt: skip


DYNAMATH_CASES = {
    # The JSON reply VLMEvalKit's prompt asks for, its short answer with π: 2π = 6.2832 vs 6.283.
    "json_pi": ("float", "6.283", '{"solution": "s", "short answer": "2\u03c0"}', True),
    # No parse: for a choice, VLMEvalKit counts the letter among the first three characters ("A) BECAUSE ..." holds
    # A, B, C and E, so parse_answer finds no single letter).
    "choice_first_characters": ("multiple choice", "A", "A) because it is larger", True),
    "choice_first_characters_wrong": ("multiple choice", "B", "A) because it is larger", False),
    "choice_one_letter": ("multiple choice", "C", "The option C", False),  # T,H,E,O,P,I,N,C: two of A-E -> no parse
    "float_with_unit": ("float", "12", boxed("12 cm"), True),  # first token "12"
    "float_fraction_box": ("float", "0.5", boxed("\\frac{1}{2}"), True),  # extract_number
    "float_prose": ("float", "3", "it is about three", False),  # no number, no judge: wrong
    "text_substring": ("text", "5:00", boxed("5:0"), True),  # "5:0" occurs in "5:00" (VLMEvalKit's substring test)
    "text_empty_box": ("text", "May", boxed(""), False),  # an empty answer is no answer here
}


@pytest.mark.parametrize("answer_type, answer, prediction, right", DYNAMATH_CASES.values(), ids=DYNAMATH_CASES.keys())
def test_dynamath_reading_rules(answer_type, answer, prediction, right):
    record = dyna("1", answer_type, answer, prediction, "s", "l")
    assert dynamath.score([record])["accuracy"] == (100.0 if right else 0.0)


def test_dynamath_unknown_answer_type_is_an_error():
    with pytest.raises(ValueError, match=r"dynamath record 0: answer_type 'essay' is not one of"):
        dynamath.score([dyna("1", "essay", "x", "x", "s", "l")])


# --- Multiple choice: BLINK, VisOnlyQA, CV-Bench-2D, V*Bench ------------------------------------------------------


def choice(answer: str, prediction: str, **fields) -> dict:
    return {"question": "Which?", "A": "left", "B": "right", "answer": answer, "prediction": prediction, **fields}


def test_cv_bench_2d_accuracy_is_the_mean_over_sources():
    records = [
        choice("A", boxed("A"), source="ADE20K", task="Count"),  # right
        choice("B", boxed("A"), source="ADE20K", task="Relation"),  # wrong
        choice("B", "The answer is B", source="COCO", task="Count"),  # right
    ]
    # Pooled 2/3, but CVBench.report_accuracy averages the sources: (1/2 + 1/1) / 2 = 75 %.
    assert benchmarks.get("cv_bench_2d").score(records) == pytest.approx(
        {"accuracy": 75.0, "count": 3.0, "accuracy/ADE20K": 50.0, "accuracy/COCO": 100.0, "accuracy/Count": 100.0,
         "accuracy/Relation": 0.0}
    )  # fmt: skip
    with pytest.raises(ValueError, match="record 0: field 'source' is missing or empty"):
        benchmarks.get("cv_bench_2d").score([choice("A", "A")])


@pytest.mark.parametrize("name", ["blink", "visonlyqa_real", "visonlyqa_synthetic", "vstarbench"])
def test_plain_mcq_accuracy_per_category(name):
    records = [
        choice("A", boxed("left"), category="direct_attributes"),  # the option's text: right
        choice("B", "A", category="direct_attributes"),  # wrong
        choice("B", "<think>A?</think> B", category="relative_position"),  # right
        choice("A", "I cannot tell", category=NAN),  # unreadable: wrong, in no category
    ]
    assert benchmarks.get(name).score(records) == pytest.approx(
        {"accuracy": 50.0, "count": 4.0, "accuracy/direct_attributes": 50.0, "accuracy/relative_position": 100.0}
    )


# --- MathVerse Vision Only --------------------------------------------------------------------------------------

VISION_ONLY_QUERY = (
    "According to the question shown in the image, please directly answer the question and provide the correct "
    "option letter, e.g., A, B, C, D."
)


def vision_only(prediction: str, answer: str, question_type: str = "multi-choice", **fields) -> dict:
    return {"problem_version": "Vision Only", "question": VISION_ONLY_QUERY, "answer": answer,
            "question_type": question_type, "prediction": prediction, **fields}  # fmt: skip


def test_mathverse_vision_only():
    records = [
        vision_only(boxed("B"), "B"),  # the options are in the image: the boxed letter is the pick
        vision_only(boxed("(C)"), "B"),  # wrong
        vision_only(boxed("4.4"), "4.4 m", "free-form"),  # free_form_match ignores the unit
    ]
    assert benchmarks.get("mathverse_mini_vo").score(records) == pytest.approx(
        {"accuracy": 200 / 3, "count": 3.0, "accuracy/multi-choice": 50.0, "accuracy/free-form": 100.0}
    )
    with pytest.raises(ValueError, match=r"mathverse_mini_vo record 0: problem_version 'Vision Intensive' is not"):
        benchmarks.get("mathverse_mini_vo").score([vision_only(boxed("B"), "B", problem_version="Vision Intensive")])
