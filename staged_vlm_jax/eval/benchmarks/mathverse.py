r"""MathVerse testmini, Vision-Intensive (``mathverse_mini_vi``, Table 1) and Vision-Only (``mathverse_mini_vo``, the
extended suite) versions: accuracy, judged by rule instead of an LLM.

Official pipeline (ZrrSkywalker/MathVerse ``evaluation/extract_answer_s1.py`` + ``score_answer_s2.py``, mirrored by
VLMEvalKit's ``vlmeval/dataset/utils/mathverse.py``, which the paper ran as ``MathVerse_MINI_Vision_Intensive`` and
``MathVerse_MINI_Vision_Only``):
an LLM extracts the answer (six in-context examples), then a second LLM call judges it against ``answer`` given
``question_for_eval`` (1 iff consistent: a multiple-choice answer must be exactly the right option, a free-form
one may differ in form, "0.5m and 50cm"); an extraction equal to the answer string skips the judge. Accuracy is the
mean judgement (also per subject / subfield; the official CoT-E step score is not what papers like this report).

Here both LLM calls are rules, reading the paper's models' ``\boxed{}`` answer (the response's answer part: its box,
else the text after ``</think>``):

* multi-choice whose ``answer`` names one option (`answer_letter`: ``B``, ``(B)``, or an option's text): right
  iff the response picks that option. The options are read from the question's ``Choices:`` block (``A:40°``
  lines), and the pick is `extraction.extract_choice` on them (boxed letter or option text, then VLMEvalKit's
  ``can_infer``); where the block does not list the answer's letter, the pick is `scores.choice_letter` of the
  boxed answer.
* free-form, and multi-choice rows whose ``answer`` names several options (``C\nD``): right iff
  `mathvision.free_form_match` accepts `extraction.extract_answer` against ``answer`` (case-insensitive equality,
  numbers within 1e-6 ignoring units, else mathruler's symbolic equivalence).

With an LLM judge configured, the first call is VLMEvalKit's (`judge_prompts.mathverse`) for the responses without
``\boxed{}`` the rules find no answer in (multi-choice: no option picked; free-form: the answer part does not
already match): the judge's extraction then takes the answer part's place above. The second call stays a rule.

Records are HF ``AI4Math/MathVerse`` testmini rows or VLMEvalKit TSV rows (same fields: ``problem_version``,
``question_type``, ``question``, ``answer``) with ``"prediction"``. Rows of another ``problem_version`` are an
error, not filtered out: the version is the benchmark, and a file holding all five (3,940 rows) is the wrong input.
Vision-Only questions are in the image: their ``question`` holds no ``Choices:`` block (HF leaves it empty), so a
multi-choice pick there is the letter the answer names (`scores.choice_letter`).
Scores (percent): ``accuracy``, ``accuracy/multi-choice``, ``accuracy/free-form`` (by ``question_type``), ``count``.

Files (:func:`load`): ``MathVerse_MINI_Vision_Intensive.tsv`` / ``MathVerse_MINI_Vision_Only.tsv`` (every row must
be of the version), or HF's testmini parquet, which holds all five versions and of which only the version's rows are
read. The prompt
(:func:`question`) is VLMEvalKit's ``MathVerse.build_prompt`` (``vlmeval/dataset/image_vqa.py``, not the ``_cot``
variants): the image, then the row's ``question`` verbatim. In the TSV that is the official direct-answer query
(``Please directly answer the question and provide the correct option letter, …\nQuestion: …``, which VLMEvalKit's
InternVL prompt code rewrites), held by HF rows as ``query_wo``; their ``question`` is the bare question with its
``Choices:`` block, which the scorer reads.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import DataError, RowLocation
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
    required_text,
)
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_choice, has_box
from staged_vlm_jax.eval.benchmarks.mathvision import free_form_match
from staged_vlm_jax.rl.rewards.scores import choice_letter

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


def _pick(answer: str, options: Mapping[str, str], truth: str) -> str | None:
    """The option an answer part picks: by `extraction.extract_choice` where the question lists the answer's
    option, else the letter it names."""
    return extract_choice(answer, options) if truth in options else choice_letter(extract_answer(answer))


def _free_form(record: Record, answer: str) -> bool:
    return free_form_match(extract_answer(answer), record["answer"])


def _multi_choice(record: Record, answer: str) -> bool:
    options = question_options(record["question"])
    truth = answer_letter(record["answer"], options)
    return _free_form(record, answer) if truth is None else _pick(answer, options, truth) == truth


def _rule_reads(record: Record, prediction: str) -> bool:
    """Whether the rules find an answer in the response: a picked option (multi-choice with one right option), or
    an answer part that already matches (VLMEvalKit's exact-match prefetch, for everything else)."""
    options = question_options(record["question"])
    truth = answer_letter(record["answer"], options)
    if record["question_type"] == "multi-choice" and truth is not None:
        return _pick(prediction, options, truth) is not None
    return _free_form(record, prediction)


# question_type -> whether an answer (the response, or the judge's extraction) is right.
_JUDGES: dict[str, Callable[[Record, str], bool]] = {"multi-choice": _multi_choice, "free-form": _free_form}


@dataclasses.dataclass(frozen=True)
class Version:
    """One MathVerse version as a benchmark: its name, ``problem_version`` and table group."""

    name: str
    problem_version: str
    group: str

    def check_record(self, record: Record, position: int) -> str:
        """The record's prediction, after its fields are checked (ValueError naming the record otherwise)."""
        prediction = required_text(record, position, "prediction", self.name)
        for field in ("answer", "question", "question_type", "problem_version"):
            required_text(record, position, field, self.name)
        if record["problem_version"] != self.problem_version:
            raise ValueError(
                f"{self.name} record {position}: problem_version {record['problem_version']!r} is not "
                f"{self.problem_version!r} (select that version's rows)"
            )
        if record["question_type"] not in _JUDGES:
            raise ValueError(
                f"{self.name} record {position}: question_type {record['question_type']!r} is not one of "
                f"{sorted(_JUDGES)}"
            )
        return prediction

    def hit(self, record: Record, position: int) -> bool:
        prediction = self.check_record(record, position)
        judge = _JUDGES[record["question_type"]]
        extraction = judged(record)
        return judge(record, prediction) or (extraction is not None and judge(record, extraction))

    def wanted(self, record: Record, position: int) -> bool:
        """The judge's records: no box, and the rules read no answer (see the module docstring)."""
        prediction = self.check_record(record, position)
        return not has_box(prediction) and not _rule_reads(record, prediction)

    def layouts(self) -> dict[str, FileLayout]:
        """By extension: the fields every row needs (the prompt's, the scorer's, the image), and which rows are read.
        HF's Vision-Only rows leave ``question`` empty (the question is in the image)."""
        question = ("question",) if self.problem_version != VISION_ONLY else ()

        def check_version(record: Record, where: RowLocation) -> None:
            if record["problem_version"] != self.problem_version:
                message = f"is {record['problem_version']!r}, not {self.problem_version!r} (the file must be the " \
                          f"{self.problem_version} TSV)"  # fmt: skip
                raise DataError(where, "problem_version", message, reason="wrong_version")

        return {
            ".tsv": FileLayout(required=("question", "answer", "question_type", "problem_version", "image"),
                               check=check_version),
            ".parquet": FileLayout(required=("query_wo", *question, "answer", "question_type", "problem_version",
                                             "image"),
                                   keep=lambda record: record.get("problem_version") == self.problem_version),
        }  # fmt: skip


VISION_ONLY = "Vision Only"
VERSIONS = (
    Version("mathverse_mini_vi", "Vision Intensive", "visual_math"),
    Version("mathverse_mini_vo", VISION_ONLY, "extended"),
)


def score_records(records: Sequence[Mapping[str, Any]], version: Version) -> dict[str, float]:
    """``accuracy``, ``accuracy/<question_type>`` (percent) and ``count``; every record must be of ``version``."""
    hits = [version.hit(record, position) for position, record in enumerate(records)]
    return accuracy_breakdown(hits, [(record["question_type"],) for record in records])


def load_version(path: epath.Path, version: Version) -> list[dict[str, Any]]:
    """The rows of the version's TSV, or the version's rows of HF ``AI4Math/MathVerse`` testmini parquet."""
    return load_records(path, version.name, version.layouts())


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + question`` for a TSV row, ``"<image>" + query_wo`` for an HF row (see the module docstring)."""
    return image_question(record, where, prompt_text(record, "query_wo" if "query_wo" in record else "question", where))


def _judge(version: Version) -> JudgeTask:
    """VLMEvalKit's extraction call (`judge_prompts.mathverse`) on the answer part; any non-empty reply is an
    extraction (``null`` included: the judge found none, which matches nothing)."""
    return JudgeTask(
        wanted=version.wanted,
        messages=lambda record: judge_prompts.user(judge_prompts.mathverse(extract_answer(str(record["prediction"])))),
        parse=lambda reply, record: reply.strip() or None,
    )


_REGISTERED = [
    register(
        Benchmark(
            name=version.name,
            score=functools.partial(score_records, version=version),
            load=functools.partial(load_version, version=version),
            question=question,
            group=version.group,
            judge=_judge(version),
        )
    )
    for version in VERSIONS
]
# Table 1's MathVerse (Vision Intensive): its scorer and loader by their own names.
score, load = _REGISTERED[0].score, _REGISTERED[0].load
