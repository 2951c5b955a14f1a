"""What the yes/no benchmarks (POPE, HallusionBench: VLMEvalKit's ``ImageYORNDataset``) share: the answer, the
prediction and VLMEvalKit's judge for the responses its rule cannot read.

VLMEvalKit (``vlmeval/dataset/image_yorn.py`` ``evaluate``) reads each response with ``YOrN_Extraction``
(`extraction.extract_yes_no`) and asks its judge (``YOrN_auxeval``, prompt `judge_prompts.yes_no`) about the ones
that gives "Unknown"; the judge's reply is read by ``YOrN_Extraction`` again. Here the judge is asked only about
responses without ``\\boxed{}`` (a boxed answer is the model's answer, read by rule).
"""

from __future__ import annotations

from staged_vlm_jax.eval.benchmarks import JudgeTask, Record, judge_prompts, judged
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, extract_yes_no, has_box

_ANSWERS = {"yes": "Yes", "no": "No"}
# The judge's "neither" (YOrN_match_prompt's third choice): an answer, the record is wrong.
UNKNOWN = "Unknown"


def yes_no_answer(record: Record, position: int, benchmark: str) -> str:
    """The record's answer as "Yes" / "No" (any case in the file); anything else is a data error."""
    answer = str(record["answer"]).strip().lower()
    if answer not in _ANSWERS:
        raise ValueError(f"record {position}: {benchmark} answer {record['answer']!r} is neither yes nor no")
    return _ANSWERS[answer]


def predicted_yes_no(record: Record) -> str | None:
    """The record's response read as "Yes" / "No": by rule, else by the judge's reply; None if neither reads it."""
    rule = extract_yes_no(str(record["prediction"]))
    if rule is not None:
        return rule
    verdict = judged(record)
    return verdict if verdict in _ANSWERS.values() else None


def _judge_reply(reply: str, record: Record) -> str | None:
    """``YOrN_Extraction`` of the judge's reply; its explicit "Unknown" is an answer, anything else unusable."""
    verdict = extract_yes_no(reply)
    if verdict is None and UNKNOWN.lower() in reply.lower().split():
        return UNKNOWN
    return verdict


def _wanted(record: Record, position: int) -> bool:
    prediction = str(record["prediction"])
    return not has_box(prediction) and extract_yes_no(prediction) is None


YES_NO_JUDGE = JudgeTask(
    wanted=_wanted,
    messages=lambda record: judge_prompts.user(
        judge_prompts.yes_no(str(record["question"]), extract_answer(str(record["prediction"])))
    ),
    parse=_judge_reply,
)
