"""Curricula: the order rows are drawn in within a stage, and the config helpers that lay out a run's stages.

Two levels, both data (DESIGN Principle 1):

* Row orders (`ORDERS`, chosen by a stage's ``order``): ``shuffle`` (a seeded shuffle, redrawn each epoch) and
  ``difficulty`` (easiest first: pass_rate descending, ties in a seeded random order — the paper's
  difficulty-sorted ablation). Either can drop rows the model already solves (``drop_solved``: pass_rate == 1).
* Stage layouts (`staged`, `merged`): functions of a config's stage table that return the schedule and stages a
  run executes. ``staged(stages, ("perception", "text_reasoning", "visual_reasoning"))`` runs them in that order
  (any order or subset: 3→2→1, 1→3, 2→3); ``merged(stages, names)`` replaces them by one stage over the union of
  their data, every source repeated its stage's epoch count and all of it shuffled together, with the same total
  number of optimizer steps (each stage's steps are a sum over its sources, so the sums agree by construction).
  Difficulty and capability × difficulty are the same layouts with ``order="difficulty"`` per stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grain
import ml_collections
import numpy as np

from staged_vlm_jax.data.schema import DataError, Example


class _Indexed:
    """Random access to ``rows`` through an index list (a Grain source: ``len`` and ``[i]``; picklable)."""

    def __init__(self, rows: grain.MapDataset, indices: np.ndarray) -> None:
        self.rows, self.indices = rows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Example:
        return self.rows[int(self.indices[index])]


def _pass_rates(rows: grain.MapDataset) -> np.ndarray:
    """Every row's pass_rate; a row without one is an error naming it (sorting needs all of them)."""
    rates = []
    for index in range(len(rows)):
        example: Example = rows[index]
        if example.pass_rate is None:
            where = example.location if example.location is not None else f"example {example.id!r}"
            raise DataError(
                where,
                "pass_rate",
                "is missing; order='difficulty' and drop_solved sort by it",
                reason="missing_pass_rate",
            )
        rates.append(example.pass_rate)
    return np.asarray(rates, np.float64)


def _unsolved(rows: grain.MapDataset, drop_solved: bool) -> grain.MapDataset:
    if not drop_solved:
        return rows
    return grain.MapDataset.source(_Indexed(rows, np.flatnonzero(_pass_rates(rows) < 1.0)))


def shuffled(rows: grain.MapDataset, seed: int, drop_solved: bool) -> grain.MapDataset:
    """A seeded shuffle; followed by ``repeat`` it is redrawn every epoch (Grain reseeds per epoch)."""
    return _unsolved(rows, drop_solved).shuffle(seed)


def by_difficulty(rows: grain.MapDataset, seed: int, drop_solved: bool) -> grain.MapDataset:
    """Easiest first: pass_rate descending, ties broken by a seeded random key (the same order every epoch)."""
    rows = _unsolved(rows, drop_solved)
    rates = _pass_rates(rows)
    ties = np.random.default_rng(seed).random(len(rates))
    return grain.MapDataset.source(_Indexed(rows, np.lexsort((ties, -rates))))


ORDERS: dict[str, Callable[[grain.MapDataset, int, bool], grain.MapDataset]] = {
    "shuffle": shuffled,
    "difficulty": by_difficulty,
}


def staged(stages: ml_collections.ConfigDict, schedule: Sequence[str]) -> tuple[str, ...]:
    """The schedule running ``stages`` in the given order; names are checked against the stage table."""
    unknown = [name for name in schedule if name not in stages]
    if unknown:
        raise KeyError(f"schedule names unknown stages {unknown}; the stages are {sorted(stages)}")
    return tuple(schedule)


def merged(stages: ml_collections.ConfigDict, names: Sequence[str], **overrides) -> ml_collections.ConfigDict:
    """One stage over the union of ``names``' data, as the paper's merged baseline.

    Each source keeps its repeat count times its stage's epochs (so the merged stage sees every row as often as
    the staged run does), the rows are shuffled together, and the stage runs one epoch of that union — the same
    number of optimizer steps as the staged stages together. The first stage's other settings (batch size,
    overrides) are kept; ``overrides`` replace any of them (the paper freezes the vision tower when merged).
    """
    staged(stages, names)
    first = stages[names[0]]
    data: dict[str, int] = {}
    for name in names:
        stage = stages[name]
        if stage.batch_size != first.batch_size:
            raise ValueError(
                f"stages.{name}.batch_size {stage.batch_size} != stages.{names[0]}.batch_size {first.batch_size}: "
                "a merged stage needs one batch size to keep the step count"
            )
        if stage.get("steps"):
            raise ValueError(f"stages.{name}.steps is set; merged() matches steps through epochs, not fixed steps")
        for source, repeat in stage.data.items():
            data[source] = data.get(source, 0) + repeat * stage.epochs
    result = ml_collections.ConfigDict(first.to_dict())
    result.data = data
    result.epochs = 1
    result.order = "shuffle"
    result.update(overrides)
    return result
