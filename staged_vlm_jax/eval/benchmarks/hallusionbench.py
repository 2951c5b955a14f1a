"""HallusionBench (``hallusionbench``): yes/no questions on figures and their edited versions, scored as VLMEvalKit's
``Hallusion_rating`` does (``vlmeval/dataset/utils/yorn.py``).

A record is right iff its response, read as `yorn.predicted_yes_no` reads it (VLMEvalKit's ``YOrN_Extraction``, then
the optional judge for unreadable responses without ``\\boxed{}``), equals its ``answer``. VLMEvalKit reads each
question's set, figure and question ids from its ``index``, split on "_": fields 4, 5 and 6 (``index.split('_')[3:6]``),
and groups by ``l2-category`` (the subcategory: chart, map, table, ...) with them:

* ``aAcc``: accuracy over all questions;
* ``fAcc`` (figure accuracy): the share of figures (l2-category, set id, figure id) whose questions are all right;
* ``qAcc`` (question accuracy): the share of questions (l2-category, set id, question id), each asked about the
  original and the edited figures, answered right about every figure.

The official script (tianyi-lab/HallusionBench ``utils.py`` ``get_eval_fig``, ``get_eval_pair_all``) also groups by
category (VD/VS) and leaves VS questions without a figure out of fAcc; VLMEvalKit's keys do neither, and are followed.
The same three are reported per ``category`` (VD: visual dependent, VS: visual supplement) and per ``l2-category`` as
``aAcc/<value>`` etc. The headline ``overall`` is their mean, (aAcc + fAcc + qAcc) / 3, the single HallusionBench
number of the OpenVLM leaderboard (VLMEvalKit's own output is the three accuracies); ``count`` is the records.

Files (:func:`load`): ``HallusionBench.tsv`` (VLMEvalKit; columns ``index``, ``image``, ``question``, ``answer`` =
"Yes"/"No", ``category``, ``l2-category``; every row has an image). The prompt (:func:`question`) is
``ImageYORNDataset.build_prompt``: the image, then ``question`` verbatim.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import DataError, RowLocation
from staged_vlm_jax.eval.benchmarks import (
    Benchmark,
    FileLayout,
    Question,
    Record,
    blank,
    image_question,
    load_records,
    prompt_text,
    register,
    required_text,
)
from staged_vlm_jax.eval.benchmarks.yorn import YES_NO_JUDGE, predicted_yes_no, yes_no_answer

NAME = "hallusionbench"
SUBCATEGORY = "l2-category"
# index.split("_") positions of the set, figure and question ids (Hallusion_rating).
_SET, _FIGURE, _QUESTION = 3, 4, 5


def _ids(record: Record, position: int) -> list[str]:
    parts = required_text(record, position, "index", NAME).split("_")
    if len(parts) <= _QUESTION:
        raise ValueError(f"{NAME} record {position}: index {record['index']!r} has no set/figure/question ids")
    return parts


def _all_right(keys: Sequence[tuple[str, ...]], hits: Sequence[bool]) -> float:
    groups: dict[tuple[str, ...], bool] = defaultdict(lambda: True)
    for key, hit in zip(keys, hits, strict=True):
        groups[key] &= hit
    return 100.0 * sum(groups.values()) / len(groups)


def _accuracies(rows: Sequence[tuple[list[str], str, bool]]) -> dict[str, float]:
    """aAcc, fAcc, qAcc of (index fields, l2-category, right) rows."""
    hits = [hit for _, _, hit in rows]
    return {
        "aAcc": 100.0 * sum(hits) / len(hits),
        "fAcc": _all_right([(sub, ids[_SET], ids[_FIGURE]) for ids, sub, _ in rows], hits),
        "qAcc": _all_right([(sub, ids[_SET], ids[_QUESTION]) for ids, sub, _ in rows], hits),
    }


def score(records: Sequence[Record]) -> dict[str, float]:
    """``overall``, ``aAcc``, ``fAcc``, ``qAcc`` (percent), each per category and l2-category, and ``count``."""
    if not records:
        raise ValueError("no records to score")
    rows, groups = [], defaultdict(list)
    for position, record in enumerate(records):
        row = (_ids(record, position), required_text(record, position, SUBCATEGORY, NAME),
               predicted_yes_no(record) == yes_no_answer(record, position, NAME))  # fmt: skip
        rows.append(row)
        for field in ("category", SUBCATEGORY):
            if not blank(record.get(field)):
                groups[str(record[field])].append(row)
    overall = _accuracies(rows)
    scores = {"overall": sum(overall.values()) / len(overall), **overall, "count": float(len(records))}
    for value, members in sorted(groups.items()):
        scores.update({f"{key}/{value}": accuracy for key, accuracy in _accuracies(members).items()})
    return scores


def _check_index(record: Record, where: RowLocation) -> None:
    if len(str(record["index"]).split("_")) <= _QUESTION:
        message = f"{record['index']!r} has no set/figure/question ids (VLMEvalKit reads them as its '_' fields 4-6)"
        raise DataError(where, "index", message, reason="malformed_index")


LAYOUTS = {".tsv": FileLayout(required=("index", "question", "answer", SUBCATEGORY, "image"), check=_check_index)}


def load(path: epath.Path) -> list[dict[str, Any]]:
    """The rows of ``HallusionBench.tsv`` (`load_records`)."""
    return load_records(path, NAME, LAYOUTS)


def question(record: Record, where: RowLocation) -> Question:
    """``"<image>" + question``."""
    return image_question(record, where, prompt_text(record, "question", where))


register(
    Benchmark(
        name=NAME, score=score, load=load, question=question, group="extended", headline="overall", judge=YES_NO_JUDGE
    )
)
