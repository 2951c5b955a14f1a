r"""The visual-math benchmarks (MathVista, MATH-Vision, MathVerse Vision-Intensive, WeMath) on hand-built records
whose official outcomes are worked out by hand in the comments: each answer type and rule, WeMath's four
dimensions strict and loose, and malformed records.

Responses are written as the paper's models answer, ``<think>…</think> … \boxed{X}``.
"""

from __future__ import annotations

import math

import pytest

from staged_vlm_jax.eval import benchmarks
from staged_vlm_jax.eval.benchmarks import mathverse, mathvision, mathvista, wemath


def boxed(answer: str) -> str:
    return f"<think>Reading the figure.</think> The answer is \\boxed{{{answer}}}."


def test_registered_in_the_visual_math_group_with_their_headlines():
    expected = {
        "mathvista_mini": (mathvista.score, "accuracy"),
        "mathvision_mini": (mathvision.score, "accuracy"),
        "mathverse_mini_vi": (mathverse.score, "accuracy"),
        "wemath": (wemath.score, "score_strict"),
    }
    for name, (score, headline) in expected.items():
        benchmark = benchmarks.get(name)
        assert (benchmark.score, benchmark.group, benchmark.headline) == (score, "visual_math", headline)


# --- MathVista ------------------------------------------------------------------------------------------------------

FRACTIONS = ["3/11", "8/11", "6/11", "3/5"]


def vista(prediction: str, answer: str, answer_type: str, precision=None, choices=None, **fields) -> dict:
    """A MathVista testmini row (HF shape) with its prediction."""
    return {
        "pid": "1",
        "question": "What fraction of the shape is blue?",
        "choices": choices,
        "unit": None,
        "precision": precision,
        "answer": answer,
        "question_type": "multi_choice" if choices is not None else "free_form",
        "answer_type": answer_type,
        "prediction": prediction,
        **fields,
    }


MATHVISTA_CASES = {
    # float: str(round(float(x), precision)) == answer
    "float_precision_1_rounds": (vista(boxed("1.23"), "1.2", "float", precision=1.0), True),  # round(1.23, 1) = 1.2
    "float_precision_2_keeps_two": (vista(boxed("1.2"), "1.23", "float", precision=2.0), False),  # "1.2" != "1.23"
    "float_precision_2_rounds": (vista(boxed("1.234"), "1.23", "float", precision=2.0), True),
    "float_precision_1_is_too_coarse": (vista(boxed("1.25"), "1.25", "float", precision=1.0), False),  # "1.2"
    "float_with_unit": (vista(boxed(r"1.5\text{ cm}"), "1.5", "float", precision=1.0), True),  # extract_number
    # integer: str(int(float(x))) == answer
    "integer_from_3.0": (vista(boxed("3.0"), "3", "integer"), True),
    "integer_from_3": (vista(boxed("3"), "3", "integer"), True),
    "integer_truncates": (vista(boxed("3.7"), "3", "integer"), True),  # int(3.7) = 3: the official quirk
    "integer_wrong": (vista(boxed("4"), "3", "integer"), False),
    "integer_thousands_and_unit": (vista(boxed("1,000 g"), "1000", "integer"), True),  # float() fails; 1000.0
    "integer_fraction": (vista(boxed(r"\frac{6}{2}"), "3", "integer"), True),
    "integer_no_number": (vista(boxed("many"), "3", "integer"), False),  # normalises to None
    "integer_no_box_after_think": (vista("<think>2+1</think> 3", "3", "integer"), True),
    # list: str(x) == answer, character for character
    "list_exact": (vista(boxed("[2007, 2008]"), "[2007, 2008]", "list"), True),
    "list_spacing_differs": (vista(boxed("[2007,2008]"), "[2007, 2008]", "list"), False),
    # multi_choice: letter -> that choice's text, else the nearest choice, == answer (a choice's text)
    "choice_by_letter": (vista(boxed("B"), "8/11", "text", choices=FRACTIONS), True),
    "choice_by_other_letter": (vista(boxed("C"), "8/11", "text", choices=FRACTIONS), False),
    "choice_by_parenthesized_letter": (vista(boxed("(B) 8/11"), "8/11", "text", choices=FRACTIONS), True),
    "choice_by_text": (vista(boxed("8/11"), "8/11", "text", choices=FRACTIONS), True),
    # "8/12" names no option; Levenshtein: 3/11 -> 2, 8/11 -> 1, 6/11 -> 2, 3/5 -> 3, so 8/11
    "choice_by_nearest_text": (vista(boxed("8/12"), "8/11", "text", choices=FRACTIONS), True),
    # "3/6": 3/11 -> 2, 8/11 -> 3, 6/11 -> 3, 3/5 -> 1, so 3/5
    "choice_nearest_is_wrong": (vista(boxed("3/6"), "8/11", "text", choices=FRACTIONS), False),
    "choice_unboxed_can_infer": (vista("<think>…</think> So the answer is B", "8/11", "text", choices=FRACTIONS), True),
    # VLMEvalKit TSV: choices is the list's repr
    "choice_tsv_repr": (vista(boxed("B"), "8/11", "text", choices=repr(FRACTIONS)), True),
}


@pytest.mark.parametrize("record, right", MATHVISTA_CASES.values(), ids=MATHVISTA_CASES.keys())
def test_mathvista_official_normalisation(record, right):
    assert mathvista.score([record])["accuracy"] == (100.0 if right else 0.0)


def test_mathvista_accuracy_and_breakdown_by_question_and_answer_type():
    records = [
        vista(boxed("B"), "8/11", "text", choices=FRACTIONS),  # right
        vista(boxed("A"), "8/11", "text", choices=FRACTIONS),  # wrong
        vista(boxed("3"), "3", "integer"),  # right
        vista(boxed("1.2"), "1.23", "float", precision=2.0),  # wrong
    ]
    assert mathvista.score(records) == {
        "accuracy": 50.0,
        "count": 4.0,
        "accuracy/multi_choice": 50.0,
        "accuracy/free_form": 50.0,
        "accuracy/text": 50.0,
        "accuracy/integer": 100.0,
        "accuracy/float": 0.0,
    }


def test_levenshtein_is_the_edit_distance():
    assert mathvista.levenshtein("kitten", "sitting") == 3
    assert mathvista.levenshtein("flaw", "lawn") == mathvista.levenshtein("lawn", "flaw") == 2
    assert mathvista.levenshtein("", "abc") == mathvista.levenshtein("abc", "") == 3
    assert mathvista.levenshtein("same", "same") == 0


def test_normalize_choice_keeps_the_official_quirks():
    assert mathvista.normalize_choice("(b) 8/11", FRACTIONS) == "8/11"  # a parenthesized letter, any case
    assert mathvista.normalize_choice("D", FRACTIONS) == "3/5"
    # A bare lower-case letter is no letter: nearest text ("b" is 3 edits from "3/5", 4 from the others).
    assert mathvista.normalize_choice("b", FRACTIONS) == "3/5"
    # "E" is beyond the four choices: nearest text ("3/5" at 3 edits, the others at 4).
    assert mathvista.normalize_choice("E", FRACTIONS) == "3/5"
    assert mathvista.normalize_choice("", ["long choice", "short", "tiny"]) == "tiny"  # the shortest
    assert mathvista.normalize_choice("ab", ["xb", "ay"]) == "xb"  # a tie goes to the first


@pytest.mark.parametrize(
    "records, message",
    [
        (
            [vista(boxed("3"), "3", "integer"), {"prediction": boxed("3")}],
            r"mathvista_mini record 1: missing field 'answer'",
        ),
        ([vista(boxed("1.2"), "1.2", "float", precision=None)], r"record 0: field 'precision' is empty"),
        ([vista(boxed("1.2"), "1.2", "float", precision=float("nan"))], r"record 0: field 'precision' is empty"),
        ([vista(boxed("1.2"), "1.2", "float", precision=1.5)], r"record 0: field 'precision' must be a whole number"),
        ([vista(float("nan"), "3", "integer")], r"record 0: field 'prediction' is empty"),
        ([vista(boxed("3"), 3, "integer")], r"record 0: field 'answer' must be a string, got 3"),
        ([vista(boxed("B"), "B", "text", choices=FRACTIONS)], r"record 0: answer 'B' is not one of its choices"),
        ([vista(boxed("B"), "8/11", "text", choices=[])], r"record 0: field 'choices' is empty"),
        ([vista(boxed("B"), "8/11", "text", choices="3/11, 8/11")], r"record 0: field 'choices' is not a list"),
        (
            [vista(boxed("x"), "x", "text")],
            r"record 0: answer_type 'text' is not one of \['float', 'integer', 'list'\]",
        ),
        ([vista(boxed("3"), "3", "integer", question_type="open")], r"record 0: question_type 'open' is not one of"),
        ([], r"no records to score"),
    ],
)
def test_mathvista_malformed_records_are_errors(records, message):
    with pytest.raises(ValueError, match=message):
        mathvista.score(records)


# --- MATH-Vision ----------------------------------------------------------------------------------------------------

COLOURS = ["red", "blue", "green", "Yellow", "This cannot be worked out for certain."]


def vision(prediction: str, answer: str, options=(), **fields) -> dict:
    """A MATH-Vision testmini row (HF shape: options a list, empty for free-form) with its prediction."""
    return {
        "id": "6",
        "question": "Which colour?",
        "options": list(options),
        "answer": answer,
        "level": 2,
        "subject": "logic",
        "prediction": prediction,
        **fields,
    }


def vision_tsv(prediction: str, answer: str, choices: str) -> dict:
    """A VLMEvalKit MathVision_MINI row: options as the list's repr under ``choices``, subject as ``category``."""
    return {
        "index": 6,
        "question": "Which colour?",
        "choices": choices,
        "answer": answer,
        "category": "logic",
        "prediction": prediction,
    }


MATHVISION_CASES = {
    # options: right iff the picked letter is the answer letter
    "letter": (vision(boxed("B"), "B", COLOURS), True),
    "other_letter": (vision(boxed("C"), "B", COLOURS), False),
    "option_text": (vision(boxed("blue"), "B", COLOURS), True),
    "option_text_case": (vision(boxed("yellow"), "D", COLOURS), True),
    "picture_options": (vision(boxed("D"), "D", "ABCDE"), True),  # options drawn in the image: texts "A".."E"
    "tsv_choices_repr": (vision_tsv(boxed("B"), "B", repr(COLOURS)), True),
    "tsv_free_form": (vision_tsv(boxed("61"), "61", "[]"), True),
    # free-form: is_equal's tests (case-insensitive equality, numbers within 1e-6), then sympy equivalence
    "integer": (vision(boxed("61"), "61"), True),
    "integer_as_float": (vision(boxed("6.0"), "6"), True),
    "integer_with_unit": (vision(boxed("6 cm"), "6"), True),
    "fraction_value": (vision(boxed(r"\frac{24}{5}"), "4.8"), True),
    "within_tolerance": (vision(boxed("0.3333333"), "1/3"), True),  # |0.3333333 - 1/3| < 1e-6
    "beyond_tolerance": (vision(boxed("0.3333"), "1/3"), False),
    "wrong_number": (vision(boxed("7"), "6"), False),
    "letter_answer_free_form": (vision(boxed("c"), "C"), True),  # testmini id 59: answer "C", no options
    "tuple": (vision(boxed("(3, -4)"), "(3,-4)"), True),
    "symbolic": (vision(boxed(r"2\sqrt{3}"), r"\sqrt{12}"), True),
    "no_answer": (vision("<think>I cannot tell.</think>", "6"), False),
}


@pytest.mark.parametrize("record, right", MATHVISION_CASES.values(), ids=MATHVISION_CASES.keys())
def test_mathvision_scoring(record, right):
    assert mathvision.score([record])["accuracy"] == (100.0 if right else 0.0)


def test_mathvision_breakdown_by_kind():
    records = [vision(boxed("B"), "B", COLOURS), vision(boxed("7"), "6"), vision(boxed("6"), "6")]
    assert mathvision.score(records) == {
        "accuracy": pytest.approx(200 / 3),
        "count": 3.0,
        "accuracy/multi_choice": 100.0,
        "accuracy/free_form": 50.0,
    }


def test_free_form_match_readings_and_guards():
    assert mathvision.free_form_match("7", "$$r=7.00$$")  # a "name =" answer also reads as its value
    assert mathvision.free_form_match("r = 7", "$$r=7.00$$")
    assert mathvision.free_form_match("113.1", r"Area $=113.1 \mathrm{~cm}^{2}$")
    assert not mathvision.free_form_match("113", r"Area $=113.1 \mathrm{~cm}^{2}$")
    assert not mathvision.free_form_match("y=2x+5", "y=-2 x+5")
    assert not mathvision.free_form_match("  ", "0")  # an empty answer matches nothing
    # An answer too complex for sympy (scores.is_too_complex: here over 200 characters) is not graded by it...
    assert mathvision.free_form_match("+".join(["x"] * 12), "12x")
    assert not mathvision.free_form_match("+".join(["x"] * 101), "101x")
    # ... but still matches a ground truth equal to it ignoring case (here: 12 powers, too many for sympy).
    powers = "+".join(f"x^{i}" for i in range(12))
    assert mathvision.free_form_match(powers.upper(), powers)


@pytest.mark.parametrize(
    "records, message",
    [
        ([vision(boxed("F"), "F", COLOURS)], r"mathvision_mini record 0: answer 'F' is not one of its option letters"),
        (
            [{"answer": "6", "prediction": boxed("6")}],
            r"record 0: missing field 'options' \(or VLMEvalKit's 'choices'\)",
        ),
        ([vision(boxed("6"), "6"), vision(None, "6")], r"mathvision_mini record 1: field 'prediction' is empty"),
        ([vision_tsv(boxed("6"), "6", "A, B")], r"record 0: field 'choices' is not a list"),
    ],
)
def test_mathvision_malformed_records_are_errors(records, message):
    with pytest.raises(ValueError, match=message):
        mathvision.score(records)


# --- MathVerse (Vision Intensive) -----------------------------------------------------------------------------------

ANGLES = "Then the size of angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°\nD:140°"


def verse(prediction: str, answer: str, question: str = ANGLES, question_type: str = "multi-choice", **fields):
    """A MathVerse testmini row (HF shape) with its prediction."""
    return {
        "sample_index": "3",
        "problem_index": "1",
        "problem_version": "Vision Intensive",
        "question": question,
        "answer": answer,
        "question_type": question_type,
        "prediction": prediction,
        **fields,
    }


TRUE_FALSE = "True or False: the quickest way is through the playground.\nChoice:\nA. False\nB. True"
BEARINGS = "Find the true bearing of B from A.\nChoice:\nA. 090^\\circ T\nB. 180^\\circ T"
TWO_ANSWERS = (
    "Which two are OPPOSITE of tan(θ)? Choose 2 answers:\nChoices:\nA:tan(π+θ)\nB:tan(π/2-θ)\nC:tan(2π-θ)\nD:0"
)

MATHVERSE_CASES = {
    # multi-choice: right iff the response picks the answer's option
    "letter": (verse(boxed("D"), "D"), True),
    "other_letter": (verse(boxed("B"), "D"), False),
    "option_text": (verse(boxed("140°"), "D"), True),
    "parenthesized_answer": (verse(boxed("C"), "(C)"), True),
    "answer_is_option_text": (verse(boxed("A"), "False", TRUE_FALSE), True),  # "False" is option A's text
    "answer_is_option_text_wrong": (verse(boxed("B"), "False", TRUE_FALSE), False),
    "answer_is_latex_option_text": (verse(boxed("A"), r"090^\circ T", BEARINGS), True),
    "no_choices_block": (verse(boxed("B"), "B", "Which option does the figure show?"), True),  # letter rule
    "no_choices_block_wrong": (verse(boxed("the second"), "B", "Which option does the figure show?"), False),
    # several right options: graded as free-form text against "C\nD"
    "two_answers_given_both": (verse(boxed("C\nD"), "C\nD", TWO_ANSWERS), True),
    "two_answers_given_one": (verse(boxed("C"), "C\nD", TWO_ANSWERS), False),
    # free-form: free_form_match of the boxed answer
    "number": (verse(boxed("22.3"), "22.3", "Find d.", "free-form"), True),
    "number_wrong": (verse(boxed("22.4"), "22.3", "Find d.", "free-form"), False),
    "unit_in_answer": (verse(boxed("4.4"), "4.4 m", "Find AB.", "free-form"), True),
    "named_answer": (verse(boxed("113.1"), r"Area $=113.1 \mathrm{~cm}^{2}$", "Find the area.", "free-form"), True),
    "symbolic": (verse(boxed(r"\sqrt{30}/2"), r"\frac{\sqrt{30}}{2}", "Find x.", "free-form"), True),
    "degrees": (verse(boxed("60"), r"60^\circ", "Find the angle.", "free-form"), True),
}


@pytest.mark.parametrize("record, right", MATHVERSE_CASES.values(), ids=MATHVERSE_CASES.keys())
def test_mathverse_scoring(record, right):
    assert mathverse.score([record])["accuracy"] == (100.0 if right else 0.0)


def test_mathverse_breakdown_by_question_type():
    records = [
        verse(boxed("D"), "D"),
        verse(boxed("22.3"), "22.3", "Find d.", "free-form"),
        verse(boxed("1"), "2", "Find d.", "free-form"),
    ]
    assert mathverse.score(records) == {
        "accuracy": pytest.approx(200 / 3),
        "count": 3.0,
        "accuracy/multi-choice": 100.0,
        "accuracy/free-form": 50.0,
    }


def test_question_options_reads_the_choices_block():
    assert mathverse.question_options(ANGLES) == {"A": "40°", "B": "60°", "C": "120°", "D": "140°"}
    # An empty option line ("B:") is no option and does not swallow the next line.
    assert mathverse.question_options("Pick:\nChoices:\nA:one\nB:\nC:It gives x.") == {"A": "one", "C": "It gives x."}
    assert mathverse.question_options("Choices:\nA.$x>0$\nB.All real $x$") == {"A": "$x>0$", "B": "All real $x$"}
    assert mathverse.question_options("Find x.") == {}


@pytest.mark.parametrize(
    "records, message",
    [
        (
            [verse(boxed("D"), "D", problem_version="Text Dominant")],
            r"mathverse_mini_vi record 0: problem_version 'Text Dominant' is not 'Vision Intensive'",
        ),
        (
            [verse(boxed("D"), "D"), verse(boxed("D"), "D", question_type="open")],
            r"record 1: question_type 'open' is not one of",
        ),
        (
            [{key: value for key, value in verse(boxed("D"), "D").items() if key != "question"}],
            r"record 0: missing field 'question'",
        ),
    ],
)
def test_mathverse_malformed_records_are_errors(records, message):
    with pytest.raises(ValueError, match=message):
        mathverse.score(records)


# --- WeMath ---------------------------------------------------------------------------------------------------------

OPTION = "A. 300, 400;B. 400, 300;C. 3000, 4000;D. 4000, 3000; E. No correct answer"


def we(problem: str, key: str, right: bool, answer: str = "C") -> dict:
    """A WeMath testmini row (HF shape) whose response boxes the answer if ``right``, else another letter."""
    return {
        "ID": problem,
        "split": "testmini",
        "knowledge concept": "Units",
        "question": "OA = ( ) m",
        "option": OPTION,
        "answer": answer,
        "key": key,
        "prediction": boxed(answer if right else "A"),
    }


def problem(name: str, subs: str, composite: str) -> list[dict]:
    """The rows of one problem: ``subs`` a string of T/F, one per sub-question, ``composite`` T or F."""
    steps = len(subs)
    rows = [we(name, f"{steps}steps_{i}", flag == "T") for i, flag in enumerate(subs, start=1)]
    return rows + [we(name, f"{steps}steps_multi", composite == "T")]


# Every case of the four dimensions; N = 11 composites (6 two-step, 5 three-step).
FOUR_DIMENSION_PROBLEMS = [
    ("2steps_1", "TT", "T"),  # CM strict, CM loose
    ("2steps_2", "TT", "F"),  # IG
    ("2steps_3", "TF", "F"),  # IK
    ("2steps_4", "FF", "F"),  # IK
    ("2steps_5", "TF", "T"),  # RM strict, CM loose
    ("2steps_6", "FF", "T"),  # RM strict, RM loose
    ("3steps_1", "TTT", "T"),  # CM strict, CM loose
    ("3steps_2", "FTT", "T"),  # RM strict, CM loose
    ("3steps_3", "FFF", "F"),  # IK
    ("3steps_4", "TTT", "F"),  # IG
    ("3steps_5", "TFT", "F"),  # IK
]


def test_wemath_four_dimensions_strict_and_loose():
    records = [row for spec in FOUR_DIMENSION_PROBLEMS for row in problem(*spec)]
    # IK 4, IG 2, CM strict 2, RM strict 3, CM loose 4, RM loose 1 (of N = 11).
    assert wemath.score(records) == pytest.approx(
        {
            "score_strict": 100 * (11 - 0.5 * 2 - 3 - 4) / 11,  # 27.27 = (CM strict + IG / 2) / N
            "score_loose": 100 * (11 - 0.5 * 2 - 1 - 4) / 11,  # 45.45
            "IK": 100 * 4 / 11,
            "IG": 100 * 2 / 11,
            "CM_strict": 100 * 2 / 11,
            "CM_loose": 100 * 4 / 11,
            "RM_strict": 100 * 3 / (2 + 3),  # officially of the composites right: RM / (CM + RM)
            "RM_loose": 100 * 1 / (4 + 1),
            # sub-questions right: 2+2+1+0+1+0 of 12 (two-step), 3+2+0+3+2 of 15 (three-step)
            "accuracy/one_step": 100 * 16 / 27,
            "accuracy/two_step": 100 * 3 / 6,  # composites 1, 5, 6
            "accuracy/three_step": 100 * 2 / 5,  # composites 1, 2
            "count": 11.0,
        }
    )


def test_wemath_rows_in_any_order_and_tsv_shape():
    records = [row for spec in FOUR_DIMENSION_PROBLEMS for row in problem(*spec)][::-1]
    for row in records[::2]:  # VLMEvalKit TSV rows: options in columns A..H (blank past the last)
        del row["option"]
        row.update(A="300, 400", B="400, 300", C="3000, 4000", D="4000, 3000", E="No correct answer", F=float("nan"))
    assert wemath.score(records)["score_strict"] == pytest.approx(100 * 3 / 11)


def test_wemath_nothing_right_and_missing_step_kinds_are_nan():
    scores = wemath.score(problem("2steps_1", "FF", "F") + problem("2steps_2", "TF", "F"))
    assert (scores["score_strict"], scores["score_loose"], scores["IK"]) == (0.0, 0.0, 100.0)
    assert math.isnan(scores["RM_strict"]) and math.isnan(scores["RM_loose"])  # no composite right: 0 / 0
    assert math.isnan(scores["accuracy/three_step"])  # no three-step problem
    assert scores["accuracy/one_step"] == 25.0


def test_wemath_option_text_answers_count():
    rows = problem("2steps_1", "TT", "T")
    rows[0]["prediction"] = boxed("3000, 4000")  # option C's text
    rows[1]["prediction"] = boxed("4000, 3000")  # option D's text: wrong
    assert wemath.score(rows)["RM_strict"] == 100.0


def test_parse_options_on_the_irregular_testmini_strings():
    assert wemath.parse_options(OPTION) == {
        "A": "300, 400",
        "B": "400, 300",
        "C": "3000, 4000",
        "D": "4000, 3000",
        "E": "No correct answer",
    }
    assert wemath.parse_options("A. ①;B．②;C. ③; D. Cannot be determined") == {
        "A": "①",
        "B": "②",
        "C": "③",
        "D": "Cannot be determined",
    }
    # ";O." inside a text is no option (empty text); letters may skip (C then F).
    assert wemath.parse_options("A. Rotate around point ;O.;B. Shift from point ;O.;C. No.; F. No correct answer") == {
        "A": "Rotate around point ;O.",
        "B": "Shift from point ;O.",
        "C": "No.",
        "F": "No correct answer",
    }
    # ";C." inside the texts, before and after the real "C.".
    assert wemath.parse_options("A. Get Shape ;C.; B. Get Shape ;C.; C. Get Shape ;C.; D. No correct answer") == {
        "A": "Get Shape ;C.",
        "B": "Get Shape ;C.",
        "C": "Get Shape ;C.",
        "D": "No correct answer",
    }


@pytest.mark.parametrize(
    "records, message",
    [
        (problem("2steps_1", "TT", "T")[:2], r"wemath: problem '2steps_1' lacks the rows \['2steps_multi'\]"),
        (problem("3steps_1", "TTT", "T")[1:], r"problem '3steps_1' lacks the rows \['3steps_1'\]"),
        (
            problem("2steps_1", "TT", "T") + [we("2steps_1", "2steps_2", True)],
            r"wemath record 3: key '2steps_2' repeats",
        ),
        (
            problem("2steps_1", "TT", "T") + [we("2steps_1", "3steps_3", True)],
            r"record 3: key '3steps_3' repeats or contradicts",
        ),
        ([we("2steps_1", "2steps_3", True)], r"record 0: field 'key' is '2steps_3'"),
        (
            [{key: value for key, value in we("2steps_1", "2steps_1", True).items() if key != "ID"}],
            r"wemath record 0: missing field 'ID'",
        ),
        ([we("2steps_1", "2steps_1", True, answer="G")], r"record 0: answer 'G' is not one of its options"),
        (
            [{key: value for key, value in we("2steps_1", "2steps_1", True).items() if key != "option"}],
            r"record 0: no options",
        ),
        ([], r"no records to score"),
    ],
)
def test_wemath_malformed_records_are_errors(records, message):
    with pytest.raises(ValueError, match=message):
        wemath.score(records)
