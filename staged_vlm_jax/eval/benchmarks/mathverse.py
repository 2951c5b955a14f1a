r"""MathVerse testmini, Vision-Intensive version (``mathverse_mini_vi``): accuracy, judged by rule instead of an LLM.

Official pipeline (ZrrSkywalker/MathVerse ``evaluation/extract_answer_s1.py`` + ``score_answer_s2.py``, mirrored by
VLMEvalKit's ``vlmeval/dataset/utils/mathverse.py``, which the paper ran as ``MathVerse_MINI_Vision_Intensive``):
an LLM extracts the answer (six in-context examples), then a second LLM call judges it against ``answer`` given
``question_for_eval`` (1 iff consistent: a multiple-choice answer must be exactly the right option, a free-form
one may differ in form, "0.5m and 50cm"); an extraction equal to the answer string skips the judge. Accuracy is the
mean judgement (also per subject / subfield; the official CoT-E step score is not what papers like this report).

Here both LLM calls are rules, reading the paper's models' ``\boxed{}`` answer:

* multi-choice whose ``answer`` names one option (`answer_letter`: ``B``, ``(B)``, or an option's text): right
  iff the response picks that option. The options are read from the question's ``Choices:`` block (``A:40°``
  lines), and the pick is `extraction.extract_choice` on them (boxed letter or option text, then VLMEvalKit's
  ``can_infer``); where the block does not list the answer's letter, the pick is `scores.choice_letter` of the
  boxed answer.
* free-form, and multi-choice rows whose ``answer`` names several options (``C\nD``): right iff
  `mathvision.free_form_match` accepts `extraction.extract_answer` against ``answer`` (case-insensitive equality,
  numbers within 1e-6 ignoring units, else mathruler's symbolic equivalence).

Records are HF ``AI4Math/MathVerse`` testmini rows or VLMEvalKit TSV rows (same fields: ``problem_version``,
``question_type``, ``question``, ``answer``) with ``"prediction"``. Rows of another ``problem_version`` are an
error, not filtered out: the version is the benchmark, and a file holding all five (3,940 rows) is the wrong input.
Scores (percent): ``accuracy``, ``accuracy/multi-choice``, ``accuracy/free-form`` (by ``question_type``), ``count``.

Files (:func:`load`): ``MathVerse_MINI_Vision_Intensive.tsv`` (every row must be Vision Intensive), or HF's testmini
parquet, which holds all five versions and of which only the Vision Intensive rows are read. The prompt
(:func:`question`) is VLMEvalKit's ``MathVerse.build_prompt`` (``vlmeval/dataset/image_vqa.py``, not the ``_cot``
variants): the image, then the row's ``question`` verbatim. In the TSV that is the official direct-answer query
(``Please directly answer the question and provide the correct option letter, …\nQuestion: …``, which VLMEvalKit's
InternVL prompt code rewrites), held by HF rows as ``query_wo``; their ``question`` is the bare question with its
``Choices:`` block, which the scorer reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import DataError, RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    Question,
    Record,
    accuracy_breakdown,
    image_question,
    load_records,
    prompt_text,
    register,
    required_text,
)
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_choice
from staged_vlm_jax.eval.benchmarks.mathvision import free_form_match
from staged_vlm_jax.rl.rewards.scores import choice_letter

NAME = "mathverse_mini_vi"
VERSION = "Vision Intensive"
# Everything after the question's last "Choices:" (a few questions say "Choice:").
_CHOICES_BLOCK = re.compile(r".*choices?[ \t]*:(?P<block>.*)", re.DOTALL | re.IGNORECASE)
# One option line of that block: "A:40°", "B. 2√3", "(C) 120°"; a letter with nothing after it ("B:") is no option.
_CHOICE_LINE = re.compile(r"^[ \t]*\(?(?P<letter>[A-H])\)?[ \t]*[:：.)][ \t]*(?P<text>\S.*?)[ \t]*$", re.MULTILINE)


def question_options(question: str) -> dict[str, str]:
    """The options listed in the question's last ``Choices:`` block, letter -> text (``{}`` if none)."""
    block = _CHOICES_BLOCK.fullmatch(question)
    if block is None:
        return {}
    return {line["letter"]: line["text"] for line in _CHOICE_LINE.finditer(block["block"])}


def answer_letter(answer: str, options: Mapping[str, str]) -> str | None:
    r"""The option a multi-choice ``answer`` names: its letter (``B``, ``(B)``), else the one option whose text it
    is (``False`` for ``B. False``, as a few testmini rows give it); None for anything else (``C\nD``)."""
    letter = choice_letter(answer)
    if letter is not None:
        return letter
    named = [letter for letter, text in options.items() if text == answer.strip()]
    return named[0] if len(named) == 1 else None


def _free_form(record: Record, prediction: str) -> bool:
    return free_form_match(extract_answer(prediction), record["answer"])


def _multi_choice(record: Record, prediction: str) -> bool:
    options = question_options(record["question"])
    truth = answer_letter(record["answer"], options)
    if truth is None:
        return _free_form(record, prediction)
    readable = truth in options
    picked = extract_choice(prediction, options) if readable else choice_letter(extract_answer(prediction))
    return picked == truth


# question_type -> whether a record's prediction is right.
_JUDGES: dict[str, Callable[[Record, str], bool]] = {"multi-choice": _multi_choice, "free-form": _free_form}


def _hit(record: Record, position: int) -> bool:
    prediction = required_text(record, position, "prediction", NAME)
    for field in ("answer", "question", "question_type", "problem_version"):
        required_text(record, position, field, NAME)
    if record["problem_version"] != VERSION:
        raise ValueError(
            f"{NAME} record {position}: problem_version {record['problem_version']!r} is not {VERSION!r} "
            "(select that version's rows)"
        )
    if record["question_type"] not in _JUDGES:
        raise ValueError(
            f"{NAME} record {position}: question_type {record['question_type']!r} is not one of {sorted(_JUDGES)}"
        )
    return _JUDGES[record["question_type"]](record, prediction)


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``accuracy``, ``accuracy/<question_type>`` (percent) and ``count``; every record must be Vision Intensive."""
    hits = [_hit(record, position) for position, record in enumerate(records)]
    return accuracy_breakdown(hits, [(record["question_type"],) for record in records])


def _check_version(record: Record, where: RowLocation) -> None:
    if record["problem_version"] != VERSION:
        message = f"is {record['problem_version']!r}, not {VERSION!r} (the file must be the Vision Intensive TSV)"
        raise DataError(where, "problem_version", message, reason="wrong_version")


# By extension: the fields every row needs (the prompt's, the scorer's, the image), and which rows are read.
LAYOUTS = {
    ".tsv": FileLayout(
        required=("question", "answer", "question_type", "problem_version", "image"), check=_check_version
    ),
    ".parquet": FileLayout(
        required=("query_wo", "question", "answer", "question_type", "problem_version", "image"),
        keep=lambda record: record.get("problem_version") == VERSION,
    ),
}


def load(path: epath.Path) -> list[dict[str, Any]]:
    """The rows of ``MathVerse_MINI_Vision_Intensive.tsv``, or the Vision Intensive rows of HF ``AI4Math/MathVerse``
    testmini parquet (`load_records`)."""
    return load_records(path, NAME, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + question`` for a TSV row, ``"<image>" + query_wo`` for an HF row (see the module docstring)."""
    return image_question(record, where, prompt_text(record, "query_wo" if "query_wo" in record else "question", where))


register(Benchmark(name=NAME, score=score, load=load, question=question, group="visual_math"))
