"""Curricula: the order rows are drawn in within a stage, and the config helpers that lay out a run's stages.

Two levels, both data (DESIGN Principle 1):

* Epochs (`EpochOrdered`) as EasyR1's dataloader makes them: every epoch is the stage's rows (its sources
  concatenated, each repeated its ``repeat`` count) in that epoch's order, cut to a whole number of batches (the
  last partial batch is dropped, ``drop_last``), the epochs back to back. A stage of E epochs over R rows at batch
  B therefore has E · ⌊R / B⌋ steps.
* Row orders (`ORDERS`, chosen by a stage's ``order``), each a pure function of (sources, seed, epoch):
  ``shuffle`` (a seeded permutation, redrawn every epoch: EasyR1's RandomSampler), ``difficulty`` (easiest first:
  pass_rate descending, ties in a seeded random order; the same pass every epoch, as the paper's pass_rate-sorted
  file with ``data.shuffle=false``), ``difficulty_per_source`` (the sources one after the other, each sorted
  easiest first: the paper's capability × difficulty file) and ``sequential`` (the sources one after the other in
  file order: the capability-only curriculum). ``drop_solved`` first drops rows with pass_rate 1.
* Stage layouts (`staged`, `merged`): functions of a config's stage table that return the schedule and stages a
  run executes. ``staged(stages, ("perception", "text_reasoning", "visual_reasoning"))`` runs them in that order
  (any order or subset: 3→2→1, 1→3, 2→3); ``merged(stages, names, epochs)`` replaces them by one stage of
  ``epochs`` epochs over the union of their data, the paper's merged baseline (15 epochs over the three sets:
  15 · ⌊(N1 + N2 + N3) / 512⌋ steps), and with ``order="difficulty"`` or ``"difficulty_per_source"`` its
  difficulty and capability × difficulty curricula, which are one continuous run in the paper.
"""

from __future__ import annotations

import copy
import functools
import sys
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


def unsolved(rows: grain.MapDataset, drop_solved: bool) -> grain.MapDataset:
    """``rows`` without those the model already solves (pass_rate 1) when ``drop_solved``."""
    if not drop_solved:
        return rows
    return grain.MapDataset.source(_Indexed(rows, np.flatnonzero(_pass_rates(rows) < 1.0)))


def shuffled(sources: Sequence[grain.MapDataset], seed: int, epoch: int) -> np.ndarray:
    """A permutation of the concatenated rows, drawn anew for every epoch from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(sum(map(len, sources)))


def by_difficulty(sources: Sequence[grain.MapDataset], seed: int, epoch: int) -> np.ndarray:
    """Easiest first over all rows: pass_rate descending, ties by a seeded random key (the same every epoch)."""
    rates = np.concatenate([_pass_rates(rows) for rows in sources])
    ties = np.random.default_rng(seed).random(len(rates))
    return np.lexsort((ties, -rates))


def by_difficulty_per_source(sources: Sequence[grain.MapDataset], seed: int, epoch: int) -> np.ndarray:
    """The sources in their order, each sorted easiest first (`by_difficulty` within each block)."""
    offsets = np.cumsum([0, *map(len, sources)])[:-1]
    return np.concatenate([offset + by_difficulty([rows], seed + index, epoch)
                           for index, (offset, rows) in enumerate(zip(offsets, sources, strict=True))])  # fmt: skip


def in_file_order(sources: Sequence[grain.MapDataset], seed: int, epoch: int) -> np.ndarray:
    """The sources one after the other, each in its file's order (EasyR1 with ``data.shuffle=false``)."""
    return np.arange(sum(map(len, sources)))


ORDERS: dict[str, Callable[[Sequence[grain.MapDataset], int, int], np.ndarray]] = {
    "shuffle": shuffled,
    "sequential": in_file_order,
    "difficulty": by_difficulty,
    "difficulty_per_source": by_difficulty_per_source,
}


class EpochOrdered:
    """A Grain source: ``epochs`` epochs (None: without end) of the concatenated ``sources``, epoch e in the order
    ``ORDERS[order](sources, seed, e)`` and cut to its first ``keep`` rows (a whole number of batches).

    Row i is a pure function of i (epoch i // keep, position i % keep), so a Grain iterator over it resumes exactly.
    The first epoch's order is computed here, so a row without a pass_rate fails at construction.
    """

    def __init__(self, sources: Sequence[grain.MapDataset], order: str, seed: int, keep: int, epochs: int | None):
        self.rows = grain.MapDataset.concatenate(list(sources)) if len(sources) > 1 else sources[0]
        self.keep, self.epochs = keep, epochs
        self._order = functools.partial(ORDERS[order], list(sources), seed)
        self._cached = (0, self._order(0))

    def __len__(self) -> int:
        return self.keep * self.epochs if self.epochs is not None else sys.maxsize

    def __getitem__(self, index: int) -> Example:
        epoch, position = divmod(index, self.keep)
        if self._cached[0] != epoch:
            self._cached = (epoch, self._order(epoch))
        return self.rows[int(self._cached[1][position])]

    def __repr__(self) -> str:
        return f"EpochOrdered({self.keep} rows per epoch, {self.epochs or 'endless'} epochs)"


def staged(stages: ml_collections.ConfigDict, schedule: Sequence[str]) -> tuple[str, ...]:
    """The schedule running ``stages`` in the given order; names are checked against the stage table."""
    unknown = [name for name in schedule if name not in stages]
    if unknown:
        raise KeyError(f"schedule names unknown stages {unknown}; the stages are {sorted(stages)}")
    return tuple(schedule)


def merged(
    stages: ml_collections.ConfigDict, names: Sequence[str], epochs: int, **overrides
) -> ml_collections.ConfigDict:
    """One stage of ``epochs`` epochs over the union of ``names``' data, as the paper's merged baseline (and, with
    an ``order`` override, its one-run difficulty curricula).

    Every source keeps its repeat count (a source in several stages adds them); ``source_order`` lists the sources
    in stage order, which ``order="difficulty_per_source"`` follows. The first stage's other settings (batch size,
    overrides) are kept; ``overrides`` replace any of them (the paper freezes the vision tower when merged). Steps:
    ``epochs`` · ⌊union rows / batch⌋, not the staged stages' sum (the paper: 930 merged against 96 + 375 + 465).
    """
    staged(stages, names)
    first = stages[names[0]]
    data: dict[str, int] = {}
    for name in names:
        stage = stages[name]
        if stage.batch_size != first.batch_size:
            raise ValueError(
                f"stages.{name}.batch_size {stage.batch_size} != stages.{names[0]}.batch_size {first.batch_size}: "
                "a merged stage draws one batch size"
            )
        if stage.get("steps"):
            raise ValueError(f"stages.{name}.steps is set; a merged stage's steps come from its epochs")
        ordered = stage.get("source_order") or sorted(stage.data)
        for source in ordered:
            data[source] = data.get(source, 0) + stage.data[source]
    result = copy.deepcopy(first)  # keeps its typed placeholders, so they stay overridable
    result.data = data
    result.source_order = tuple(data)
    result.epochs = epochs
    result.order = "shuffle"
    result.update(overrides)
    return result
