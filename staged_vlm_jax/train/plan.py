"""The stage table: every scheduled stage's step count and its place in the run's global step count.

A stage's steps are fixed (``steps``) or follow from its data: Σ over its sources of
⌊repeat · epochs · rows / batch_size⌋, which is why a merged stage (every source once, repeated its stage's epochs)
has the staged run's total step count. Counting reads each data file once, images unopened.
"""

from __future__ import annotations

import dataclasses

from staged_vlm_jax.data.pipeline import DataSource
from staged_vlm_jax.data.schema import SkipCounter
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.train import config as config_lib


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A scheduled stage with its step count and its place in the run's global step count."""

    index: int
    name: str
    spec: config_lib.StageSpec
    steps: int
    first_global_step: int  # global step before this stage's first step

    @property
    def last_global_step(self) -> int:
        return self.first_global_step + self.steps


def data_source(spec: config_lib.RunSpec, name: str, repeat: int = 1) -> DataSource:
    """The pipeline source of a ``data.sources`` or ``eval.sources`` entry."""
    source = spec.data.sources.get(name) or spec.eval.sources[name]
    return DataSource(source.path, source.capability, source.image_root or None, repeat=repeat)


def count_rows(source: DataSource) -> int:
    """Usable rows of a data file (malformed rows skipped, as a stage's pipeline may skip them)."""
    rows = read_rows(source.path, capability=source.capability, image_root=source.image_root, on_error="skip",
                     skipped=SkipCounter())  # fmt: skip
    return sum(1 for _ in rows)


def plan_stages(spec: config_lib.RunSpec) -> list[StagePlan]:
    """Every scheduled stage's step count and its offset in the run's global steps (module docstring)."""
    rows: dict[str, int] = {}
    plans, total = [], 0
    for index, name in enumerate(spec.schedule):
        stage = spec.stages[name]
        steps = stage.steps
        if not steps:
            for source_name in stage.data:
                if source_name not in rows:
                    rows[source_name] = count_rows(data_source(spec, source_name))
            steps = sum(repeat * stage.epochs * rows[s] // stage.batch_size for s, repeat in stage.data.items())
            if steps < 1:
                raise config_lib.ConfigKeyError(
                    f"config.stages.{name}: its data ({', '.join(f'{s}: {rows[s]} rows' for s in stage.data)}) "
                    f"fills no batch of batch_size {stage.batch_size}"
                )
        plans.append(StagePlan(index, name, stage, steps, total))
        total += steps
    return plans


def plan_summary(plans: list[StagePlan]) -> list[dict]:
    """The stage table as results.md shows it."""
    return [{"stage": p.name, "kind": p.spec.kind, "steps": p.steps, "trainable": list(p.spec.trainable)}
            for p in plans]  # fmt: skip
