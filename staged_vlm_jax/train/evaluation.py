"""Held-out evaluation during a run: generation on ``config.eval.sources`` before training, after each stage and
every ``eval.every_steps`` steps, kept in eval.jsonl, results.md and (as ``val/<set>/<score>``) metrics.jsonl,
and in every checkpoint, so a resumed run reports the same history."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jax
from etils import epath
from flax import nnx

from staged_vlm_jax.eval.runner import evaluate
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train.results import write_results

EVAL_FILE = "eval.jsonl"


class HeldOutEvaluation:
    """The run's evaluations so far (``rows``: one dict per evaluation, ``{"after", "stage_index", "global_step",
    set name: scores}``) and the files that show them."""

    def __init__(self, spec: config_lib.RunSpec, workdir: epath.Path, stage_table: list[dict[str, Any]]) -> None:
        self.spec, self.workdir, self.stage_table = spec, workdir, stage_table
        self.rows: list[dict[str, Any]] = []

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Continue from the evaluations a checkpoint recorded."""
        self.rows = list(rows)
        self.write()

    def run(
        self, model: nnx.Module, after: str, stage_index: int, global_step: int, *, engine, score: Callable,
        decode: Callable, prompts: Callable[[str], Iterator], eos_token_ids, pad_token_id: int,
    ) -> dict[str, float]:  # fmt: skip
        """Scores ``model`` on every held-out set; ``prompts(set name)`` gives one pass over that set's batches.
        Returns the scores as ``val/<set>/<score>`` metrics (none without sets). Sampling draws from the run's
        seed and ``global_step``, so a resumed run evaluates exactly as the uninterrupted one."""
        spec = self.spec.eval
        if not spec.sources:
            return {}
        max_new_tokens = spec.max_new_tokens or self.spec.rollout.max_new_tokens
        rng = jax.random.fold_in(jax.random.key(self.spec.seed + 1), global_step)
        row: dict[str, Any] = {"after": after, "stage_index": stage_index, "global_step": global_step}
        for index, name in enumerate(spec.sources):
            batches = prompts(name)
            row[name] = evaluate(
                model, engine, batches, score, decode, max_new_tokens=max_new_tokens,
                eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, temperature=spec.temperature,
                top_p=spec.top_p, rng=jax.random.fold_in(rng, index),
            )  # fmt: skip
            batches.close()
        self.rows.append(row)
        self.write()
        return {f"val/{name}/{key}": value for name in spec.sources for key, value in row[name].items()
                if key != "examples"}  # fmt: skip

    def write(self) -> None:
        """eval.jsonl and results.md (the stage table, and the evaluations so far) on the first host."""
        if jax.process_index() != 0:
            return
        lines = [json.dumps(row, sort_keys=True) for row in self.rows]
        (self.workdir / EVAL_FILE).write_text("".join(line + "\n" for line in lines))
        write_results(self.workdir, self.rows, list(self.spec.eval.sources), self.stage_table)
