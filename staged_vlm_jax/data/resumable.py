"""Resumable work: answers to numbered items, appended per batch to a jsonl file that a rerun reads back.

`staged-vlm eval` and the data builders run for hours on models that take minutes to load, so no step may lose or
redo finished work: each writes one line per item (with its ``index``) as soon as its batch is answered, and a rerun
answers only the indices the file lacks; a last line cut short by a kill is dropped and its item answered again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import tqdm
from etils import epath

from staged_vlm_jax.data.schema import DataError, RowLocation
from staged_vlm_jax.paths import write_atomic


def read_answers(path: epath.Path) -> dict[int, dict[str, Any]]:
    """The answers already in a predictions file, by record index. A last line cut short by a kill is removed from
    the file (so that appending starts on a fresh line) and its record answered again; any other line that is not
    an answer is a `DataError` naming ``file:line``."""
    if not path.exists():
        return {}
    text = path.read_text()
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        lines.pop()
        write_atomic(path, "".join(line + "\n" for line in lines))
    answers = {}
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            answers[row["index"]] = row
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(RowLocation(path, number), "line", f"not an answer ({error}); delete the line to answer "
                            "its record again", reason="corrupt_answer") from error  # fmt: skip
    return answers


def resume(
    out: epath.Path,
    indices: Sequence[int],
    batch_size: int,
    answer: Callable[[list[int]], list[dict[str, Any]]],
    desc: str,
) -> dict[int, dict[str, Any]]:
    """The rows of ``out`` for ``indices``: those already there, and ``answer(batch)`` of the missing ones, batch by
    batch (``batch_size`` indices in order), each batch's rows (one per index, with its ``"index"``) appended and
    flushed before the next is asked for, under a progress bar. ``answer`` is not called when nothing is missing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_answers(out)
    todo = [index for index in indices if index not in done]
    with tqdm.tqdm(total=len(indices), initial=len(indices) - len(todo), desc=desc, unit="item",
                   dynamic_ncols=True) as progress, out.open("a") as file:  # fmt: skip
        for start in range(0, len(todo), batch_size):
            rows = answer(todo[start : start + batch_size])
            file.write("".join(json.dumps(row) + "\n" for row in rows))
            file.flush()
            done.update((row["index"], row) for row in rows)
            progress.update(len(rows))
    return {index: done[index] for index in indices}
