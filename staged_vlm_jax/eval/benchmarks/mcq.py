"""The multiple-choice perception benchmarks of Table 1: A-OKVQA, RealWorldQA and MMStar, scored as VLMEvalKit does.

Records are VLMEvalKit TSV rows (``question``, option columns ``A``..``H``, ``answer`` = the right letter, optional
``category``) with the model's raw response under ``"prediction"``. A record is right iff
`extraction.extract_choice` reads the answer's letter from the response (VLMEvalKit ``mcq_vanilla_eval``: hit iff the
extracted option equals the answer; an unreadable response is the refusal "Z", hence wrong). Scores, in percent as
VLMEvalKit's ``report_acc`` gives them: ``accuracy`` over all records, ``accuracy/<category>`` per value of the
``category`` field where records have one (MMStar's six core capabilities), and ``count``.

RealWorldQA also holds a minority of open questions (a number or a word, no options). There its records carry no
option columns and are right iff the normalised :func:`extraction.extract_answer` equals the normalised answer, as
lmms-eval's ``realworldqa_process_results`` compares them (lower case, stripped, trailing periods dropped) after its
``NumberWordsToDigitsFilter`` ("two" -> "2"). lmms-eval maps number words in the prediction only; here both sides
are normalised alike, which changes nothing for RealWorldQA's digit answers. A-OKVQA and MMStar have no open
questions, so there a record without options is a data error.

Files (:func:`load`): the VLMEvalKit TSVs only (``A-OKVQA.tsv``, ``RealWorldQA.tsv``, ``MMStar.tsv``); the HF sets
hold their options inside the question text (RealWorldQA, MMStar) or as a list with an answer index (A-OKVQA),
not the option columns VLMEvalKit's prompt and this scorer read. The prompt (:func:`question`) is
``ImageMCQDataset.build_prompt`` (``vlmeval/dataset/image_mcq.py``; `benchmarks.mcq_prompt`): the image, then
``Hint: …`` if any, ``Question: …``, and for a row with options ``Options:``, ``A. …`` lines and "Please select the
correct answer from the options above. " (RealWorldQA's open questions end after the question).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    Question,
    Record,
    accuracy_breakdown,
    blank,
    image_question,
    load_records,
    mcq_prompt,
    register,
)
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_choice

# VLMEvalKit's MCQ TSVs name options by capital letters; the paper's benchmarks use at most eight.
OPTION_LETTERS = "ABCDEFGH"
# lmms-eval realworldqa/utils.py NumberWordsToDigitsFilter: a whole answer that is one of these words.
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}


def record_options(record: Record) -> dict[str, str]:
    """The record's options, letter -> text, from its non-blank ``A``..``H`` cells (as VLMEvalKit's
    ``build_choices`` skips NaN cells)."""
    return {letter: str(record[letter]) for letter in OPTION_LETTERS if not blank(record.get(letter))}


def normalize_open_answer(text: str) -> str:
    """lmms-eval's RealWorldQA normalisation of an open answer: lower case, stripped, trailing periods removed,
    and a whole answer "zero".."ten" written as its digits."""
    text = text.lower().strip().rstrip(".")
    return _NUMBER_WORDS.get(text, text)


def _choice_hit(record: Record, options: dict[str, str], position: int) -> bool:
    answer = str(record["answer"]).strip()
    if answer not in options:
        raise ValueError(f"record {position}: answer {answer!r} is not one of its option letters {sorted(options)}")
    return extract_choice(str(record["prediction"]), options) == answer


def _open_hit(record: Record) -> bool:
    predicted = normalize_open_answer(extract_answer(str(record["prediction"])))
    return predicted == normalize_open_answer(str(record["answer"]))


@dataclasses.dataclass(frozen=True)
class MCQRules:
    """How one multiple-choice benchmark scores a record: all hold options, except RealWorldQA's open questions."""

    open_questions: bool = False

    def hit(self, record: Record, position: int) -> bool:
        """Whether the record's prediction is right; raises ValueError on a record no rule can score."""
        options = record_options(record)
        if options:
            return _choice_hit(record, options, position)
        if not self.open_questions:
            raise ValueError(
                f"record {position} has no options (every column {OPTION_LETTERS[0]}..{OPTION_LETTERS[-1]} is blank)"
            )
        return _open_hit(record)


def score_records(records: Sequence[Record], rules: MCQRules) -> dict[str, float]:
    """``{"accuracy", "count", "accuracy/<category>"...}`` in percent for ``records`` under ``rules``.

    Raises ValueError on an empty list (an accuracy of nothing is no score) or on a record that cannot be scored.
    """
    hits = [rules.hit(record, position) for position, record in enumerate(records)]
    categories = [[] if blank(record.get("category")) else [str(record["category"])] for record in records]
    return accuracy_breakdown(hits, categories)


MCQ_RULES = {
    "a_okvqa": MCQRules(),
    "realworldqa": MCQRules(open_questions=True),
    "mmstar": MCQRules(),
}

# The fields every row needs (the prompt's, the scorer's, the image); the options are the letter columns.
LAYOUTS = {".tsv": FileLayout(required=("question", "answer", "image"))}


def load_tsv(path: epath.Path, *, name: str) -> list[dict[str, Any]]:
    """The rows of benchmark ``name``'s VLMEvalKit TSV (`load_records`)."""
    return load_records(path, name, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + ImageMCQDataset.build_prompt``'s text (see the module docstring)."""
    return image_question(record, where, mcq_prompt(record, where))


for _name, _rules in MCQ_RULES.items():
    register(
        Benchmark(
            name=_name,
            score=functools.partial(score_records, rules=_rules),
            load=functools.partial(load_tsv, name=_name),
            question=question,
            group="perception",
        )
    )
