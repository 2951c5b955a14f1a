"""The open-answer VQA benchmarks of the extended suite, scored by rule as VLMEvalKit's ``ImageVQADataset`` does
(``vlmeval/dataset/image_vqa.py`` ``evaluate_heuristic``, ``vlmeval/dataset/utils/vqa_eval.py``; no judge there):

* ``textvqa_val`` (TextVQA_VAL): the VQA accuracy of the official VQA evaluation (GT-Vision-Lab/VQA
  ``vqaEval.py``): the prediction and the ten human answers are normalised (:func:`normalize_vqa_answer`), and for
  each human answer in turn the prediction scores min(#matches among the other nine / 3, 1); the record's score is
  the mean of these ten ("10 choose 9" averaging): a prediction that k of the ten humans gave scores 0.3 (k = 1),
  0.6 (2), 0.9 (3) or 1 (4 or more). VLMEvalKit normalises the human answers in full; the official script only
  strips their punctuation, and only where they differ (its answer files are normalised already).
* ``chartqa_test`` (ChartQA_TEST): relaxed accuracy (pix2struct ``relaxed_correctness``, ChartQA paper §5.1): a
  prediction is right if it is within 5 % of a numeric answer (``|p - t| / |t| <= 0.05``; "12%" reads as 0.12), and
  otherwise iff it equals the answer ignoring case; the record is right if it matches any of its answers.

The prediction is `extraction.extract_answer` of the response: the last ``\\boxed{}``, else what follows
``</think>`` (VLMEvalKit's ``SPLIT_THINK``), else the whole response. Scores (percent): ``accuracy`` (the mean
record score), ``accuracy/<value>`` per ``split`` value, or where records have no ``split`` per ``category`` value
(VLMEvalKit's breakdown), and ``count``.

Files (:func:`load`): VLMEvalKit's ``TextVQA_VAL.tsv`` (``answer``: the ``repr`` of the list of ten human answers) and
``ChartQA_TEST.tsv`` (``answer``: one answer), columns ``index``, ``image``, ``question``, ``answer``. The prompt
(:func:`question`) is ``ImageVQADataset.build_prompt``: the image, then ``question`` and "\\nAnswer the question using
a single word or phrase."
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import DataError, RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    Question,
    Record,
    accuracy_breakdown,
    blank,
    image_question,
    load_records,
    prompt_text,
    register,
    required,
    required_text,
)
from staged_vlm_jax.eval.benchmarks.extraction import extract_answer, process_punctuation

# ImageVQADataset.build_prompt's instruction after the question.
VQA_INSTRUCTION = "\nAnswer the question using a single word or phrase."
# relaxed_correctness: the largest relative change of a numeric answer that still counts.
MAX_RELATIVE_CHANGE = 0.05
# VQA accuracy: an answer given by this many other humans scores 1.
_HUMANS_FOR_FULL_SCORE = 3

# --- VQA answer normalisation (vqa_eval.py _process_digit_article, from the official vqaEval.py) -----------------

_ARTICLES = ("a", "an", "the")
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
# The official contraction table (apostrophes restored); keys are lower case except a few ("Im", "Ive") that, as in
# the official code, never match the lower-cased words.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip


def normalize_vqa_answer(answer: str) -> str:
    """VLMEvalKit ``process_answer``, the official VQA normalisation: newlines and tabs as spaces, stripped,
    `extraction.process_punctuation` (marks touching a space deleted, others spaced; periods outside numbers
    dropped), lower case, number words as digits ("two" -> "2", "none" -> "0"), the articles a/an/the dropped, and
    contractions given their apostrophe ("dont" -> "don't"); words joined by single spaces."""
    answer = process_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBER_WORDS.get(word, word) for word in answer.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of ``prediction`` against the human ``answers`` (normalised alike): the mean, over each
    answer left out in turn, of min(#remaining answers equal to the prediction / 3, 1). With ten answers of which k
    equal the prediction: 0 (k = 0), 0.3, 0.6, 0.9, then 1 for k >= 4."""
    truths = [normalize_vqa_answer(answer) for answer in answers]
    predicted = normalize_vqa_answer(prediction)
    matches = sum(truth == predicted for truth in truths)
    # Leaving out an answer equal to the prediction leaves matches - 1 equal ones among the others, else matches.
    per_left_out = [min(1.0, (matches - (truth == predicted)) / _HUMANS_FOR_FULL_SCORE) for truth in truths]
    return sum(per_left_out) / len(per_left_out)


def _relaxed_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str) -> bool:
    """pix2struct's ``relaxed_correctness`` (VLMEvalKit's copy), quirks included: both sides read with Python's
    ``float`` (a trailing "%" divides by 100; "1,000" is no number, "1e3" is); if both are numbers and the target is
    not 0, right iff the relative change is at most 5 %; otherwise right iff equal ignoring case (so a target of 0
    needs the prediction to read "0" exactly)."""
    predicted, truth = _relaxed_float(prediction), _relaxed_float(target)
    if predicted is not None and truth:
        return abs(predicted - truth) / abs(truth) <= MAX_RELATIVE_CHANGE
    return prediction.lower() == target.lower()


def record_answers(answer: object) -> list[str]:
    """The answers an ``answer`` cell holds: the list it is or spells (``"['a', 'b']"``, as VLMEvalKit's
    ``istype(answer, list)`` evaluates it), else the cell as the one answer."""
    if isinstance(answer, (list, tuple)):
        return [str(item) for item in answer]
    answer = str(answer)
    if answer.startswith("["):
        try:
            parsed = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, list):
            return [str(item) for item in parsed]
    return [answer]


def _textvqa(prediction: str, answers: list[str]) -> float:
    return vqa_score(prediction, answers)


def _chartqa(prediction: str, answers: list[str]) -> float:
    # process_line(method="relaxed_accuracy") strips the prediction; hit_calculate takes the best answer.
    return float(max(relaxed_correctness(answer, prediction.strip()) for answer in answers))


# benchmark -> its record score (prediction, answers) -> [0, 1].
VQA_METRICS: dict[str, Callable[[str, list[str]], float]] = {"textvqa_val": _textvqa, "chartqa_test": _chartqa}


def _breakdown(record: Record) -> list[str]:
    for field in ("split", "category"):
        if not blank(record.get(field)):
            return [str(record[field])]
    return []


def score(records: Sequence[Record], *, name: str) -> dict[str, float]:
    """``accuracy`` (the mean record score), ``accuracy/<split or category>`` (percent) and ``count``."""
    metric = VQA_METRICS[name]
    values = [
        metric(extract_answer(required_text(record, position, "prediction", name)),
               record_answers(required(record, position, "answer", name)))
        for position, record in enumerate(records)
    ]  # fmt: skip
    # accuracy_breakdown averages booleans; the record scores here are fractions, averaged the same way.
    return accuracy_breakdown(values, [_breakdown(record) for record in records])


def _check_answers(record: Record, where: RowLocation) -> None:
    if not all(answer.strip() for answer in record_answers(record["answer"])):
        raise DataError(where, "answer", f"holds an empty answer: {record['answer']!r:.80}", reason="empty_field")


LAYOUTS = {".tsv": FileLayout(required=("question", "answer", "image"), check=_check_answers)}


def load(path: epath.Path, *, name: str) -> list[dict[str, Any]]:
    """The rows of ``TextVQA_VAL.tsv`` / ``ChartQA_TEST.tsv`` (`load_records`)."""
    return load_records(path, name, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + question + VQA_INSTRUCTION`` (see the module docstring)."""
    return image_question(record, where, prompt_text(record, "question", where) + VQA_INSTRUCTION)


for _name in VQA_METRICS:
    register(
        Benchmark(
            name=_name,
            score=functools.partial(score, name=_name),
            load=functools.partial(load, name=_name),
            question=question,
            group="extended",
        )
    )
