r"""MATH-Vision testmini (``mathvision_mini``), scored as VLMEvalKit's ``mathv.py`` does, without its LLM extractor.

VLMEvalKit (``vlmeval/dataset/utils/mathv.py``, which the paper ran): an LLM extracts the answer (five in-context
examples) unless ``post_check(prefetch=True)`` already succeeds on the raw response; then ``post_check``: a
question with options is right iff ``can_infer`` reads the answer's letter from the extraction; one without is
right iff ``is_equal(extraction, answer)``: equal after lower-casing and stripping, or both evaluate (Python
``eval``, else ``latex2sympy``) to numbers within 1e-6. The official MATH-V ``evaluation/evaluate.py`` is rule-based
too but rounds to two decimals; the paper's numbers come from VLMEvalKit, followed here.

Here, in place of the LLM: options are read by `extraction.extract_choice` (the boxed letter or option text, then
VLMEvalKit's ``can_infer``), and a free-form answer is `extraction.extract_answer` (the last ``\boxed{}``) compared
by :func:`free_form_match`, which keeps ``is_equal``'s two tests but reads numbers without ``eval`` and adds
mathruler's symbolic equivalence in place of ``latex2sympy``. With an LLM judge configured, a response without
``\boxed{}`` that fails the prefetch (options: none read; free-form: the answer part does not already match) is
extracted by the judge with VLMEvalKit's prompt (`judge_prompts.mathvision`), and the extraction is checked as above.

Records are HF ``MathLLMs/MathVision`` testmini rows (``options`` a list, empty for free-form; ``answer`` a letter
for questions with options) or VLMEvalKit ``MathVision_MINI`` TSV rows (``choices``: the list's ``repr``), with
``"prediction"``. Scores (percent): ``accuracy``, ``accuracy/multi_choice``, ``accuracy/free_form``, ``count``.

Files (:func:`load`): ``MathVision_MINI.tsv`` only. The prompt (:func:`question`) is VLMEvalKit's: ``MathVision``
keeps ``ImageBaseDataset.build_prompt`` (``vlmeval/dataset/image_base.py``), the image then the row's ``question``
verbatim. That TSV text is VLMEvalKit's own rewrite of the question (``…Question: …`` with a ``Choices:`` block, as
its InternVL prompt code strips them), which HF ``MathLLMs/MathVision`` rows (``question`` + an ``options`` list) do
not hold in a form that rebuilds it exactly, so their parquet is not read.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from etils import epath
from mathruler.grader import grade_answer

from staged_vlm_jax.data.schema import RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    JudgeTask,
    Question,
    Record,
    accuracy_breakdown,
    image_question,
    judge_prompts,
    judged,
    load_records,
    prompt_text,
    register,
    required,
    required_text,
)
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_choice, extract_number, has_box
from staged_vlm_jax.rl.rewards.scores import is_too_complex

NAME = "mathvision_mini"
# is_equal's tolerance between two numbers.
NUMERIC_TOLERANCE = 1e-6
# "Area = 9", "r=7.00", "Area of sector = 6\pi": a name (letters and spaces only) then "=" and the value.
_NAMED_VALUE = re.compile(r"(?P<name>[A-Za-z][A-Za-z ]*?)\s*=\s*(?P<value>.+)", re.DOTALL)


def _readings(text: str) -> Iterator[str]:
    """The ways to read an answer: itself without ``$`` delimiters and with LaTeX's ``~`` as a space, and, for
    ``name = value``, its value alone (``Area $=113.1 \\mathrm{~cm}^{2}$`` also reads ``113.1 \\mathrm{ cm}^{2}``;
    an equation such as ``y = 2x + 1`` also reads ``2x + 1``)."""
    text = " ".join(text.replace("$", "").replace("~", " ").split())
    yield text
    named = _NAMED_VALUE.fullmatch(text)
    if named is not None:
        yield named["value"]


def _equal(answer: str, truth: str) -> bool:
    if answer.lower() == truth.lower():
        return True
    answer_number, truth_number = extract_number(answer), extract_number(truth)
    if answer_number is not None and truth_number is not None:
        return math.isclose(answer_number, truth_number, rel_tol=0.0, abs_tol=NUMERIC_TOLERANCE)
    return not is_too_complex(answer) and grade_answer(answer, truth)


def free_form_match(answer: str, truth: str) -> bool:
    r"""Whether an extracted free-form answer matches the ground truth, without an LLM judge.

    For some reading (`_readings`) of each: they are equal ignoring case (``is_equal``'s first test); else, where
    both are one number (`extraction.extract_number`: units, ``\frac``, ``%``, degrees and thousands commas
    allowed) they match iff within 1e-6 (``is_equal``'s second test, which ``eval`` / ``latex2sympy`` do there);
    else mathruler's ``grade_answer`` decides (sympy equivalence: ``\sqrt{12}`` = ``2\sqrt{3}``, tuples, equations),
    skipped for answers `is_too_complex` for sympy. An empty answer matches nothing.

    Versus ``is_equal``: a single number's unit and a ``name =`` prefix are ignored (an LLM extractor drops them
    too; a unit after a symbolic value, ``9\pi \mathrm{cm}^2``, is not), symbolic equivalence counts
    (``latex2sympy`` needs both sides to evaluate to numbers), and a Python-only expression such as ``2**3`` is
    read by sympy, not ``eval``.
    """
    if not answer.strip():
        return False
    return any(_equal(a, t) for a in _readings(answer) for t in _readings(truth))


def _options(record: Record, position: int) -> dict[str, str]:
    """The record's options, letter -> text (``{}`` for a free-form question): HF's ``options`` list (or numpy
    array), or VLMEvalKit's ``choices``, the list's ``repr``."""
    field = "options" if "options" in record else "choices"
    if field not in record:
        raise ValueError(f"{NAME} record {position}: missing field 'options' (or VLMEvalKit's 'choices')")
    options = required(record, position, field, NAME)
    if isinstance(options, str):
        try:
            options = ast.literal_eval(options)
        except (ValueError, SyntaxError):
            raise ValueError(f"{NAME} record {position}: field {field!r} is not a list: {options!r}") from None
    return {chr(ord("A") + i): str(option) for i, option in enumerate(options)}


def _rule(record: Record, position: int, response: str) -> tuple[bool, bool, str]:
    """For a response (the model's, or the judge's extraction): (whether the rules read an answer in it, whether
    it is right, the record's kind: "multi_choice" or "free_form")."""
    answer = required_text(record, position, "answer", NAME)
    options = _options(record, position)
    if not options:
        right = free_form_match(extract_answer(response), answer)
        return right, right, "free_form"  # the prefetch reads a free-form response only where it is the answer
    if answer not in options:
        raise ValueError(
            f"{NAME} record {position}: answer {answer!r} is not one of its option letters {sorted(options)}"
        )
    picked = extract_choice(response, options)
    return picked is not None, picked == answer, "multi_choice"


def _hit(record: Record, position: int) -> tuple[bool, str]:
    """(whether the record is right, its kind): by rule, else by the judge's extraction if there is one."""
    _, right, kind = _rule(record, position, required_text(record, position, "prediction", NAME))
    extraction = judged(record)
    return right or (extraction is not None and _rule(record, position, extraction)[1]), kind


def _judge_wanted(record: Record, position: int) -> bool:
    prediction = required_text(record, position, "prediction", NAME)
    return not has_box(prediction) and not _rule(record, position, prediction)[0]


JUDGE = JudgeTask(
    wanted=_judge_wanted,
    messages=lambda record: judge_prompts.user(
        judge_prompts.mathvision(str(record["question"]), extract_answer(str(record["prediction"])))
    ),
    parse=lambda reply, record: reply.strip() or None,
)


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``accuracy``, ``accuracy/multi_choice``, ``accuracy/free_form`` (percent) and ``count``."""
    results = [_hit(record, position) for position, record in enumerate(records)]
    return accuracy_breakdown([hit for hit, _ in results], [(kind,) for _, kind in results])


# The fields every row needs (the prompt's, the scorer's, the image); ``choices`` is ``"[]"`` for free-form rows.
LAYOUTS = {".tsv": FileLayout(required=("question", "answer", "choices", "image"))}


def load(path: epath.Path) -> list[dict[str, Any]]:
    """The rows of ``MathVision_MINI.tsv`` (`load_records`)."""
    return load_records(path, NAME, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + question`` (see the module docstring)."""
    return image_question(record, where, prompt_text(record, "question", where))


register(Benchmark(name=NAME, score=score, load=load, question=question, group="visual_math", judge=JUDGE))
