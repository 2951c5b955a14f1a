r"""WeMath testmini (``wemath``): the official four-dimensional metrics and step accuracies, answers read by rule.

Official scoring (We-Math/We-Math ``evaluation/four_dimensional_metrics.py`` and ``accuracy.py``, copied into
VLMEvalKit's ``vlmeval/dataset/utils/wemath.py``): a row is right iff its extracted letter equals ``answer``. The
official extraction takes the text after the last "Answer", drops ``<>:.``, and keeps its first character if it
is one of A-H; VLMEvalKit has an LLM judge pick the option (``mcq_vanilla_eval``'s ``hit``). Here the letter is
`extraction.extract_choice` on the row's options (the boxed letter or option text first, then VLMEvalKit's
``can_infer`` rules, which is what VLMEvalKit tries before calling its judge); with an LLM judge configured, a
response without ``\boxed{}`` that those rules cannot read is matched to an option by the judge with VLMEvalKit's
WeMath prompt (`judge_prompts.wemath`, `mcq.choice_judge`).

The rows of one problem share an ``ID``; ``key`` says which row is which: ``2steps_1``, ``2steps_2`` and the
composite ``2steps_multi``, or ``3steps_1``..``3steps_3`` and ``3steps_multi``. Each composite problem falls into
(with "subs" its one-step sub-questions):

* IK (insufficient knowledge): some sub wrong, composite wrong;
* IG (inadequate generalization): all subs right, composite wrong;
* CM_strict (complete mastery): all subs right, composite right;  CM_loose: some sub right, composite right;
* RM_strict (rote memorization): some sub wrong, composite right;  RM_loose: all subs wrong, composite right.

``score_strict`` / ``score_loose`` = (N - 0.5 IG - RM - IK) / N with the strict / loose RM, N the number of
composite problems (the official script writes 525, testmini's N). IK, IG and CM are reported as percentages of N,
but RM, as officially, as a percentage of the composites answered right under that rule: RM / (CM + RM) (NaN when
no composite is right). ``accuracy/one_step`` is the accuracy over all sub-questions, ``accuracy/two_step`` and
``accuracy/three_step`` over the 2- and 3-step composites (NaN when there are none); ``count`` is N. Leaderboards
quote Score (Strict), the headline.

Records are HF ``We-Math/We-Math`` testmini rows (options in one string ``option``: ``"A. …;B. …; C. …"``) or
VLMEvalKit ``WeMath`` TSV rows (options in columns ``A``..``H``), with ``"prediction"``. Unlike the official left
join, which silently drops or half-counts incomplete problems, a problem that lacks a row, has one twice, or mixes
2- and 3-step keys is an error.

Files (:func:`load`): ``WeMath.tsv`` only. The prompt (:func:`question`) is VLMEvalKit's ``WeMath.build_prompt``
(``vlmeval/dataset/image_mcq.py``, dataset ``WeMath``, not ``WeMath_COT``): the image, then ``Hint: …`` if any,
``Question: {question}`` and the ``Options:`` lines, without ``ImageMCQDataset``'s closing instruction. The TSV's
``question`` text is VLMEvalKit's (its earlier release appended the official answer-format template to it), so HF
rows, whose question and option string it cannot be rebuilt from with certainty, are not read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    Question,
    Record,
    image_question,
    judge_prompts,
    load_records,
    mcq_prompt,
    register,
    required,
    required_text,
)
from staged_vlm_jax.eval.benchmarks.mcq import choice_judge, picked_option

NAME = "wemath"
COMPOSITE = "multi"
_KEY = re.compile(r"(?P<steps>[23])steps_(?P<part>[1-3]|multi)")
_OPTION_COLUMNS = "ABCDEFGH"
# An option marker in WeMath's option string: a capital letter and a (possibly full-width) period, at the start or
# after a ';'.
_OPTION_MARKER = re.compile(r"(?:^|;)\s*([A-Z])\s*[.．]")
_STEP_NAMES = {2: "two_step", 3: "three_step"}

# The four dimensions: (all subs right, some sub right, composite right) -> whether the composite counts.
_DIMENSIONS: dict[str, Callable[[bool, bool, bool], bool]] = {
    "IK": lambda all_subs, any_sub, composite: not all_subs and not composite,
    "IG": lambda all_subs, any_sub, composite: all_subs and not composite,
    "CM_strict": lambda all_subs, any_sub, composite: all_subs and composite,
    "RM_strict": lambda all_subs, any_sub, composite: not all_subs and composite,
    "CM_loose": lambda all_subs, any_sub, composite: any_sub and composite,
    "RM_loose": lambda all_subs, any_sub, composite: not any_sub and composite,
}


def parse_options(option: str) -> dict[str, str]:
    """WeMath's option string as letter -> text.

    Options are separated by ``;`` and start with a letter and a period (``A. 300, 400;B. 400, 300; E. No correct
    answer``; also ``B．`` full-width; letters may skip: ``C. No.; F. No correct answer``). A few testmini strings
    also hold ``;X.`` inside an option's text (``… around point ;O.;B. …``, ``… Shape ;C.; C. …``), so a marker
    starts an option only if its text, up to the next marker, is not empty (spaces and ``;`` aside); otherwise it
    stays part of the previous option's text. Texts are stripped of spaces and the ``;`` separators around them.
    On the 1,740 testmini strings this gives distinct letters in increasing order, non-empty texts and the answer
    among them; the three strings that lack the ``;`` before ``B.`` (``A. 45° B. 60° ;C. 120°; …``) keep that
    option inside A's text, which no rule can tell from text (their answer is A).
    """
    markers = list(_OPTION_MARKER.finditer(option))
    ends = [marker.start() for marker in markers[1:]] + [len(option)]
    starts = [marker for marker, end in zip(markers, ends, strict=True) if option[marker.end() : end].strip(" ;")]
    text_ends = [marker.start() for marker in starts[1:]] + [len(option)]
    return {marker[1]: option[marker.end() : end].strip(" ;") for marker, end in zip(starts, text_ends, strict=True)}


def record_options(record: Record) -> dict[str, str]:
    """The row's options: HF's ``option`` string parsed, or the VLMEvalKit TSV's columns ``A``..``H`` (blank, NaN,
    where a question has fewer)."""
    if isinstance(record.get("option"), str):
        return parse_options(record["option"])
    columns = {letter: record.get(letter) for letter in _OPTION_COLUMNS}
    return {letter: text for letter, text in columns.items() if isinstance(text, str) and text}


def _options(record: Record, position: int) -> dict[str, str]:
    if "option" in record:
        required_text(record, position, "option", NAME)
    options = record_options(record)
    if not options:
        raise ValueError(f"{NAME} record {position}: no options (field 'option', or columns A..H)")
    return options


def row_correct(record: Record, position: int) -> bool:
    """Whether the row's prediction picks its answer letter (the official ``joker``)."""
    options = _options(record, position)
    answer = required_text(record, position, "answer", NAME)
    if answer not in options:
        raise ValueError(f"{NAME} record {position}: answer {answer!r} is not one of its options {sorted(options)}")
    required_text(record, position, "prediction", NAME)
    return picked_option(record, options) == answer


def _problems(records: Sequence[Record]) -> dict[str, tuple[int, dict[str, bool]]]:
    """ID -> (number of steps, key part ("1".."3" or "multi") -> row correct), checked complete."""
    problems: dict[str, tuple[int, dict[str, bool]]] = {}
    for position, record in enumerate(records):
        problem = str(required(record, position, "ID", NAME))
        key = required_text(record, position, "key", NAME)
        match = _KEY.fullmatch(key)
        if match is None or (match["part"] != COMPOSITE and int(match["part"]) > int(match["steps"])):
            raise ValueError(f"{NAME} record {position}: field 'key' is {key!r}, not e.g. '2steps_1' or '3steps_multi'")
        steps, rows = problems.setdefault(problem, (int(match["steps"]), {}))
        if steps != int(match["steps"]) or match["part"] in rows:
            raise ValueError(f"{NAME} record {position}: key {key!r} repeats or contradicts problem {problem!r}'s rows")
        rows[match["part"]] = row_correct(record, position)
    for problem, (steps, rows) in problems.items():
        expected = {str(part) for part in range(1, steps + 1)} | {COMPOSITE}
        if set(rows) != expected:
            missing = sorted(f"{steps}steps_{part}" for part in expected - set(rows))
            raise ValueError(f"{NAME}: problem {problem!r} lacks the rows {missing}")
    return problems


def _percent(count: int, total: int) -> float:
    return 100.0 * count / total if total else math.nan


def score(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The official four-dimensional metrics and step accuracies, in percent (see the module docstring)."""
    problems = _problems(records)
    if not problems:
        raise ValueError("no records to score")
    counts = dict.fromkeys(_DIMENSIONS, 0)
    subs: list[bool] = []
    composites: dict[int, list[bool]] = {steps: [] for steps in _STEP_NAMES}
    for steps, rows in problems.values():
        sub_rows = [rows[str(part)] for part in range(1, steps + 1)]
        subs.extend(sub_rows)
        composites[steps].append(rows[COMPOSITE])
        for dimension, applies in _DIMENSIONS.items():
            counts[dimension] += applies(all(sub_rows), any(sub_rows), rows[COMPOSITE])
    n = len(problems)
    scores = {
        f"score_{rule}": _percent(n - 0.5 * counts["IG"] - counts[f"RM_{rule}"] - counts["IK"], n)
        for rule in ("strict", "loose")
    }
    scores.update({dimension: _percent(counts[dimension], n) for dimension in ("IK", "IG", "CM_strict", "CM_loose")})
    scores.update(
        {
            f"RM_{rule}": _percent(counts[f"RM_{rule}"], counts[f"CM_{rule}"] + counts[f"RM_{rule}"])
            for rule in ("strict", "loose")
        }
    )
    scores["accuracy/one_step"] = _percent(sum(subs), len(subs))
    scores.update(
        {
            f"accuracy/{name}": _percent(sum(composites[steps]), len(composites[steps]))
            for steps, name in _STEP_NAMES.items()
        }
    )
    scores["count"] = float(n)
    return scores


# The fields every row needs (the prompt's, the scorer's, the image); the options are the columns A..H.
LAYOUTS = {".tsv": FileLayout(required=("question", "answer", "ID", "key", "image"))}


def load(path: epath.Path) -> list[dict[str, Any]]:
    """The rows of ``WeMath.tsv`` (`load_records`)."""
    return load_records(path, NAME, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>Question: {question}\nOptions:\nA. …\n…"`` (see the module docstring)."""
    return image_question(record, where, mcq_prompt(record, where, instruction=False))


register(
    Benchmark(
        name=NAME,
        score=score,
        load=load,
        question=question,
        group="visual_math",
        headline="score_strict",
        judge=choice_judge(record_options, judge_prompts.wemath),
    )
)
