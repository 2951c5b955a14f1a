r"""Pass rates: k sampled answers per training row, graded, as the columns the paper's released sets carry.

The paper measures each row's difficulty as the share of k = 16 samples (temperature 0.7) a base model answers
correctly (UCSC-VLAA/VLM-CapCurriculum ``data_pipeline/passK/``, commit d58a584: ``run_inference.py``,
``judges/mathruler_judge.py``) and ships it as three columns: ``predictions`` (the k extracted answers),
``correctness`` (k booleans) and ``pass_rate`` (their mean), which `Example.pass_rate` reads and the difficulty
curricula (`curriculum.ORDERS`) sort by. `pass_rate` writes the same columns onto every row of a data file.

What is reproduced and what is chosen:

* Sampling: the official settings, temperature 0.7 and top-p 0.9 (``run_inference.py``), top-k 20 (the default of
  ``models/base_model.py``'s ``GenerationConfig``, which ``get_model`` leaves), at most 1024 new tokens
  (``run_stage*.sh``).
* Prompt: by default the training prompt of the row (``prompt="training"``: the think/boxed instruction appended to
  the user turn unless the row opts out, images at their ``<image>`` placeholders), so a pass rate measures what
  the policy will be asked. ``prompt="passk"`` is the official one instead: its ``DEFAULT_SYSTEM_PROMPT`` (the same
  instruction, but with ``<thinking>`` tags) as the system turn, the row's images first in the user turn (numbered
  ``<image_i>: `` when several) and then its problem text verbatim, ``<image>`` placeholders included
  (``datasets/base_dataset.py``, ``models/qwen_vl_model.py``).
* Grading: the run's reward (``score``, e.g. a `RewardPool` of ``"math"``), a sample correct iff its ``accuracy`` is
  1, so a pass rate counts what training rewards. The official judge grades the last ``\boxed{}`` with mathruler
  too, after turning an answer such as ``B: red`` into ``B``; ``predictions`` holds the last ``\boxed{}``'s content
  as the reward reads it (``""`` without one). An answer the reward fails to grade (a timeout, an error such as
  ``mcq``'s on a ground truth that is no letter) is wrong, and counted in the summary line.

Resumable and sharded: process ``shard`` of ``num_shards`` samples rows ``shard::num_shards`` and appends each
batch's results to its part file ``<out stem>.part-<shard>-of-<num_shards>.jsonl`` beside ``out`` (`steps.resume`);
a process that finds every part complete merges them, in input order, into ``out`` — so the last one to finish
does, and rerunning any shard after that merges again. Part files are kept: they are what a rerun resumes from.
Samples are drawn from a key per batch (its first row's index), so a resumed run draws other samples than an
uninterrupted one would have; each is an equally valid estimate.
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.builders.generators import Chat, Generator
from staged_vlm_jax.data.prompts import build_messages
from staged_vlm_jax.data.resumable import resume
from staged_vlm_jax.data.schema import DataError, Example
from staged_vlm_jax.data.sources import ROW_FORMATS, JsonLine, read_rows
from staged_vlm_jax.paths import PathLike, as_path, write_atomic
from staged_vlm_jax.rl.grpo import ScoreFn
from staged_vlm_jax.rl.rewards.scores import last_boxed_content, normalize_tag_spacing

# `RewardPool.score`'s counts of answers it scored 0 without grading them.
_REWARD_FAILURES = ("reward/timeouts", "reward/errors", "reward/crashes")

# passK/datasets/base_dataset.py: DEFAULT_SYSTEM_PROMPT.format(content="").strip(), the official pass-rate system turn.
PASSK_SYSTEM_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <thinking> </thinking> tags. The final answer MUST BE put in "
    "\\boxed{}. i.e. <thinking> reasoning here </thinking> \\boxed{final answer here}"
)


def training_chat(example: Example) -> Chat:
    """The row's prompt as training builds it (`prompts.build_messages`, as `PromptBuilder.prompt`)."""
    messages = build_messages(example.problem, len(example.images), append_format=example.append_format,
                              problem_id=example.id)  # fmt: skip
    return Chat(tuple(messages), example.images)


def passk_chat(example: Example) -> Chat:
    """The official pass-rate prompt (``QwenVLModel._build_messages``): system turn, images first, text verbatim."""
    content: list[dict[str, str]] = []
    for index in range(len(example.images)):
        if len(example.images) > 1:
            content.append({"type": "text", "text": f"<image_{index + 1}>: "})
        content.append({"type": "image"})
    content.append({"type": "text", "text": example.problem})
    return Chat(({"role": "system", "content": PASSK_SYSTEM_PROMPT}, {"role": "user", "content": content}),
                example.images)  # fmt: skip


PROMPTS: dict[str, Callable[[Example], Chat]] = {"training": training_chat, "passk": passk_chat}


def graded_rows(examples: Sequence[Example], indices: Sequence[int], generator: Callable[[], Generator],
                score: ScoreFn, part: epath.Path, *, k: int, temperature: float, top_p: float, top_k: int,
                max_new_tokens: int, batch_size: int, prompt: str) -> dict[int, dict[str, Any]]:  # fmt: skip
    """``{"index", "predictions", "correctness", "pass_rate"}`` of ``examples[i]`` for each i of ``indices``: those
    in ``part`` already, the others sampled ``k`` times per row from ``generator()`` and graded by ``score``, the
    results appended to ``part`` batch by batch; ``generator()`` is called once, when a row is first missing."""
    build, generator = PROMPTS[prompt], functools.cache(generator)

    def answer(batch: list[int]) -> list[dict[str, Any]]:
        responses = generator().complete([build(examples[index]) for index in batch], max_new_tokens, n=k,
                                         temperature=temperature, top_p=top_p, top_k=top_k, seed=batch[0])  # fmt: skip
        truths = [examples[index].answer for index in batch for _ in range(k)]
        scores, _ = score(responses, truths)
        rows = []
        for position, index in enumerate(batch):
            group = slice(position * k, (position + 1) * k)
            correctness = [item["accuracy"] == 1.0 for item in scores[group]]
            predictions = [last_boxed_content(normalize_tag_spacing(response)) or "" for response in responses[group]]
            rows.append({"index": index, "predictions": predictions, "correctness": correctness,
                         "pass_rate": sum(correctness) / k})  # fmt: skip
        return rows

    return resume(part, indices, batch_size, answer, f"pass rate ({part.name})")


def part_path(out: epath.Path, shard: int, num_shards: int) -> epath.Path:
    """Where shard ``shard`` of ``num_shards`` keeps its results, beside ``out``."""
    return out.with_name(f"{out.stem}.part-{shard}-of-{num_shards}.jsonl")


def pass_rate(data: PathLike, out: PathLike, generator: Callable[[], Generator], score: ScoreFn, *,
              capability: str, image_root: PathLike | None = None, k: int = 16, temperature: float = 0.7,
              top_p: float = 0.9, top_k: int = 20, max_new_tokens: int = 1024, batch_size: int = 8,
              prompt: str = "training", shard: int = 0, num_shards: int = 1) -> str:  # fmt: skip
    """Samples and grades this shard's rows of ``data`` (EasyR1 ``.jsonl`` / ``.json`` rows of ``capability``, see
    the module docstring), ``generator()`` called only when a row is missing, and merges every shard's results into
    ``out`` (JSON lines: each input row with its ``predictions``, ``correctness`` and ``pass_rate``) once all parts
    are complete. Returns a one-line summary. Raises `DataError` naming ``file:row`` for a bad row."""
    data, out = as_path(data), as_path(out)
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards={num_shards}), got {shard}")
    records = _records(data)
    examples = list(read_rows(data, capability=capability, image_root=image_root, verify_images=False))
    failures: collections.Counter[str] = collections.Counter()

    def counted(responses: Sequence[str], truths: Sequence[str]) -> tuple[list[dict[str, float]], dict[str, float]]:
        scores, stats = score(responses, truths)
        failures.update({key: int(stats[key]) for key in _REWARD_FAILURES if stats.get(key)})
        return scores, stats

    rows = graded_rows(examples, range(shard, len(examples), num_shards), generator, counted,
                       part_path(out, shard, num_shards), k=k, temperature=temperature, top_p=top_p, top_k=top_k,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, prompt=prompt)  # fmt: skip
    mean = sum(row["pass_rate"] for row in rows.values()) / max(len(rows), 1)
    line = f"pass-rate: shard {shard} of {num_shards}: {len(rows)} rows, mean pass rate {mean:.3f}"
    if failures:  # answers the reward could not grade score 0: a pass rate biased low, or the wrong reward
        line += f" ({sum(failures.values())} answers not graded, scored wrong: {dict(failures)})"
    results: dict[int, dict[str, Any]] = {}
    for other in range(num_shards):
        results.update(_finished(part_path(out, other, num_shards)))
    missing = len(examples) - sum(index in results for index in range(len(examples)))
    if missing:
        return f"{line}; {missing} rows of other shards to go (the last shard to finish writes {out})"
    merged = [{**record, **{key: value for key, value in results[index].items() if key != "index"}}
              for index, record in enumerate(records)]  # fmt: skip
    mine = out.with_name(f"{out.name}.shard-{shard}")  # shards finishing together each write their own, then rename
    write_atomic(mine, "".join(json.dumps(row) + "\n" for row in merged))
    mine.replace(out)
    return f"{line}; wrote {len(merged)} rows to {out}"


def _records(path: epath.Path) -> list[dict[str, Any]]:
    """The raw rows of an EasyR1 ``.jsonl`` / ``.json`` file, in the order `read_rows` yields them (its readers)."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise DataError(path, "extension", f"pass-rate reads and writes EasyR1 .jsonl / .json rows, not {suffix!r}; "
                        "convert the file first", reason="unknown_format")  # fmt: skip
    return [json.loads(record.data) if isinstance(record, JsonLine) else record
            for _, record in ROW_FORMATS[suffix].records(path)]  # fmt: skip


def _finished(part: epath.Path) -> dict[int, dict[str, Any]]:
    """A part file's complete lines, read only (another process may be appending to it: a last line without its
    newline is still being written, and is not repaired here as `steps.resume` repairs its own file)."""
    if not part.exists():
        return {}
    lines = part.read_text().split("\n")[:-1]
    return {row["index"]: row for row in map(json.loads, lines)}
