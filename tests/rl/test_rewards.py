r"""Rewards: the math reward against an independent oracle of the paper's reward file, mcq and math_verify
cases, the registry, and the RewardPool's timeouts, errors, crashes, resource limits and recovery.

The oracle is the paper's ``training/reward_functions/math.py`` (EasyR1's ``compute_score`` plus a "too complex"
guard) rewritten compactly on mathruler's own ``extract_boxed_content`` and ``grade_answer``; with the guard off
it is upstream EasyR1's ``examples/reward_function/math.py``. Both with one deliberate difference, as in
``math_score``: a response without a closed box scores accuracy 0 (they grade it as the text "None"). A subset of
cases also pins the expected format and accuracy by hand, so the oracle itself is checked.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
import types
from typing import NamedTuple

import pytest
from mathruler.grader import extract_boxed_content, grade_answer

from staged_vlm_jax.rl import rewards
from tests.rl.reward_fixtures import FULL_MARKS, scripted_reward


def oracle_math(response: str, ground_truth: str, guard: bool = True, format_weight: float = 0.1) -> dict:
    response = re.sub(r"\s*(<|>|/)\s*", r"\1", response)
    format_ = 1.0 if re.fullmatch(r"<think>.*</think>.*\\boxed\{.*\}.*", response, re.DOTALL) else 0.0
    answer = extract_boxed_content(response)
    # mathruler's "None" means no closed box unless the box holds "None" (renaming it changes no brace).
    missing = extract_boxed_content(response.replace("None", "N0ne")) == "None"
    too_complex = (
        len(answer) > 200
        or answer.count("^") + answer.count("**") > 10
        or answer.count("(") > 40
        or answer.count("{") > 40
        or re.search(r"\d{50,}", answer)
    )
    skipped = guard and (not answer or too_complex)  # the paper grades neither empty nor too-complex answers
    accuracy = 0.0 if missing or skipped else float(grade_answer(answer, ground_truth))
    return {
        "overall": (1 - format_weight) * accuracy + format_weight * format_,
        "format": format_,
        "accuracy": accuracy,
    }


class Case(NamedTuple):
    response: str
    ground_truth: str
    known: tuple[float, float] | None = None  # hand-checked (format, accuracy) under the paper's reward


T = "<think>Let me work it out.</think> The answer is "
MATH_CASES = {
    # fractions
    "frac_vs_slash": Case(T + r"\boxed{\frac{1}{2}}", "1/2", (1, 1)),
    "slash_vs_frac": Case(T + r"\boxed{1/2}", r"\frac{1}{2}"),
    "dfrac": Case(T + r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", (1, 1)),
    "tfrac": Case(T + r"\boxed{\tfrac{3}{4}}", "3/4"),
    "frac_shorthand": Case(T + r"\boxed{\frac12}", r"\frac{1}{2}"),
    "decimal_vs_frac": Case(T + r"\boxed{0.5}", r"\frac{1}{2}"),
    "unreduced_slash": Case(T + r"\boxed{2/4}", "1/2", (1, 0)),
    "unreduced_frac": Case(T + r"\boxed{\frac{2}{4}}", r"\frac{1}{2}"),
    "mixed_number": Case(T + r"\boxed{7 3/4}", r"7\frac{3}{4}"),
    "improper_vs_mixed": Case(T + r"\boxed{31/4}", r"7\frac{3}{4}"),
    "sqrt_frac": Case(T + r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}"),
    "spaced_slash": Case(T + r"\boxed{1 / 2}", "1/2"),
    # integers, decimals, signs
    "integer": Case(T + r"\boxed{42}", "42", (1, 1)),
    "wrong_integer": Case(T + r"\boxed{41}", "42", (1, 0)),
    "trailing_zero": Case(T + r"\boxed{5.0}", "5"),
    "near_integer": Case(T + r"\boxed{5.00001}", "5"),
    "thousands_comma": Case(T + r"\boxed{1,000}", "1000"),
    "float_thousand": Case(T + r"\boxed{1000.0}", "1000"),
    "negative": Case(T + r"\boxed{-3}", "-3"),
    "spaced_negative": Case(T + r"\boxed{- 3}", "-3"),
    "power_vs_integer": Case(T + r"\boxed{10^{3}}", "1000"),
    "sum_vs_integer": Case(T + r"\boxed{2+3}", "5"),
    "pi_approx": Case(T + r"\boxed{3.14}", r"\pi", (1, 0)),
    "pi": Case(T + r"\boxed{\pi}", r"\pi"),
    "two_pi_spacing": Case(T + r"\boxed{2\pi}", r"2 \pi"),
    "sqrt_forms": Case(T + r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
    "sqrt_forms_reverse": Case(T + r"\boxed{\sqrt{12}}", r"2\sqrt{3}"),
    "polynomial": Case(T + r"\boxed{x^2+2x+1}", "(x+1)^2"),
    "million": Case(T + r"\boxed{5 million}", "5000000"),
    # degrees, percents, units, money
    "degrees_circ": Case(T + r"\boxed{30^\circ}", "30", (1, 1)),
    "degrees_braced_circ": Case(T + r"\boxed{30^{\circ}}", "30"),
    "degrees_word": Case(T + r"\boxed{30 degrees}", "30"),
    "degrees_unicode": Case(T + r"\boxed{30°}", "30"),
    "percent_vs_number": Case(T + r"\boxed{50\%}", "50", (1, 1)),
    "percent_vs_percent": Case(T + r"\boxed{50\%}", r"50\%"),
    "fraction_vs_percent": Case(T + r"\boxed{0.5}", r"50\%"),
    "unit_cm": Case(T + r"\boxed{5 cm}", "5"),
    "unit_text_cm": Case(T + r"\boxed{5\text{ cm}}", "5"),
    "unit_mathrm_cm": Case(T + r"\boxed{5 \mathrm{cm}}", "5"),
    "unit_meters": Case(T + r"\boxed{12 meters}", "12"),
    "dollars": Case(T + r"\boxed{\$5}", "5"),
    # letters and words
    "letter": Case(T + r"\boxed{B}", "B", (1, 1)),
    "letter_lowercase": Case(T + r"\boxed{b}", "B"),
    "letter_parenthesized": Case(T + r"\boxed{(B)}", "B"),
    "letter_text": Case(T + r"\boxed{\text{B}}", "B"),
    "letter_period": Case(T + r"\boxed{B.}", "B", (1, 0)),
    "letter_with_option_text": Case(T + r"\boxed{B: red}", "B"),
    "wrong_letter": Case(T + r"\boxed{C}", "B", (1, 0)),
    "yes_case": Case(T + r"\boxed{Yes}", "yes"),
    "yes_text": Case(T + r"\boxed{\text{yes}}", "Yes"),
    # intervals, tuples, sets, equations
    "open_interval": Case(T + r"\boxed{(1, 2)}", "(1,2)"),
    "half_open_interval": Case(T + r"\boxed{[1, 2)}", "[1,2)"),
    "wrong_bracket": Case(T + r"\boxed{(1, 2]}", "(1,2)", (1, 0)),
    "infinite_interval": Case(T + r"\boxed{(-\infty, 3)}", r"(-\infty,3)"),
    "left_right_parens": Case(T + r"\boxed{\left(1,2\right)}", "(1,2)"),
    "set": Case(T + r"\boxed{\{1, 2, 3\}}", r"\{1,2,3\}"),
    "set_reordered": Case(T + r"\boxed{\{3, 2, 1\}}", r"\{1,2,3\}"),
    "list": Case(T + r"\boxed{1, 2, 3}", "1,2,3"),
    "list_reordered": Case(T + r"\boxed{3, 2, 1}", "1,2,3"),
    "equation_vs_value": Case(T + r"\boxed{x = 3}", "3"),
    "equation_vs_equation": Case(T + r"\boxed{x=3}", "x=3"),
    "inequality_spacing": Case(T + r"\boxed{a < b}", "a<b"),
    # which box counts
    "nested_boxed": Case(T + r"\boxed{\boxed{5}}", "5", (1, 1)),
    "last_box_counts": Case(T + r"\boxed{3}, no wait: \boxed{5}", "5", (1, 1)),
    "earlier_box_ignored": Case(T + r"\boxed{5}, no wait: \boxed{3}", "5", (1, 0)),
    "unclosed_last_box": Case(T + r"\boxed{5} or \boxed{5", "5"),
    "fbox_is_not_boxed": Case(T + r"\fbox{5}", "5"),
    # missing or empty answers
    "no_box": Case(T + "5", "5", (0, 0)),
    "no_box_gt_None": Case(T + "5", "None", (0, 0)),  # the paper's and EasyR1's reward say (0, 1)
    "unclosed_box_gt_None": Case(T + r"\boxed{None", "None", (0, 0)),
    "empty_response_gt_None": Case("", "None", (0, 0)),
    "boxed_None": Case(T + r"\boxed{None}", "None", (1, 1)),  # an answer, graded like any other
    "empty_box": Case(T + r"\boxed{}", "5", (1, 0)),
    "empty_box_empty_gt": Case(T + r"\boxed{}", ""),
    "empty_response": Case("", "5", (0, 0)),
    # format: tags, spacing, order
    "spaced_tags": Case(r"< think > hmm </ think > \boxed{5}", "5", (1, 1)),
    "leading_whitespace": Case("\n  <think>hmm</think>\\boxed{5}", "5"),
    "text_before_think": Case(r"Sure! <think>hmm</think> \boxed{5}", "5", (0, 1)),
    "think_not_closed": Case(r"<think>hmm \boxed{5}", "5", (0, 1)),
    "box_inside_think": Case(r"<think>hmm \boxed{5}</think>", "5"),
    "text_after_box": Case(r"<think>hmm</think>\boxed{5} because reasons.", "5"),
    "thinking_tag": Case(r"<thinking>hmm</thinking> \boxed{5}", "5"),
    "multiline": Case("<think>\nline 1\nline 2\n</think>\n\nSo \\boxed{5}\n", "5"),
    # the paper's too-complex guard
    "digits_49": Case(T + r"\boxed{" + "1" * 49 + "}", "1" * 49, (1, 1)),
    "digits_60": Case(T + r"\boxed{" + "1" * 60 + "}", "1" * 60, (1, 0)),
    "long_201": Case(T + r"\boxed{" + "+".join(["x"] * 101) + "}", "101x", (1, 0)),
    "powers_10": Case(T + r"\boxed{" + "+".join(["2^2"] * 10) + "}", "40"),
    "powers_11": Case(T + r"\boxed{" + "+".join(["2^2"] * 11) + "}", "44"),
    "parens_41": Case(T + r"\boxed{" + "+".join(["(1)"] * 41) + "}", "41"),
    "braces_41": Case(T + r"\boxed{" + "+".join(["{1}"] * 41) + "}", "41"),
}


@pytest.mark.parametrize("case", MATH_CASES.values(), ids=MATH_CASES.keys())
def test_math_score_matches_the_papers_reward(case: Case):
    expected = oracle_math(case.response, case.ground_truth)
    assert rewards.math_score(case.response, case.ground_truth) == expected
    if case.known is not None:
        assert (expected["format"], expected["accuracy"]) == case.known


@pytest.mark.parametrize("case", MATH_CASES.values(), ids=MATH_CASES.keys())
def test_math_score_without_guard_matches_upstream_easyr1(case: Case):
    expected = oracle_math(case.response, case.ground_truth, guard=False)
    assert rewards.math_score(case.response, case.ground_truth, reject_complex_answers=False) == expected


def test_guard_and_sentinel_differences_from_upstream():
    assert rewards.math_score(T + r"\boxed{}", "")["accuracy"] == 0.0
    assert rewards.math_score(T + r"\boxed{}", "", reject_complex_answers=False)["accuracy"] == 1.0
    long_number = T + r"\boxed{" + "1" * 60 + "}"
    assert rewards.math_score(long_number, "1" * 60, reject_complex_answers=False)["accuracy"] == 1.0


MISSING_ANSWER_CASES = {
    "math": (rewards.math_score, "None"),
    "math_unguarded": (functools.partial(rewards.math_score, reject_complex_answers=False), "None"),
    "math_verify": (rewards.math_verify_score, "None"),
    "mcq": (rewards.mcq_score, "N"),
}


@pytest.mark.parametrize(("score", "ground_truth"), MISSING_ANSWER_CASES.values(), ids=MISSING_ANSWER_CASES.keys())
def test_a_missing_answer_is_never_correct(score, ground_truth: str):
    # mathruler reads a response without a closed box as the text "None"; no reward may grade that text.
    for response in (T + ground_truth, T + r"\boxed{" + ground_truth, ""):
        assert score(response, ground_truth)["accuracy"] == 0.0, response
    assert score(T + r"\boxed{" + ground_truth + "}", ground_truth)["accuracy"] == 1.0


def test_format_weight_mixes_overall():
    score = rewards.math_score(T + r"\boxed{41}", "42", format_weight=0.25)
    assert score == {"overall": 0.25, "format": 1.0, "accuracy": 0.0}
    assert rewards.math_score(T + r"\boxed{42}", "42") == {
        "overall": pytest.approx(1.0),
        "format": 1.0,
        "accuracy": 1.0,
    }


MCQ_CASES = {
    "letter": (r"\boxed{B}", "B", 1.0),
    "lowercase": (r"\boxed{b}", "B", 1.0),
    "parenthesized": (r"\boxed{(B)}", "B", 1.0),
    "parenthesized_with_text": (r"\boxed{(B) the red cup}", "B", 1.0),
    "period": (r"\boxed{B.}", "B", 1.0),
    "colon_with_text": (r"\boxed{B: the red cup}", "B", 1.0),
    "close_paren": (r"\boxed{B) red}", "B", 1.0),
    "text_wrapped": (r"\boxed{\text{(B)}}", "B", 1.0),
    "parenthesized_ground_truth": (r"\boxed{C}", "(C)", 1.0),
    "wrong_letter": (r"\boxed{A}", "B", 0.0),
    "word_starting_with_letter": (r"\boxed{Blue}", "B", 0.0),
    "two_letters": (r"\boxed{A, B}", "B", 0.0),
    "hedged": (r"\boxed{B or C}", "B", 0.0),
    "option_prefix": (r"\boxed{Option B}", "B", 0.0),
    "empty_box": (r"\boxed{}", "B", 0.0),
    "last_box_counts": (r"\boxed{B} ... actually \boxed{C}", "C", 1.0),
    "nested": (r"\boxed{\boxed{D}}", "D", 1.0),
}


@pytest.mark.parametrize(("answer", "ground_truth", "accuracy"), MCQ_CASES.values(), ids=MCQ_CASES.keys())
def test_mcq_score(answer: str, ground_truth: str, accuracy: float):
    assert rewards.mcq_score(T + answer, ground_truth) == pytest.approx(
        {"overall": 0.9 * accuracy + 0.1, "format": 1.0, "accuracy": accuracy}
    )


def test_mcq_format_component_and_bad_ground_truth():
    assert rewards.mcq_score(r"\boxed{B}", "B") == pytest.approx({"overall": 0.9, "format": 0.0, "accuracy": 1.0})
    assert rewards.mcq_score(T + "B", "B") == {"overall": 0.0, "format": 0.0, "accuracy": 0.0}
    with pytest.raises(ValueError, match="'blue' is not an option letter"):
        rewards.mcq_score(T + r"\boxed{B}", "blue")


MATH_VERIFY_CASES = {
    "decimal_vs_fraction": (r"\boxed{0.5}", "1/2", 1.0),
    "unreduced_fraction": (r"\boxed{\frac{2}{4}}", "1/2", 1.0),  # mathruler says 0
    "set_reordered": (r"\boxed{\{3,2,1\}}", r"\{1,2,3\}", 1.0),  # mathruler says 0
    "power_vs_integer": (r"\boxed{10^{3}}", "1000", 1.0),  # mathruler says 0
    "degrees": (r"\boxed{30^\circ}", "30", 1.0),
    "percent_vs_fraction": (r"\boxed{50\%}", "0.5", 1.0),
    "sqrt_forms": (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", 1.0),
    "equation_vs_value": (r"\boxed{x=3}", "3", 1.0),
    "wrong_bracket": (r"\boxed{(1,2]}", "(1,2)", 0.0),
    "wrong_number": (r"\boxed{4}", "5", 0.0),
    "pi_approx": (r"\boxed{3.14}", r"\pi", 0.0),
    "empty_box": (r"\boxed{}", "5", 0.0),
    "last_box_counts": (r"\boxed{5} then \boxed{3}", "3", 1.0),
    "earlier_box_ignored": (r"\boxed{5} then \boxed{3}", "5", 0.0),
}


@pytest.mark.parametrize(
    ("answer", "ground_truth", "accuracy"), MATH_VERIFY_CASES.values(), ids=MATH_VERIFY_CASES.keys()
)
def test_math_verify_score(answer: str, ground_truth: str, accuracy: float):
    assert rewards.math_verify_score(T + answer, ground_truth) == pytest.approx(
        {"overall": 0.9 * accuracy + 0.1, "format": 1.0, "accuracy": accuracy}
    )


def test_math_verify_format_component_and_bad_ground_truth():
    no_think = rewards.math_verify_score(r"\boxed{5}", "5")
    assert no_think == pytest.approx({"overall": 0.9, "format": 0.0, "accuracy": 1.0})
    assert rewards.math_verify_score(T + "5", "5") == {"overall": 0.0, "format": 0.0, "accuracy": 0.0}
    with pytest.raises(ValueError, match="could not parse the ground truth ''"):
        rewards.math_verify_score(T + r"\boxed{5}", "")


def test_registry():
    assert rewards.get("math") is rewards.math_score
    assert rewards.get("mcq") is rewards.mcq_score
    assert rewards.get("math_verify") is rewards.math_verify_score
    assert rewards.REWARDS["test_scripted"] is scripted_reward
    with pytest.raises(ValueError, match=r"unknown reward 'maths'; registered rewards: math, math_verify, mcq"):
        rewards.get("maths")
    with pytest.raises(ValueError, match="'math' is already registered"):
        rewards.register("math")(scripted_reward)


def test_a_reward_of_your_own_from_a_file(tmp_path):
    """EasyR1's ``FILE.py:FUNCTION``: no registration, the file loaded in each worker process (it need not be an
    importable module), a missing file or function named before anything runs."""
    from staged_vlm_jax.rl.grpo import RolloutConfig
    from staged_vlm_jax.train.kinds import STAGE_KINDS

    path = tmp_path / "my_reward.py"
    path.write_text("def compute_score(response, ground_truth):\n"
                    "    hit = float(response.strip() == ground_truth)\n"
                    "    return {'overall': hit, 'format': 1.0, 'accuracy': hit}\n")  # fmt: skip
    name = f"{path}:compute_score"
    assert rewards.get(name)("7", "7") == {"overall": 1.0, "format": 1.0, "accuracy": 1.0}
    with rewards.RewardPool(name, num_workers=1) as pool:
        scores, stats = pool.score([" 7", "8"], ["7", "7"])
    assert [score["accuracy"] for score in scores] == [1.0, 0.0] and stats["reward/errors"] == 0
    assert STAGE_KINDS["grpo"].problems(RolloutConfig(n=2), name) == []
    for bad, message in ((f"{tmp_path}/missing.py:compute_score", f"{tmp_path}/missing.py is not a Python file"),
                         (f"{path}:score", f"{path} defines no function score")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            rewards.get(bad)
        assert STAGE_KINDS["grpo"].problems(RolloutConfig(n=2), bad) == [f"reward.name: reward {bad}: {message}"]


def test_pool_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        rewards.RewardPool("nope")
    with pytest.raises(TypeError, match="cannot be sent to a worker process"):
        rewards.RewardPool(lambda response, ground_truth: {})
    with pytest.raises(ValueError, match="num_workers >= 1"):
        rewards.RewardPool("math", num_workers=0)
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        rewards.RewardPool("math", timeout_s=0)
    with pytest.raises(ValueError, match="memory_limit_mb > 0"):
        rewards.RewardPool("math", memory_limit_mb=0)
    with pytest.raises(ValueError, match="cpu_limit_s > 0"):
        rewards.RewardPool("math", cpu_limit_s=-1.0)


POOL_TIMEOUT_S = 1.5
SLACK_S = 1.5  # killing the worker, plus a loaded 2-core machine


@pytest.fixture(scope="module")
def math_pool():
    with rewards.RewardPool("math", num_workers=2, timeout_s=POOL_TIMEOUT_S) as pool:
        yield pool


def test_pool_equals_direct_calls(math_pool: rewards.RewardPool):
    responses = [case.response for case in MATH_CASES.values()]
    ground_truths = [case.ground_truth for case in MATH_CASES.values()]
    scores, stats = math_pool.score(responses, ground_truths)
    assert scores == [rewards.math_score(r, g) for r, g in zip(responses, ground_truths, strict=True)]
    assert stats["reward/timeouts"] == 0 and stats["reward/errors"] == 0


def test_pool_times_out_a_sympy_hang_and_recovers(math_pool: rewards.RewardPool):
    # 9**9**9 passes mathruler's guard (it only rejects "^{", "^(" and long "^" exponents) and the paper's, so
    # sympy starts computing a 370-million-digit integer.
    hang = T + r"\boxed{9**9**9}"
    math_pool.score([T + r"\boxed{1}"], ["1"])  # workers started
    began = time.monotonic()
    scores, stats = math_pool.score([hang, T + r"\boxed{3}", T + r"\boxed{4}"], [r"\frac{1}{3}", "3", "5"])
    assert time.monotonic() - began < POOL_TIMEOUT_S + SLACK_S
    assert scores[0] == {"overall": 0.0, "format": 0.0, "accuracy": 0.0}
    assert scores[1:] == [rewards.math_score(T + r"\boxed{3}", "3"), rewards.math_score(T + r"\boxed{4}", "5")]
    assert stats["reward/timeouts"] == 1 and stats["reward/errors"] == 0
    scores, stats = math_pool.score([T + r"\boxed{7}"] * 3, ["7"] * 3)
    assert scores == [rewards.math_score(T + r"\boxed{7}", "7")] * 3
    assert stats["reward/timeouts"] == 0


def test_pool_timeouts_errors_and_crashes_score_zero():
    zero = {"overall": 0.0, "format": 0.0, "accuracy": 0.0}
    good = T + r"\boxed{2}"
    with rewards.RewardPool("test_scripted", num_workers=2, timeout_s=0.5) as pool:
        pool.score([good], ["2"])  # workers started
        began = time.monotonic()
        scores, stats = pool.score(["sleep", good, "raise", "not a dict", good], ["2"] * 5)
        assert time.monotonic() - began < 0.5 + SLACK_S
        assert scores == [zero, rewards.math_score(good, "2"), zero, zero, rewards.math_score(good, "2")]
        assert stats["reward/timeouts"] == 1 and stats["reward/errors"] == 2
        scores, stats = pool.score(["exit", good], ["2"] * 2)  # a worker that dies mid-item
        assert scores == [zero, rewards.math_score(good, "2")]
        assert stats["reward/timeouts"] == 0 and stats["reward/errors"] == 0 and stats["reward/crashes"] == 1
        scores, stats = pool.score([good] * 4, ["2"] * 4)
        assert scores == [rewards.math_score(good, "2")] * 4
        assert set(stats) == {"reward/timeouts", "reward/errors", "reward/crashes", "time/reward_s"}
        assert stats["reward/timeouts"] == 0 and stats["reward/errors"] == 0 and stats["reward/crashes"] == 0
        with pytest.raises(ValueError, match="2 responses but 1 ground truths"):
            pool.score([good, good], ["2"])
    with pytest.raises(RuntimeError, match="after close"):
        pool.score([good], ["2"])


ZERO = {"overall": 0.0, "format": 0.0, "accuracy": 0.0}
GOOD = T + r"\boxed{2}"


def test_pool_replaces_a_worker_that_dies():
    with rewards.RewardPool("test_scripted", num_workers=1) as pool:
        scores, stats = pool.score(["pid", "exit", "pid", "kill", "pid", GOOD], ["2"] * 6)
    pids = [scores[i]["overall"] for i in (0, 2, 4)]
    assert len(set(pids)) == 3  # a fresh worker after each death
    assert scores[1] == scores[3] == ZERO and scores[5] == rewards.math_score(GOOD, "2")
    assert stats["reward/crashes"] == 2 and stats["reward/errors"] == 0 and stats["reward/timeouts"] == 0


def test_pool_memory_limit_makes_a_huge_allocation_an_ordinary_error():
    with rewards.RewardPool("test_scripted", num_workers=1, memory_limit_mb=256) as pool:
        scores, stats = pool.score(["pid", "allocate", GOOD, "pid"], ["2"] * 4)  # 2 GiB under 256 MB
        assert scores[1] == ZERO and scores[2] == rewards.math_score(GOOD, "2")
        assert scores[0] == scores[3]  # MemoryError is the reward function's error: the worker goes on
        assert stats["reward/errors"] == 1 and stats["reward/crashes"] == 0 and stats["reward/timeouts"] == 0
        scores, stats = pool.score([GOOD, "allocate"], ["2"] * 2)
        assert scores == [rewards.math_score(GOOD, "2"), ZERO] and stats["reward/errors"] == 1


def test_pool_cpu_limit_bounds_each_item(caplog: pytest.LogCaptureFixture):
    # The wall-clock timeout is far off, so only the CPU limit can stop "spin 10". The four half-second items
    # use more than the limit together, and still run in one worker: the limit is per item, not per worker.
    with rewards.RewardPool("test_scripted", num_workers=1, timeout_s=60.0, cpu_limit_s=1.0) as pool:
        responses = ["pid", *["spin 0.5"] * 4, "pid", "spin 10", "pid", GOOD]
        with caplog.at_level(logging.WARNING):
            scores, stats = pool.score(responses, ["2"] * len(responses))
        assert scores[1:5] == [FULL_MARKS] * 4 and scores[0] == scores[5]
        assert scores[6] == ZERO and scores[7] != scores[5]  # killed, and replaced
        assert scores[8] == rewards.math_score(GOOD, "2")
        assert stats["reward/crashes"] == 1 and stats["reward/errors"] == 0 and stats["reward/timeouts"] == 0
        assert "killed by SIGXCPU" in caplog.text
        scores, stats = pool.score([GOOD, "spin 0.5"], ["2"] * 2)
        assert scores == [rewards.math_score(GOOD, "2"), FULL_MARKS] and stats["reward/crashes"] == 0


def test_pool_accepts_a_configured_function():
    weighted = functools.partial(rewards.math_score, format_weight=0.5)
    with rewards.RewardPool(weighted, num_workers=1) as pool:
        scores, _ = pool.score([T + r"\boxed{1}"], ["2"])
    assert scores == [{"overall": 0.5, "format": 1.0, "accuracy": 0.0}]


def test_pool_fails_loudly_and_closes_when_workers_cannot_start(monkeypatch: pytest.MonkeyPatch):
    # Picklable here (its module is in sys.modules) but not importable in a worker process.
    ghost = types.ModuleType("ghost_rewards")

    def ghost_reward(response: str, ground_truth: str) -> dict[str, float]:
        return rewards.math_score(response, ground_truth)

    ghost_reward.__module__, ghost_reward.__qualname__ = ghost.__name__, "ghost_reward"
    ghost.ghost_reward = ghost_reward
    monkeypatch.setitem(sys.modules, ghost.__name__, ghost)
    pool = rewards.RewardPool(ghost_reward, num_workers=1)
    with pytest.raises(RuntimeError, match=r"exited \(code 1\) before it was ready"):
        pool.score([T + r"\boxed{1}"], ["1"])
    with pytest.raises(RuntimeError, match="after close"):
        pool.score([T + r"\boxed{1}"], ["1"])
