r"""MathVista testmini (``mathvista_mini``), scored by the official ``calculate_score.py`` without its LLM extractor.

Official pipeline (lupantech/MathVista ``evaluation/``): an LLM (GPT-4 with five in-context examples;
``extract_answer.py``) extracts the answer from the response, ``calculate_score.normalize_extracted_answer`` puts
it in the answer's form, and ``safe_equal`` compares it with ``answer`` as strings. VLMEvalKit (which the paper
ran, with Claude as the extractor) first tries ``post_check(prefetch=True)``: ``can_infer`` for options, else
int/float equality, and calls the LLM only when that finds nothing.

Here the LLM step is rule-based, as the paper's models answer ``\boxed{X}``, unless an LLM judge is configured:

* multi_choice: the option `extraction.extract_choice` reads (boxed letter or option text, then VLMEvalKit's
  ``can_infer``: the prefetch) as its letter, else `extraction.extract_answer`; then the official normalisation
  (:func:`normalize_choice`): a letter ``(a)``/``A`` -> that choice's text, anything else -> the choice nearest in
  Levenshtein distance (so every multi_choice answer names some choice, as officially).
* free_form: `extraction.extract_answer`; a number is read with ``float`` as officially, or, where that fails,
  with `extraction.extract_number` (units, ``\frac``, thousands commas: what the LLM extractor strips); then the
  official normalisation by ``answer_type`` (:data:`FREE_FORM_NORMALIZERS`). A list answer is compared as the
  extracted string itself (``str(x)``), officially too: ``[2007,2008]`` is not ``[2007, 2008]``.
* with an LLM judge, a response without ``\boxed{}`` that those rules cannot read (VLMEvalKit's failed prefetch:
  multi_choice, no option read; integer/float, no number; list, always) is extracted by the judge with VLMEvalKit's
  prompt (`judge_prompts.mathvista`: five in-context examples, then the row's question), and the judge's extraction
  goes through the same official normalisation.

Records are the HF ``AI4Math/MathVista`` testmini rows (``choices`` a list, ``precision`` a float) or VLMEvalKit
``MathVista_MINI`` TSV rows (``choices`` the list's ``repr``); ``answer`` is the choice's *text* for multi_choice
in both. VLMEvalKit's own ``post_check`` compares the letter ``answer_option`` instead, and never counts a list
answer right (it compares ``str(None)``); the official script is followed here. Scores (percent): ``accuracy``,
``accuracy/<question_type>`` and ``accuracy/<answer_type>`` (the official breakdown's first two keys), ``count``.

Files (:func:`load`): ``MathVista_MINI.tsv`` or HF's testmini parquet. The prompt (:func:`question`) is VLMEvalKit's:
``MathVista`` keeps ``ImageBaseDataset.build_prompt`` (``vlmeval/dataset/image_base.py``), the image then the row's
``question`` verbatim, which in the TSV is the official prompt, hint and choices included (``Hint: …\nQuestion:
…\nChoices:\n(A) …``); HF rows hold that text as ``query`` (their ``question`` is the bare question) and the image
as ``decoded_image`` (``image`` is its file name).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

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

NAME = "mathvista_mini"
_PARENTHESIZED_LETTER = re.compile(r"\(([a-zA-Z])\)")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each 1), as ``Levenshtein.distance``."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def normalize_choice(extraction: str, choices: Sequence[str]) -> str:
    """The official multi_choice normalisation: the choice an extracted answer names.

    The first parenthesized letter, upper-cased, replaces the extraction (``(b) 8/11`` -> ``B``); an extraction
    that is exactly one of the first ``len(choices)`` capital letters names that choice; anything else names the
    choice with the smallest Levenshtein distance, the first on ties (``get_most_similar``). Note the official
    quirks: a bare ``b`` is no letter (only ``(b)`` is), and an empty extraction names the shortest choice.
    """
    extraction = extraction.strip()
    letters = _PARENTHESIZED_LETTER.findall(extraction)
    if letters:
        extraction = letters[0].upper()
    sequential = [chr(ord("A") + i) for i in range(len(choices))]
    if extraction in sequential:
        return choices[sequential.index(extraction)]
    distances = [levenshtein(extraction, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def _number(extraction: str) -> float | None:
    """``float(extraction)`` as officially, else `extract_number` (what an LLM extractor keeps of ``3 cm`` or
    ``\\frac{1}{2}``); None if neither reads a finite number (officially an exception, caught as no answer)."""
    try:
        value = float(extraction)
    except ValueError:
        value = extract_number(extraction)
    return value if value is not None and math.isfinite(value) else None


def _decimals(record: Record, position: int) -> int:
    """The record's ``precision``: HF's float, or the TSV cell's text (``"1.0"``) read as one."""
    precision = required(record, position, "precision", NAME)
    try:
        value = float(precision) if isinstance(precision, str) else precision
        whole = value == int(value) and value >= 0
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ValueError(f"{NAME} record {position}: field 'precision' must be a whole number, got {precision!r}")
    return int(value)


def _integer(extraction: str, record: Record, position: int) -> str | None:
    value = _number(extraction)
    return None if value is None else str(int(value))  # truncates, officially: 3.7 -> "3"


def _float(extraction: str, record: Record, position: int) -> str | None:
    decimals = _decimals(record, position)
    value = _number(extraction)
    return None if value is None else str(round(value, decimals))


def _list(extraction: str, record: Record, position: int) -> str | None:
    return extraction


# answer_type -> the official normalisation of a free_form extraction (None: no answer). answer_type "text"
# occurs only with multi_choice, where the official code never reaches this table (a free_form text answer would
# crash it); here it is a ValueError.
FREE_FORM_NORMALIZERS: dict[str, Callable[[str, Record, int], str | None]] = {
    "integer": _integer,
    "float": _float,
    "list": _list,
}


def _choices(record: Record, position: int) -> list[str]:
    """The record's choices: HF's list (or numpy array), or VLMEvalKit's ``repr`` of the list."""
    choices = required(record, position, "choices", NAME)
    if isinstance(choices, str):
        try:
            choices = ast.literal_eval(choices)
        except (ValueError, SyntaxError):
            raise ValueError(f"{NAME} record {position}: field 'choices' is not a list: {choices!r}") from None
    choices = [str(choice) for choice in choices]
    if not choices:
        raise ValueError(f"{NAME} record {position}: field 'choices' is empty for a multi_choice question")
    return choices


def _options(record: Record, position: int) -> tuple[list[str], dict[str, str]]:
    """The record's choices, and as options (letter -> choice); its answer must be one of them."""
    choices = _choices(record, position)
    answer = record["answer"]
    if answer not in choices:
        raise ValueError(f"{NAME} record {position}: answer {answer!r} is not one of its choices {choices}")
    return choices, {chr(ord("A") + i): choice for i, choice in enumerate(choices)}


def _multi_choice_prediction(record: Record, position: int, prediction: str) -> str | None:
    choices, options = _options(record, position)
    extraction = judged(record)
    if extraction is not None:
        return normalize_choice(extraction, choices)
    return normalize_choice(extract_choice(prediction, options) or extract_answer(prediction), choices)


def _normalizer(record: Record, position: int) -> Callable[[str, Record, int], str | None]:
    answer_type = record["answer_type"]
    if answer_type not in FREE_FORM_NORMALIZERS:
        raise ValueError(
            f"{NAME} record {position}: answer_type {answer_type!r} is not one of {sorted(FREE_FORM_NORMALIZERS)}"
        )
    return FREE_FORM_NORMALIZERS[answer_type]


def _free_form_prediction(record: Record, position: int, prediction: str) -> str | None:
    extraction = judged(record)
    answer = extraction if extraction is not None else extract_answer(prediction)
    return _normalizer(record, position)(answer, record, position)


def _multi_choice_read(record: Record, position: int, prediction: str) -> bool:
    return extract_choice(prediction, _options(record, position)[1]) is not None


def _free_form_read(record: Record, position: int, prediction: str) -> bool:
    # A list answer is never read by rule (VLMEvalKit's prefetch compares str(None) for it).
    normalizer = _normalizer(record, position)
    return normalizer is not _list and normalizer(extract_answer(prediction), record, position) is not None


# question_type -> (the record's prediction in its answer's form, whether VLMEvalKit's prefetch rules read it).
_PREDICTIONS: dict[str, tuple[Callable[[Record, int, str], str | None], Callable[[Record, int, str], bool]]] = {
    "multi_choice": (_multi_choice_prediction, _multi_choice_read),
    "free_form": (_free_form_prediction, _free_form_read),
}


def _checked(record: Record, position: int) -> str:
    """The record's prediction, after its fields are checked."""
    prediction = required_text(record, position, "prediction", NAME)
    for field in ("answer", "question_type", "answer_type"):
        required_text(record, position, field, NAME)
    question_type = record["question_type"]
    if question_type not in _PREDICTIONS:
        raise ValueError(
            f"{NAME} record {position}: question_type {question_type!r} is not one of {sorted(_PREDICTIONS)}"
        )
    return prediction


def normalized_prediction(record: Record, position: int) -> str | None:
    """The record's prediction in its answer's form (None where the official normalisation gives None): the judge's
    extraction where there is one (`benchmarks.judged`), else the response read by rule."""
    prediction = _checked(record, position)
    return _PREDICTIONS[record["question_type"]][0](record, position, prediction)


def _judge_wanted(record: Record, position: int) -> bool:
    prediction = _checked(record, position)
    return not has_box(prediction) and not _PREDICTIONS[record["question_type"]][1](record, position, prediction)


JUDGE = JudgeTask(
    wanted=_judge_wanted,
    messages=lambda record: judge_prompts.user(
        judge_prompts.mathvista(
            str(record["query" if "query" in record else "question"]), extract_answer(str(record["prediction"]))
        )  # fmt: skip
    ),
    parse=lambda reply, record: reply.strip() or None,
)


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``accuracy``, ``accuracy/<question_type>``, ``accuracy/<answer_type>`` (percent) and ``count``: a record is
    right iff its normalised prediction equals ``answer`` (``safe_equal``)."""
    hits = [normalized_prediction(record, position) == record["answer"] for position, record in enumerate(records)]
    groups = [(record["question_type"], record["answer_type"]) for record in records]
    return accuracy_breakdown(hits, groups)


# By extension: the fields every row needs (the prompt's, the scorer's, the image).
LAYOUTS = {
    ".tsv": FileLayout(required=("question", "answer", "question_type", "answer_type", "image")),
    ".parquet": FileLayout(
        required=("query", "answer", "question_type", "answer_type", "decoded_image"), image="decoded_image"
    ),
}


def load(path: epath.Path) -> list[dict[str, Any]]:
    """The rows of ``MathVista_MINI.tsv`` or HF ``AI4Math/MathVista`` testmini parquet (`load_records`)."""
    return load_records(path, NAME, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + question`` for a TSV row, ``"<image>" + query`` for an HF row (see the module docstring)."""
    text = prompt_text(record, "query" if "query" in record else "question", where)
    return image_question(record, where, text, "decoded_image" if "decoded_image" in record else "image")


register(Benchmark(name=NAME, score=score, load=load, question=question, group="visual_math", judge=JUDGE))
