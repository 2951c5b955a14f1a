"""POPE (object-hallucination yes/no questions), scored as VLMEvalKit's ``POPE_rating`` does.

Records: ``question``, ``answer`` ("yes"/"no", any case), ``category`` (the POPE split: adversarial, popular,
random; VLMEvalKit's TSV stores a question shared by several splits once, as "adversarial,popular"), and the raw
response under ``"prediction"``. Each response is read by `extraction.extract_yes_no` (VLMEvalKit's
``YOrN_Extraction``), and one it cannot read, without ``\\boxed{}``, by the LLM judge if one is configured
(`yorn.YES_NO_JUDGE`; without it unreadable, as under VLMEvalKit's ``exact_matching``).

As in VLMEvalKit (``vlmeval/dataset/utils/yorn.py`` ``POPE_rating``):

- a record counts once per split in its ``category`` (the cell is split on commas), in the overall scores too, so
  the overall pools the three splits' questions; a record without a category counts once, in the overall only;
- ``accuracy`` = % of predictions equal to the answer: an unreadable response is wrong either way;
- ``precision``, ``recall``, ``f1`` take "yes" as the positive class and any prediction that is not "Yes" as a
  "no": an unreadable response to a "yes" question is a false negative, to a "no" question a true negative (it lowers
  accuracy but not precision). lmms-eval's ``pope`` task differs here: it leaves such responses out of recall;
- a ratio with a zero denominator is 0.

Keys: ``accuracy``, ``precision``, ``recall``, ``f1``, ``count`` (records), and each again as ``<key>/<split>``.
The headline is ``f1``: VLMEvalKit's ``ImageYORNDataset.report_primary_metric`` reports POPE as "Overall F1", the
pooled F1 above (``split=Overall``, column ``Overall``), not the mean of the three splits' F1.

Files (:func:`load`): ``POPE.tsv``, or HF ``lmms-lab/POPE``'s parquet (one row per split, so a question of two
splits is two rows; each counts once per split, as the TSV's one row with category ``"adversarial,popular"``
does). The prompt (:func:`question`) is ``ImageYORNDataset.build_prompt`` (``vlmeval/dataset/image_yorn.py``),
which for POPE is ``ImageBaseDataset.build_prompt``: the image, then the row's ``question`` verbatim (its
"Please answer yes or no." is appended for AMBER only). Qwen2-VL's model-side custom prompt would append
" Please answer yes or no." to POPE, but VLMEvalKit's Qwen2.5-VL entries set ``use_custom_prompt=False`` and the
paper's served models (``LMDeployAPI``) get no prompt adapter for Qwen2.5-VL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    Question,
    Record,
    image_question,
    load_records,
    prompt_text,
    register,
)
from staged_vlm_jax.eval.benchmarks.yorn import YES_NO_JUDGE, predicted_yes_no, yes_no_answer

_SPLIT_SEPARATOR = ","


def _splits(record: Record) -> list[str]:
    """The POPE splits a record belongs to: its ``category`` split on commas; none if missing, None or NaN."""
    category = record.get("category")
    if category is None or (isinstance(category, float) and math.isnan(category)):
        return []
    return [split.strip() for split in str(category).split(_SPLIT_SEPARATOR) if split.strip()]


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def binary_scores(pairs: Sequence[tuple[str, str | None]]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 in percent of (answer, prediction) pairs, "Yes" the positive class;
    a None prediction is wrong, and a negative (see the module docstring)."""
    true_positives = sum(answer == "Yes" and predicted == "Yes" for answer, predicted in pairs)
    predicted_yes = sum(predicted == "Yes" for _, predicted in pairs)
    actual_yes = sum(answer == "Yes" for answer, _ in pairs)
    precision = _ratio(true_positives, predicted_yes)
    recall = _ratio(true_positives, actual_yes)
    return {
        "accuracy": 100.0 * sum(answer == predicted for answer, predicted in pairs) / len(pairs),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * _ratio(2 * precision * recall, precision + recall),
    }


def score_pope(records: Sequence[Record]) -> dict[str, float]:
    """POPE's scores in percent, overall and per split (keys in the module docstring); ValueError if empty."""
    if not records:
        raise ValueError("no records to score")
    overall: list[tuple[str, str | None]] = []
    by_split: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for position, record in enumerate(records):
        pair = (yes_no_answer(record, position, "POPE"), predicted_yes_no(record))
        splits = _splits(record)
        overall.extend([pair] * max(len(splits), 1))
        for split in splits:
            by_split[split].append(pair)
    scores = {**binary_scores(overall), "count": len(records)}
    for split, pairs in sorted(by_split.items()):
        scores.update({f"{key}/{split}": value for key, value in binary_scores(pairs).items()})
        scores[f"count/{split}"] = len(pairs)
    return scores


NAME = "pope"
# By extension: the fields every row needs (the prompt's, the scorer's, the image); ``category`` is optional.
LAYOUTS = {
    ".tsv": FileLayout(required=("question", "answer", "image")),
    ".parquet": FileLayout(required=("question", "answer", "image")),
}


def load(path: epath.Path) -> list[dict[str, Any]]:
    """The rows of ``POPE.tsv`` or HF ``lmms-lab/POPE`` parquet (`load_records`)."""
    return load_records(path, NAME, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + question`` (see the module docstring)."""
    return image_question(record, where, prompt_text(record, "question", where))


register(
    Benchmark(
        name=NAME, score=score_pope, load=load, question=question, group="perception", headline="f1", judge=YES_NO_JUDGE
    )
)
