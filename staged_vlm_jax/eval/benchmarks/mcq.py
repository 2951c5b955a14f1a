"""The multiple-choice benchmarks, scored as VLMEvalKit's ``ImageMCQDataset`` does: Table 1's A-OKVQA, RealWorldQA and
MMStar, and the extended suite's BLINK, VisOnlyQA (Real, Synthetic), CV-Bench-2D and V*Bench.

Records are VLMEvalKit TSV rows (``question``, option columns ``A``..``H``, ``answer`` = the right letter, optional
``hint``, ``category``) with the model's raw response under ``"prediction"``. A record is right iff
`extraction.extract_choice` reads the answer's letter from the response (VLMEvalKit ``mcq_vanilla_eval``: hit iff the
extracted option equals the answer; an unreadable response is the refusal "Z", hence wrong). Where those rules find no
option in a response without ``\\boxed{}``, VLMEvalKit asks its judge which option the response matches
(``extract_answer_from_item``; the prompt `judge_prompts.mcq`, BLINK's `judge_prompts.blink`): with an LLM judge
configured the judge's letter (or "Z": none) decides those records (`choice_judge`). Where VLMEvalKit's judge fails
three times it picks a random option; here the record keeps the rules' reading (unanswered).

Scores, in percent as VLMEvalKit's ``report_acc`` gives them: ``accuracy`` over all records, ``accuracy/<value>``
per value of each breakdown field a record has (``category``: MMStar's six core capabilities, BLINK's 14 tasks,
VisOnlyQA's tasks, V*Bench's two; CV-Bench's ``source`` and ``task``), and ``count``. CV-Bench-2D's ``accuracy`` is
``CVBench.report_accuracy``'s: the mean of its sources' (ADE20K, COCO) accuracies, not the pooled accuracy.

RealWorldQA also holds a minority of open questions (a number or a word, no options). There its records carry no
option columns and are right iff the normalised :func:`extraction.extract_answer` equals the normalised answer, as
lmms-eval's ``realworldqa_process_results`` compares them (lower case, stripped, trailing periods dropped) after its
``NumberWordsToDigitsFilter`` ("two" -> "2"). lmms-eval maps number words in the prediction only; here both sides
are normalised alike, which changes nothing for RealWorldQA's digit answers. The other benchmarks have no open
questions, so there a record without options is a data error.

Files (:func:`load_tsv`), the VLMEvalKit TSVs only: ``A-OKVQA.tsv``, ``RealWorldQA.tsv``, ``MMStar.tsv``,
``BLINK.tsv`` (several images per row: the ``image`` cell is a list of base64 images), ``CV-Bench-2D.tsv`` (columns
``prompt``, ``source``; ``split`` "2D"), ``VStarBench.tsv``, and ``visonlyqa_vlmevalkit.tsv`` (HF
``ryokamoi/VisOnlyQA_Eval_Real``), which holds both VisOnlyQA sets (column ``split``: ``Eval_Real``,
``Eval_Synthetic``; ``category``: the task): ``visonlyqa_real`` and ``visonlyqa_synthetic`` each read their rows of
it, as VLMEvalKit's ``report_acc`` reports its two splits. The HF sets hold their options inside the question text or
as a list, not the option columns VLMEvalKit's prompt and this scorer read. The prompt (:func:`question`) is
``ImageMCQDataset.build_prompt`` (``vlmeval/dataset/image_mcq.py``; `benchmarks.mcq_prompt`): the images, then
``Hint: …`` if any, ``Question: …``, and for a row with options ``Options:``, ``A. …`` lines and "Please select the
correct answer from the options above. " (RealWorldQA's open questions end after the question); CV-Bench's is
``CVBench.build_prompt``: the images, then the row's own ``prompt`` verbatim.
"""

from __future__ import annotations

import dataclasses
import functools
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
    blank,
    image_question,
    judge_prompts,
    judged,
    load_records,
    mcq_prompt,
    prompt_text,
    register,
)
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_choice, has_box, infer_option

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


def picked_option(record: Record, options: Mapping[str, str]) -> str | None:
    """The option the record's response picks: by rule (`extraction.extract_choice`), else the judge's letter
    (`benchmarks.judged`; "Z" when it matched none), else None."""
    return extract_choice(str(record["prediction"]), options) or judged(record)


def choice_judge(
    options: Callable[[Record], Mapping[str, str]],
    prompt: Callable[[str, Mapping[str, str], str], str] = judge_prompts.mcq,
) -> JudgeTask:
    """VLMEvalKit's option-matching judge for records whose ``options(record)`` the rules cannot find in the
    response: ``prompt(question, options, answer)`` gets the row's ``question`` and the response's answer part
    (`extraction.extract_answer`: after ``</think>``, as VLMEvalKit's ``SPLIT_THINK`` passes it); the reply is read
    by ``can_infer`` (`extraction.infer_option`: a letter, or "Z" for none), anything else unusable."""

    def wanted(record: Record, position: int) -> bool:
        prediction = str(record["prediction"])
        choices = options(record)
        return bool(choices) and not has_box(prediction) and extract_choice(prediction, choices) is None

    def messages(record: Record) -> list[dict[str, str]]:
        answer = extract_answer(str(record["prediction"]))
        return judge_prompts.user(prompt(str(record["question"]), options(record), answer))

    return JudgeTask(wanted, messages, lambda reply, record: infer_option(reply, options(record)))


def _choice_hit(record: Record, options: dict[str, str], position: int) -> bool:
    answer = str(record["answer"]).strip()
    if answer not in options:
        raise ValueError(f"record {position}: answer {answer!r} is not one of its option letters {sorted(options)}")
    return picked_option(record, options) == answer


def _open_hit(record: Record) -> bool:
    predicted = normalize_open_answer(extract_answer(str(record["prediction"])))
    return predicted == normalize_open_answer(str(record["answer"]))


@dataclasses.dataclass(frozen=True)
class MCQSpec:
    """One multiple-choice benchmark: its table group; whether it holds open questions (RealWorldQA); the fields
    its accuracy is broken down by; ``mean_over``, a field whose values' accuracies ``accuracy`` averages instead of
    pooling (CV-Bench-2D's ``source``); ``prompt_field``, a row field holding the whole prompt (CV-Bench's
    ``prompt``) in place of ``ImageMCQDataset.build_prompt``; ``split``, the value of the file's ``split`` column
    whose rows are the benchmark (VisOnlyQA's file holds two); and its judge's prompt."""

    group: str
    open_questions: bool = False
    breakdown: tuple[str, ...] = ("category",)
    mean_over: str = ""
    prompt_field: str = ""
    split: str = ""
    judge_prompt: Callable[[str, Mapping[str, str], str], str] = judge_prompts.mcq

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

    def layouts(self) -> dict[str, FileLayout]:
        """The TSV's fields every row needs (the prompt's, the scorer's, the image); the options are the letter
        columns. VisOnlyQA keeps its split's rows."""
        fields = ("question", "answer", "image", *filter(None, (self.prompt_field, self.mean_over)))
        keep = (lambda record: record.get("split") == self.split) if self.split else None
        return {".tsv": FileLayout(required=fields, keep=keep)}


def score_records(records: Sequence[Record], spec: MCQSpec) -> dict[str, float]:
    """``{"accuracy", "count", "accuracy/<value>"...}`` in percent for ``records`` under ``spec``.

    Raises ValueError on an empty list (an accuracy of nothing is no score) or on a record that cannot be scored.
    """
    hits = [spec.hit(record, position) for position, record in enumerate(records)]
    groups = [[str(record[field]) for field in spec.breakdown if not blank(record.get(field))] for record in records]
    scores = accuracy_breakdown(hits, groups)
    if spec.mean_over:
        by_value: dict[str, list[bool]] = {}
        for position, (record, hit) in enumerate(zip(records, hits, strict=True)):
            if blank(record.get(spec.mean_over)):
                raise ValueError(f"record {position}: field {spec.mean_over!r} is missing or empty")
            by_value.setdefault(str(record[spec.mean_over]), []).append(hit)
        scores["accuracy"] = 100.0 * sum(sum(group) / len(group) for group in by_value.values()) / len(by_value)
    return scores


MCQ_BENCHMARKS = {
    "a_okvqa": MCQSpec(group="perception"),
    "realworldqa": MCQSpec(group="perception", open_questions=True),
    "mmstar": MCQSpec(group="perception"),
    "blink": MCQSpec(group="extended", judge_prompt=judge_prompts.blink),
    "visonlyqa_synthetic": MCQSpec(group="extended", split="Eval_Synthetic"),
    "visonlyqa_real": MCQSpec(group="extended", split="Eval_Real"),
    "cv_bench_2d": MCQSpec(group="extended", breakdown=("source", "task"), mean_over="source", prompt_field="prompt"),
    "vstarbench": MCQSpec(group="extended"),
}


def load_tsv(path: epath.Path, *, name: str) -> list[dict[str, Any]]:
    """The rows of benchmark ``name``'s VLMEvalKit TSV (`load_records`)."""
    return load_records(path, name, MCQ_BENCHMARKS[name].layouts())


def question(record: Record, where: RowLocation, *, spec: MCQSpec) -> Question:
    """``"<image>" + ImageMCQDataset.build_prompt``'s text, or the row's own prompt (see the module docstring)."""
    text = prompt_text(record, spec.prompt_field, where) if spec.prompt_field else mcq_prompt(record, where)
    return image_question(record, where, text)


for _name, _spec in MCQ_BENCHMARKS.items():
    register(
        Benchmark(
            name=_name,
            score=functools.partial(score_records, spec=_spec),
            load=functools.partial(load_tsv, name=_name),
            question=functools.partial(question, spec=_spec),
            group=_spec.group,
            judge=choice_judge(record_options, _spec.judge_prompt),
        )
    )
