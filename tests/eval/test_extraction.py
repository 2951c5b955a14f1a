r"""Answer extraction for benchmark scoring, table-driven; every expected value is worked out by hand from the rules
in `extraction` (VLMEvalKit's ``can_infer``, ``YOrN_Extraction``, ``process_punctuation``) and noted where not obvious.
"""

from __future__ import annotations

import pytest

from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_choice, extract_number, extract_yes_no

# Option texts total 7 + 8 + 12 + 3 = 30 characters, so the text rule reads answers of at most 60 characters.
OPTIONS = {"A": "red cup", "B": "blue cup", "C": "green bottle", "D": "cat"}

ANSWER_CASES = [
    ("<think>x</think> The answer is \\boxed{B}.", "B"),
    ("\\boxed{1} then \\boxed{ 2 }", "2"),  # the last box, stripped
    ("<think>a</think>\n Final: 7 ", "Final: 7"),  # no box: after </think>
    ("  just text  ", "just text"),  # neither: the whole response
    ("<think>a</think>b</think> c", "c"),  # the last </think>
    ("<think>\\boxed{3}</think> so 4", "3"),  # a box wins wherever it is
    ("<think>unfinished \\boxed{2} and \\boxed{3", "<think>unfinished \\boxed{2} and \\boxed{3"),  # unclosed last box
]

CHOICE_CASES = [
    # The box: a letter of the options, in any of choice_letter's spellings.
    ("<think>A looks odd</think>\\boxed{B}", OPTIONS, "B"),
    ("\\boxed{(C)}", OPTIONS, "C"),
    ("\\boxed{D.}", OPTIONS, "D"),
    ("\\boxed{\\text{A}}", OPTIONS, "A"),
    ("\\boxed{b}", OPTIONS, "B"),
    ("\\boxed{A} first, then \\boxed{C}", OPTIONS, "C"),
    # The box: one option's whole text, ignoring case, whitespace and \text{}.
    ("\\boxed{Blue  Cup}", OPTIONS, "B"),
    ("\\boxed{\\text{green bottle}}", OPTIONS, "C"),
    # The box names no option: can_infer on its content. "E" is no option letter and no option's text is in "e".
    ("\\boxed{E}", OPTIONS, None),
    ("\\boxed{B, blue cup}", OPTIONS, "B"),  # tokens B blue cup: the one letter, among the last four tokens
    ("\\boxed{}", OPTIONS, None),
    # Two options with the same text: the box is ambiguous, and the text rule finds both.
    ("\\boxed{cat}", {"A": "cat", "B": "Cat"}, None),
    # No box: can_infer_option on the text after </think>.
    ("<think>A seems wrong</think> The answer is B", OPTIONS, "B"),
    ("The answer is (C).", OPTIONS, "C"),  # tokens The answer is C
    ("**D**", OPTIONS, "D"),
    ("[D]", OPTIONS, "D"),
    ("A: red cup", OPTIONS, "A"),
    ("I choose option C", OPTIONS, "C"),  # "I" is no option letter here
    ("B", {"A": "yes", "B": "no"}, "B"),
    # The letter is not among the last four tokens (B at 3 of 8): not inferred, and "blue" alone is no option text.
    ("The answer is B because it is blue", OPTIONS, None),
    # B at 0 of 10 tokens; 51 characters with no option text in them.
    ("B, because it is the tallest object in the picture", OPTIONS, None),
    # Two option letters; then the text rule finds no option text.
    ("A or B", OPTIONS, None),
    # Lower-case "a" is no option letter; the text rule finds "cat".
    ("a cat", OPTIONS, "D"),
    ("It is the green bottle", OPTIONS, "C"),
    ("the red cup or the blue cup", OPTIONS, None),  # two option texts
    # 81 characters > 2 * 30: too long for the text rule although "cat" occurs.
    ("I looked carefully at every object on the table and I believe it must be the cat", OPTIONS, None),
    # Refusals end the search, even where a letter or an option's text follows.
    ("Cannot determine the answer, but maybe B", OPTIONS, None),
    ("Z, the red cup", OPTIONS, None),  # no option letter and a lone "Z"
    ("<think>long reasoning about the red cup</think>", OPTIONS, None),  # nothing after </think>
    # Substrings count, as in VLMEvalKit: "cat" occurs in "location".
    ("wrong location", OPTIONS, "D"),
]

YES_NO_CASES = [
    ("\\boxed{Yes}", "Yes"),
    ("\\boxed{no}", "No"),
    ("<think>Is it yes or no? no</think>Yes, there is a dog.", "Yes"),  # only the part after </think>
    ("Yes.", "Yes"),
    ("YES", "Yes"),
    ("No, there is none.", "No"),
    ("(yes)", "Yes"),  # "(" and ")" touch no space: replaced by spaces
    ("\\boxed{\\text{No}}", "No"),  # "\text{no}" -> " text no "
    ("yes or no", None),
    ("Yes, there is no doubt", None),  # both words
    ("There is a dog in the image.", None),  # neither
    ("Nope", None),
    ("yes/no", None),  # "/" becomes a space: both words
    ("Answer: no:", None),  # colons stay: "no:" is not "no"
    ("no's", None),
    ("no,1,5", None),  # a comma between digits deletes every comma: "no15"
    ("<think>no</think>", None),  # nothing after </think>
    # process_punctuation deletes at most 32 periods: with 32 before it, the period of "no." stays.
    ("." * 31 + " no.", "No"),
    ("." * 32 + " no.", None),
]

NUMBER_CASES = [
    ("\\frac{1}{2}", 0.5),
    ("\\dfrac{3}{4}", 0.75),
    ("-\\tfrac{1}{4}", -0.25),
    ("$\\frac{7}{2}$", 3.5),
    ("\\frac{-1}{2}", -0.5),
    ("3/4", 0.75),
    ("1/0", None),
    ("3\\%", 3.0),
    ("12%", 12.0),
    ("12 cm", 12.0),
    ("5\\text{ cm}", 5.0),
    ("4 square units", 4.0),
    ("5 m/s^2", 5.0),
    ("3 cm^{2}", 3.0),
    ("30^\\circ", 30.0),
    ("45°", 45.0),
    ("1,234", 1234.0),
    ("10,000,000", 10_000_000.0),
    ("1{,}234.5", 1234.5),
    ("1\\,234", 1234.0),
    ("\\$5", 5.0),
    ("-2.5", -2.5),
    (".5", 0.5),
    ("−7", -7.0),
    ("+8", 8.0),
    ("42.", 42.0),
    ("1,23", None),
    ("3 or 4", None),
    ("The answer is 5", None),
    ("5 is the answer", None),
    ("2\\sqrt{3}", None),
    ("1+2", None),
    ("", None),
]


def test_the_tables_hold_at_least_fifty_responses():
    assert len(ANSWER_CASES) + len(CHOICE_CASES) + len(YES_NO_CASES) + len(NUMBER_CASES) >= 50


@pytest.mark.parametrize(("response", "expected"), ANSWER_CASES)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(("response", "options", "expected"), CHOICE_CASES)
def test_extract_choice(response, options, expected):
    assert extract_choice(response, options) == expected


@pytest.mark.parametrize(("response", "expected"), YES_NO_CASES)
def test_extract_yes_no(response, expected):
    assert extract_yes_no(response) == expected


@pytest.mark.parametrize(("text", "expected"), NUMBER_CASES)
def test_extract_number(text, expected):
    if expected is None:
        assert extract_number(text) is None
    else:
        assert extract_number(text) == pytest.approx(expected)


def test_extract_choice_leaves_the_options_unchanged():
    # VLMEvalKit's can_infer_text lower-cases the caller's dict in place; this one must not.
    options = {"A": "Red Cup", "B": "Blue Cup"}
    assert extract_choice("red cup", options) == "A"
    assert options == {"A": "Red Cup", "B": "Blue Cup"}
