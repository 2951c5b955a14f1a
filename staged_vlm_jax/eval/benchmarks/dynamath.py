r"""DynaMath (``dynamath``): 501 seed questions, each in ten generated variants; average-case and worst-case accuracy,
scored as VLMEvalKit's ``Dynamath.evaluate`` does (``vlmeval/dataset/dynamath.py``).

Per record, a short answer is read from the response, then judged by ``answer_type``:

* "float": right iff |short - answer| <= 0.001;
* "multiple choice": right iff the short answer is the answer's letter; with no short answer, VLMEvalKit counts it
  right iff the letter occurs among the response's first three characters (upper-cased), kept here;
* "text": right iff the short answer, lower-cased, occurs in the lower-cased answer (a substring test, as
  VLMEvalKit's; an empty short answer, which that test would pass, is no answer here).

The short answer, in order: the last ``\boxed{}`` (the paper's models answer so; a choice read by
`scores.choice_letter` first), else VLMEvalKit's own readings of the answer part (`extraction.extract_answer`, the
text after ``</think>``): the ``"short answer"`` of the JSON reply the prompt asks for, else that text itself
(``parse_answer``), else, with an LLM judge configured, the judge's reformatting (``DynaMath_auxeval``'s prompt and
system prompt, `judge_prompts.dynamath`, read by ``parse_answer`` too). ``parse_answer``: a float is the text's first
space-separated token as a number (``"2π"`` is 2π), here also any one number `extraction.extract_number` reads
(``\frac{1}{2}``, "12 cm": what the judge would reformat); a choice is a one-character text or the one letter of
A-E the upper-cased text contains; a text answer is the text.

Scores (percent): ``accuracy``, the average case over all records (VLMEvalKit's primary "Overall Avg Score"), and
``worst_case``, the share of seed questions (``qid``) whose variants are all right; each also per ``subject`` and
``knowledge_level`` (``accuracy/<value>``, ``worst_case/<value>``); ``count`` (records).

Files (:func:`load`): VLMEvalKit's ``DynaMath.tsv``, columns ``index``, ``image``, ``question``, ``answer``,
``answer_type``, ``qid`` (the seed question), ``varid`` (its variant, 1..10), ``subject``, ``knowledge_level``. The
prompt (:func:`question`) is ``Dynamath.build_prompt`` (dataset "DynaMath", not "_noprompt"): the image, then
``"## Question\n {question}"`` and VLMEvalKit's instruction to answer in JSON with keys "solution" and "short
answer".
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import DataError, RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    JudgeTask,
    Question,
    Record,
    blank,
    image_question,
    judge_prompts,
    judged,
    load_records,
    prompt_text,
    register,
    required,
    required_text,
)
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_number, has_box
from staged_vlm_jax.rl.rewards.scores import choice_letter, last_boxed_content

NAME = "dynamath"
FLOAT, CHOICE, TEXT = "float", "multiple choice", "text"
# A float answer within this of the truth is right.
FLOAT_TOLERANCE = 0.001
_CHOICE_LETTERS = "ABCDE"
# parse_answer's π: "2π" is 2 * pi.
_PI = "\u03c0"

# Dynamath.build_prompt (its GUIDE and TEXT_EXAMPLE), and the instruction per answer type.
_GUIDE = """
## Answer Instruction Please provide an answer to the question outlined above. Your response should adhere \
to the following JSON format, which includes two keys: 'solution' and 'short answer'. The 'solution' key can contain \
detailed steps needed to solve the question, and the 'short answer' key should provide a concise response. {INST}

Example of expected JSON response format:

"""
_EXAMPLE = json.dumps({"solution": "[Detailed step-by-step explanation]", "short answer": "[Concise Answer]"}, indent=4)
_INSTRUCTIONS = {
    CHOICE: "Provide the corresponing choice option in the 'short answer' key, such as 'A', 'B', 'C', or 'D'.",
    FLOAT: "Format the answer as a three-digit floating-point number and provide it in the 'short answer' key.",
    TEXT: "Float numbers in the answer should be formatted as three-digit floating-point numbers.",
}


def _float(text: str) -> str | None:
    """``parse_answer`` for a float: digits, else the first token as a number (with π), else `extract_number`."""
    token = text if text.isdigit() else text.split(" ")[0]
    try:
        value = float(token.split(_PI)[0]) * math.pi if _PI in token else float(token)
    except ValueError:
        value = extract_number(text)
    return None if value is None else str(value)


def _choice(text: str) -> str | None:
    """``parse_answer`` for a choice: a one-character text, else the one letter of A-E the text contains."""
    if len(text) == 1:
        return text.upper()
    letters = [letter for letter in _CHOICE_LETTERS if letter in text.upper()]
    return letters[0] if len(letters) == 1 else None


# answer_type -> parse_answer: the short answer in a text, or None if it holds none.
PARSERS: dict[str, Callable[[str], str | None]] = {FLOAT: _float, CHOICE: _choice, TEXT: lambda text: text or None}


def _answer_type(record: Record, position: int) -> str:
    answer_type = required_text(record, position, "answer_type", NAME)
    if answer_type not in PARSERS:
        raise ValueError(f"{NAME} record {position}: answer_type {answer_type!r} is not one of {sorted(PARSERS)}")
    return answer_type


def preprocess(text: str) -> str:
    """VLMEvalKit's ``preprocess``: from the first "{" to the last "}" if there are both, backslashes removed."""
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        text = text[start : end + 1]
    return text.replace("\\", "")


def _json_short_answer(text: str) -> str | None:
    try:
        reply = json.loads(text, strict=False)
    except json.JSONDecodeError:
        return None
    short = reply.get("short answer") if isinstance(reply, dict) else None
    return None if short is None else str(short)


def rule_short_answer(prediction: str, answer_type: str) -> str | None:
    """The short answer the rules read from a response (the box, the JSON reply, the text; module docstring)."""
    parse = PARSERS[answer_type]
    boxed = last_boxed_content(prediction)
    if boxed is not None:
        return (choice_letter(boxed) if answer_type == CHOICE else None) or parse(boxed)
    text = preprocess(extract_answer(prediction))
    short = _json_short_answer(text)
    return (parse(short) if short is not None else None) or parse(text)


def _right(short: str | None, record: Record, position: int, answer_type: str) -> bool:
    answer = required_text(record, position, "answer", NAME)
    if short is None:
        unparsed = preprocess(extract_answer(str(record["prediction"])))
        return answer_type == CHOICE and answer in unparsed[:3].upper()
    if answer_type == FLOAT:
        return abs(float(short) - float(answer)) <= FLOAT_TOLERANCE
    if answer_type == CHOICE:
        return short == answer
    return short.lower() in answer.lower()


def _hit(record: Record, position: int) -> bool:
    answer_type = _answer_type(record, position)
    short = rule_short_answer(required_text(record, position, "prediction", NAME), answer_type)
    return _right(short if short is not None else judged(record), record, position, answer_type)


def score(records: Sequence[Record]) -> dict[str, float]:
    """``accuracy`` (average case), ``worst_case``, each per subject and knowledge level (percent), ``count``."""
    if not records:
        raise ValueError("no records to score")
    hits = [_hit(record, position) for position, record in enumerate(records)]
    seeds = [str(required(record, position, "qid", NAME)) for position, record in enumerate(records)]

    def average_and_worst(positions: Sequence[int]) -> tuple[float, float]:
        seed_right: dict[str, bool] = defaultdict(lambda: True)  # a seed question is right iff all its variants are
        for position in positions:
            seed_right[seeds[position]] &= hits[position]
        average = 100.0 * sum(hits[position] for position in positions) / len(positions)
        return average, 100.0 * sum(seed_right.values()) / len(seed_right)

    groups: dict[str, list[int]] = defaultdict(list)  # subject / knowledge level -> record positions
    for position, record in enumerate(records):
        for field in ("subject", "knowledge_level"):
            if not blank(record.get(field)):
                groups[str(record[field])].append(position)
    scores = dict(zip(("accuracy", "worst_case"), average_and_worst(range(len(records))), strict=True))
    for value, positions in sorted(groups.items()):
        scores[f"accuracy/{value}"], scores[f"worst_case/{value}"] = average_and_worst(positions)
    scores["count"] = float(len(records))
    return scores


def _judge_wanted(record: Record, position: int) -> bool:
    prediction = str(record["prediction"])
    return not has_box(prediction) and rule_short_answer(prediction, _answer_type(record, position)) is None


def _judge_messages(record: Record) -> list[dict[str, str]]:
    prediction = preprocess(extract_answer(str(record["prediction"])))
    return judge_prompts.user(judge_prompts.dynamath(prediction, str(record["answer_type"])),
                              system=judge_prompts.DYNAMATH_SYSTEM)  # fmt: skip


JUDGE = JudgeTask(
    wanted=_judge_wanted,
    messages=_judge_messages,
    parse=lambda reply, record: PARSERS[str(record["answer_type"])](reply.strip()),
)


def _check(record: Record, where: RowLocation) -> None:
    if record["answer_type"] not in PARSERS:
        message = f"{record['answer_type']!r} is not one of {sorted(PARSERS)}"
        raise DataError(where, "answer_type", message, reason="invalid_answer_type")
    if record["answer_type"] == FLOAT and _float(str(record["answer"])) is None:
        raise DataError(where, "answer", f"{record['answer']!r} is not a number", reason="invalid_answer")


LAYOUTS = {".tsv": FileLayout(required=("question", "answer", "answer_type", "qid", "varid", "image"), check=_check)}


def load(path: epath.Path) -> list[dict[str, Any]]:
    """The rows of ``DynaMath.tsv`` (`load_records`)."""
    return load_records(path, NAME, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``Dynamath.build_prompt``'s text after the image (see the module docstring)."""
    text = f"## Question\n {prompt_text(record, 'question', where)}"
    instruction = _INSTRUCTIONS.get(str(record.get("answer_type")), _INSTRUCTIONS[TEXT])  # VLMEvalKit's else branch
    return image_question(record, where, text + _GUIDE.format(INST=instruction) + _EXAMPLE)


register(Benchmark(name=NAME, score=score, load=load, question=question, group="extended", judge=JUDGE))
