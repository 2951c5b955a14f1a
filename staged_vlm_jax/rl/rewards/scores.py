r"""Rule-based rewards for responses of the form ``<think>…</think> … \boxed{answer}``.

The paper trains every stage with one reward: EasyR1's ``examples/reward_function/math.py:compute_score`` as
patched in the official repo (UCSC-VLAA/VLM-CapCurriculum ``training/reward_functions/math.py``), which adds a
"too complex" guard in front of mathruler's sympy-based grader. :func:`math_score` reproduces that file, quirks
included (see its docstring), but one: a response without a box is wrong whatever the ground truth.
:func:`mcq_score` and :func:`math_verify_score` are stricter / more lenient alternatives for ablations; all three
share the format component, the rule that a missing answer is wrong, and the mixing

    overall = (1 − w) · accuracy + w · format,        w = format_weight (0.1 in the paper)

so advantages, metrics and curricula treat them alike. Each is pure and may block for a long time on
pathological answers (sympy); the training loop calls them through a :class:`RewardPool`, which enforces a
per-item timeout and memory and CPU limits.
"""

from __future__ import annotations

import re

from math_verify import parse, verify
from mathruler.grader import grade_answer

from staged_vlm_jax.rl.rewards.registry import register

_TAG_SPACING = re.compile(r"\s*(<|>|/)\s*")
_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)
_BOXED_OPEN = r"\boxed{"


def normalize_tag_spacing(response: str) -> str:
    r"""Remove all whitespace around ``<``, ``>`` and ``/``, so ``< think >…</ think >`` counts as ``<think>``.

    EasyR1 added it for Qwen2.5-VL-32B's spacing. It rewrites the whole response, the answer included, before
    both components: ``\boxed{1 / 2}`` is graded as ``1/2`` and ``\boxed{a < b}`` as ``a<b``; leading whitespace
    before the first ``<`` disappears too, so ``"\n<think>"`` still passes the format check.
    """
    return _TAG_SPACING.sub(r"\1", response)


def format_score(response: str) -> float:
    r"""1.0 iff the whole (tag-normalized) response matches ``<think>.*</think>.*\\boxed\{.*\}.*`` (DOTALL).

    The match is anchored at both ends: nothing may precede ``<think>``; anything may follow the box. A box
    inside the think block followed by a later ``</think>`` does not count (the box must follow a ``</think>``).
    """
    return 1.0 if _FORMAT.fullmatch(response) else 0.0


def last_boxed_content(response: str) -> str | None:
    r"""The stripped content of the last ``\boxed{`` up to its matching ``}``; None if absent or unbalanced.

    Same rule as ``mathruler.grader.extract_boxed_content`` (which returns the string ``"None"`` instead of
    None): the *last* opening wins, so ``\boxed{\boxed{5}}`` gives ``5`` and ``\boxed{1} … \boxed{2}`` gives
    ``2``; an unclosed last box gives None even if an earlier box was closed. ``\boxed 5`` (no brace) is not a box.
    """
    start = response.rfind(_BOXED_OPEN)
    if start == -1:
        return None
    content = response[start + len(_BOXED_OPEN) :]
    depth = 0
    for position, char in enumerate(content):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == -1:
                return content[:position].strip()
    return None


def is_too_complex(answer: str) -> bool:
    """The paper's guard against answers that make sympy hang (its ``too_complex``; not in upstream EasyR1).

    True iff len > 200, or count("^") + count("**") > 10, or count("(") > 40, or count("{") > 40, or the answer
    holds a run of ≥ 50 digits. Note that it does not catch short towers such as ``9**9**9``, which mathruler's
    own guard (it rejects ``^{``, ``^(`` and ``^12``-style exponents, but not ``**``) lets through to sympy:
    that is what the RewardPool timeout is for.
    """
    return (
        len(answer) > 200
        or answer.count("^") + answer.count("**") > 10
        or answer.count("(") > 40
        or answer.count("{") > 40
        or re.search(r"\d{50,}", answer) is not None
    )


def _breakdown(accuracy: float, format_: float, format_weight: float) -> dict[str, float]:
    return {
        "overall": (1.0 - format_weight) * accuracy + format_weight * format_,
        "format": format_,
        "accuracy": accuracy,
    }


@register("math")
def math_score(
    response: str, ground_truth: str, format_weight: float = 0.1, reject_complex_answers: bool = True
) -> dict[str, float]:
    r"""The paper's reward: mathruler grading of the last ``\boxed{}`` plus the think/boxed format check.

    response → r = :func:`normalize_tag_spacing` (response);  format = :func:`format_score` (r);
    a = content of the last ``\boxed{}`` in r;
    accuracy = 0 if r has no closed last box, or if reject_complex_answers and (a == "" or
    :func:`is_too_complex` (a)), else 1 if ``mathruler.grader.grade_answer(a, ground_truth)`` else 0;
    overall = (1 − format_weight) · accuracy + format_weight · format.

    ``reject_complex_answers=True`` is the paper's ``training/reward_functions/math.py``; False is upstream
    EasyR1's ``examples/reward_function/math.py``, which grades every extracted answer. Both grade a response
    without a box as the text ``"None"`` (mathruler's sentinel), so it is correct when the ground truth is
    ``None``: a model would be paid for not answering such questions. Here a missing answer scores 0 whatever
    the ground truth; a model that writes ``\boxed{None}`` answered, and is graded like any other answer.
    """
    response = normalize_tag_spacing(response)
    answer = last_boxed_content(response)
    if answer is None or (reject_complex_answers and (not answer or is_too_complex(answer))):
        accuracy = 0.0
    else:
        accuracy = 1.0 if grade_answer(answer, ground_truth) else 0.0
    return _breakdown(accuracy, format_score(response), format_weight)


_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{(?P<inner>.*)\}", re.DOTALL)
_CHOICE = re.compile(r"\((?P<parenthesized>[A-Za-z])\)|(?P<bare>[A-Za-z])(?:[.:)]|$)")


def choice_letter(answer: str) -> str | None:
    r"""The option letter an answer names, upper-cased; None if it does not name exactly one.

    After stripping whitespace and one enclosing ``\text{}``, ``\textbf{}``, ``\mathrm{}`` or ``\mathbf{}``, the
    answer must start with a single letter that is either parenthesized — ``(B)``, ``(B) the red cup`` — or
    followed by ``.``, ``:``, ``)`` or the end — ``B``, ``B.``, ``B: the red cup``, ``B) red``. Anything else
    names no option: ``Blue``, ``AB``, ``A, B``, ``B or C``, ``Option B``, ``B red`` (no separator), ``""``.
    """
    answer = answer.strip()
    wrapped = _TEXT_WRAPPER.fullmatch(answer)
    if wrapped is not None:
        answer = wrapped["inner"].strip()
    match = _CHOICE.match(answer)
    if match is None:
        return None
    return (match["parenthesized"] or match["bare"]).upper()


@register("mcq")
def mcq_score(response: str, ground_truth: str, format_weight: float = 0.1) -> dict[str, float]:
    r"""Multiple-choice reward: the letter in the last ``\boxed{}`` equals the ground-truth letter.

    r = :func:`normalize_tag_spacing` (response); format = :func:`format_score` (r);
    accuracy = 1 iff the last ``\boxed{}`` of r exists and :func:`choice_letter` of its content equals
    :func:`choice_letter` (ground_truth) (case-insensitive: ``\boxed{b}`` matches ``B``);
    overall = (1 − format_weight) · accuracy + format_weight · format.

    Stricter than the paper's mathruler grading of letters, which also accepts e.g. ``\boxed{\text{B}}`` but
    not ``\boxed{B: red}``. Raises ValueError if the ground truth names no single option letter (a data error,
    not a wrong answer).
    """
    expected = choice_letter(ground_truth)
    if expected is None:
        raise ValueError(f"mcq ground truth {ground_truth!r} is not an option letter (expected e.g. 'B' or '(B)')")
    response = normalize_tag_spacing(response)
    answer = last_boxed_content(response)
    accuracy = 1.0 if answer is not None and choice_letter(answer) == expected else 0.0
    return _breakdown(accuracy, format_score(response), format_weight)


def _parse_math(expression: str) -> list:
    r"""math_verify's parse of ``\boxed{expression}``, falling back to ``$expression$`` if that yields nothing."""
    return parse(_BOXED_OPEN + expression + "}") or parse(f"${expression}$")


@register("math_verify")
def math_verify_score(response: str, ground_truth: str, format_weight: float = 0.1) -> dict[str, float]:
    r"""Reward graded by HuggingFace's math_verify (symbolic + numeric equivalence, sets, intervals, equations).

    r = :func:`normalize_tag_spacing` (response); format = :func:`format_score` (r);
    accuracy = 1 iff the last ``\boxed{}`` of r exists and ``math_verify.verify(gold, pred)``, where gold and
    pred are math_verify's parses of ``\boxed{ground_truth}`` and ``\boxed{content}`` (each falling back to
    ``$…$`` when the boxed form parses to nothing);
    overall = (1 − format_weight) · accuracy + format_weight · format.

    Only the last box is graded (math_verify on a whole response would join several boxes into a set).
    math_verify bounds its own sympy calls with ``signal.alarm``, so call this from a main thread (RewardPool
    workers are). Raises ValueError if the ground truth does not parse.
    """
    gold = _parse_math(ground_truth)
    if not gold:
        raise ValueError(f"math_verify could not parse the ground truth {ground_truth!r}")
    response = normalize_tag_spacing(response)
    answer = last_boxed_content(response)
    accuracy = 1.0 if answer is not None and verify(gold, _parse_math(answer)) else 0.0
    return _breakdown(accuracy, format_score(response), format_weight)
