"""Branching: a run that starts where another run's stage ended, instead of repeating the stages they share.

Ablations share a prefix: the paper's order ablation 1 → 3 → 2 runs stage 1 as 1 → 2 → 3 does, and the testbed's
three arms share their SFT warm start. `branch` seeds a fresh workdir with the source run's files up to the end of
stage ``after`` — that stage-end checkpoint, the metrics and TensorBoard events (which the resume truncates to it),
and the testbed's generated ``data/`` and ``tokenizer/`` — so `StagedRun` resumes there exactly as it would resume
its own interrupted run, and its metrics, evaluations and weights are those of a run that trained the shared stages
itself. That holds only if the shared stages would have run the same: the schedules must agree up to ``after``,
every config value other than ``schedule``, the unshared stages and where files are kept (`HOUSEKEEPING_KEYS`)
must be equal (a difference is refused naming the keys), and the data files must be the ones the checkpoint
trained on (checked by the resume, as for any checkpoint).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import ml_collections

from staged_vlm_jax.models.sharding import barrier
from staged_vlm_jax.paths import PathLike, as_path, copy_tree, move
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train.checkpoint import Checkpointer
from staged_vlm_jax.train.workdir import CONFIG_FILE, ConfigMismatchError

# What a branch copies besides the checkpoint: the testbed's generated data and tokenizer (``{workdir}`` paths of
# the config) and the history the resume truncates to the checkpoint's step.
COPIED_DIRECTORIES = ("data", "tokenizer", "tensorboard")
COPIED_FILES = ("metrics.jsonl",)


class BranchError(ValueError):
    """The source run cannot seed this one: it has no such stage, a different schedule up to it, or has not
    finished it."""


# Config keys that say where and how often files are kept, not what trains: they may differ between the runs.
HOUSEKEEPING_KEYS = ("compilation_cache", "checkpoint")


def shared_part(config: dict[str, Any], prefix: list[str]) -> dict[str, Any]:
    """What a run's first stages ``prefix`` depend on: the whole config but its later schedule, their stages and
    the `HOUSEKEEPING_KEYS`."""
    kept = {key: value for key, value in config.items() if key not in HOUSEKEEPING_KEYS}
    return {**kept, "schedule": prefix, "stages": {name: config["stages"].get(name) for name in prefix}}


def branch(config: ml_collections.ConfigDict, workdir: PathLike, source: PathLike, after: str) -> int | None:
    """Seeds ``workdir`` with the run in ``source`` up to the end of its stage ``after`` (see the module docstring);
    returns the global step the run continues from. A workdir that already has checkpoints holds a run of its own
    (perhaps this branch, interrupted): nothing is copied and None is returned, so a rerun resumes it."""
    workdir, source = as_path(workdir), as_path(source)
    checkpoints = workdir / "checkpoints"
    has_own = checkpoints.exists() and any(child.name.isdigit() for child in checkpoints.iterdir())
    barrier("branch target read")  # every process decides on the same workdir, before process 0 copies into it
    if has_own:
        return None
    current = json.loads(config_lib.canonical(config))
    schedule = list(current["schedule"])
    if after not in schedule:
        raise BranchError(f"--branch-after {after}: not a stage of this run's schedule ({', '.join(schedule)})")
    if not (source / CONFIG_FILE).exists():
        raise BranchError(f"--branch-from {source}: no {CONFIG_FILE}, not a run's workdir")
    try:
        saved = json.loads((source / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise BranchError(f"--branch-from {source / CONFIG_FILE}: not a run's config ({error})") from error
    prefix = schedule[: schedule.index(after) + 1]
    if list(saved["schedule"][: len(prefix)]) != prefix:
        raise BranchError(f"{source}: its schedule starts {', '.join(saved['schedule'][: len(prefix)])}, this run's "
                          f"{', '.join(prefix)}: the runs do not share the stages up to {after}")  # fmt: skip
    differences = config_lib.config_differences(shared_part(saved, prefix), shared_part(current, prefix))
    if differences:
        raise ConfigMismatchError(f"{source / CONFIG_FILE}: the stages up to {after} ran with another config; "
                                  f"differing keys: {', '.join(differences)}")  # fmt: skip
    step = _stage_end(source / "checkpoints", after)
    if jax.process_index() == 0:
        for name in COPIED_DIRECTORIES:
            if (source / name).exists() and not (workdir / name).exists():
                copy_tree(source / name, workdir / f"{name}.partial")
                move(workdir / f"{name}.partial", workdir / name)
        for name in COPIED_FILES:
            if (source / name).exists():
                (source / name).copy(workdir / name, overwrite=True)
        # The checkpoint lands last, by a rename: its presence says the branch is complete (a kill before it
        # leaves no checkpoint, and the rerun branches again).
        copy_tree(source / "checkpoints" / str(step), workdir / "checkpoints.branch" / str(step))
        move(workdir / "checkpoints.branch" / str(step), workdir / "checkpoints" / str(step))
        (workdir / "checkpoints.branch").rmtree(missing_ok=True)
        print(f"branched from {source}: its stage {after} ended at step {step}; this run continues from there",
              file=sys.stderr)  # fmt: skip
    barrier("branch copied")
    return step


def _stage_end(directory, stage: str) -> int:
    """The global step of the checkpoint written at the end of ``stage`` in ``directory``."""
    checkpointer = Checkpointer(directory, keep=1, stage_end_steps=(), async_save=False, read_only=True)
    try:
        steps = checkpointer.all_steps()
        for step in steps:
            meta = checkpointer.meta(step)
            if meta["stage"] == stage and meta["stage_done"]:
                return step
    finally:
        checkpointer.close()
    listed = ", ".join(map(str, steps)) or "none"
    raise BranchError(f"{directory}: no checkpoint of the end of stage {stage} (checkpoints: {listed}); finish "
                      "that stage in the source run first")  # fmt: skip
