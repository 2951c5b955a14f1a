"""Orbax checkpoints of a staged run: everything needed to continue bit-exactly, in three items.

* ``model``: the full model state (trainable and frozen parts merged) — all that `staged-vlm export` and the
  next stage need, restorable without building an optimizer;
* ``optimizer``: the stage's optimizer state, KL-reference weights (the stage's initial trainable weights, which
  cannot be recomputed mid-stage), update and skipped-update counters;
* ``meta`` (JSON): stage index and name, stage step, whether the stage is finished, the global step, the run
  seed (every step's RNG key is ``fold_in(key(seed), global_step)``, so the step *is* the RNG state), the
  prompt iterator's Grain state, the evaluations so far, and the config hash.

Saves are asynchronous (training continues while Orbax writes) and atomic (a kill mid-save leaves no
checkpoint, the previous one stays the latest). Periodic checkpoints keep the latest ``keep``; stage-end
checkpoints are kept always, so any stage's final weights can be exported. A checkpoint found damaged later (a
file missing, truncated or corrupt) is moved aside to ``checkpoints.damaged/STEP`` (`Checkpointer.set_aside`),
never deleted, and the run resumes from the newest intact one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from staged_vlm_jax.models.sharding import DEFAULT_RULES, MeshAxes, abstract, barrier, state_shardings
from staged_vlm_jax.paths import PathLike, as_path, move
from staged_vlm_jax.rl.learner import Learner


class IncompatibleCheckpointError(ValueError):
    """A checkpoint that does not fit the model or config it is restored into; the message names both."""


def _abstract(tree):
    """Shape/dtype/sharding structs of ``tree``: the target Orbax restores into (placed as the live arrays are)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape; NNX variables and their stored form (a dict with "value") get the same name."""
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    part = lambda key: str(next((getattr(key, a) for a in ("key", "idx", "name") if hasattr(key, a)), key))
    names = [[p for p in map(part, path) if p] for path, _ in leaves]
    return {".".join(name[:-1] if name[-1] == "value" else name): tuple(leaf.shape)
            for name, (_, leaf) in zip(names, leaves, strict=True)}  # fmt: skip


def _is_cancelled_read_report(unraisable) -> bool:
    message = str(unraisable.exc_value)
    closed = isinstance(unraisable.exc_value, RuntimeError) and message == "Event loop is closed"
    return closed or message.startswith("Encountered error while reading array index")


def silence_cancelled_reads() -> None:
    """Drops, from now on, the reports of reads cancelled by a damaged checkpoint's failed read.

    When one read fails, the reads issued with it are abandoned, and their TensorStore callbacks report "Event
    loop is closed" and the read error again as unraisable exceptions, dozens of tracebacks at arbitrary later
    times that would bury the one-line report of the damage and say nothing more. Every other unraisable
    exception still reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_cancelled_reads", False):
        return

    def hook(unraisable) -> None:
        if not _is_cancelled_read_report(unraisable):
            previous(unraisable)

    hook.drops_cancelled_reads = True
    sys.unraisablehook = hook


class Checkpointer:
    """A run's checkpoint directory (an Orbax CheckpointManager keyed by global step)."""

    def __init__(
        self,
        directory: PathLike,
        *,
        keep: int,
        stage_end_steps: tuple[int, ...],
        async_save: bool,
        read_only: bool = False,
    ):
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [ocp.checkpoint_managers.LatestN(keep), ocp.checkpoint_managers.CustomSteps(list(stage_end_steps))]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save, read_only=read_only
        )
        self.directory = as_path(directory)
        handlers = {"model": ocp.StandardCheckpointHandler(), "optimizer": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}  # fmt: skip
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, global_step: int, learner: Learner, meta: dict[str, Any]) -> None:
        state = learner.state
        optimizer = {
            "opt_state": state.opt_state,
            "ref_params": state.ref_params,
            "step": state.step,
            "skipped_updates": state.skipped_updates,
        }
        self.manager.save(
            global_step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(nnx.merge_state(state.params, state.frozen)),
                optimizer=ocp.args.StandardSave(optimizer),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def meta(self, global_step: int) -> dict[str, Any]:
        return self.manager.restore(global_step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _restore(self, global_step: int, item: str, target, what: str):
        """Restores ``item`` into ``target``'s structure, after checking the stored shapes name for name (Orbax's
        own errors on a mismatch are long and name neither the file nor the parameter)."""
        stored = _shapes(self.manager.item_metadata(global_step)[item])
        expected = _shapes(target)
        for name in sorted(stored.keys() | expected.keys()):
            if stored.get(name) != expected.get(name):
                raise IncompatibleCheckpointError(
                    f"{self.directory}/{global_step}: the checkpoint's {item} does not fit {what}: {name} is "
                    f"{stored.get(name, 'absent')} in the checkpoint and {expected.get(name, 'absent')} in the model"
                )
        restored = self.manager.restore(global_step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(
            _abstract(target))}))  # fmt: skip
        return restored[item]

    def restore_model(
        self,
        global_step: int,
        model: nnx.Module,
        mesh: Mesh | None = None,
        rules: Mapping[str, MeshAxes] = DEFAULT_RULES,
    ) -> nnx.Module:
        """``model`` (any module of the run's architecture, e.g. abstract) with the checkpoint's weights, placed by
        ``rules`` on ``mesh`` (on this process's first device without one). The placement is this process's, not
        the saving run's, so a pod's checkpoint restores on one host and an 8-device one in a 1-device process."""
        graphdef, state = nnx.split(model)
        if mesh is None:
            shardings = [SingleDeviceSharding(jax.local_devices()[0])] * len(jax.tree.leaves(state))
        else:
            shardings = state_shardings(state, mesh, rules)
        target = abstract(state, shardings)
        return nnx.merge(graphdef, self._restore(global_step, "model", target, "the configured model"))

    def restore_optimizer(self, global_step: int, learner: Learner) -> None:
        """Puts the checkpoint's optimizer state, reference weights and counters into ``learner.state``."""
        state = learner.state
        target = {"opt_state": state.opt_state, "ref_params": state.ref_params, "step": state.step,
                  "skipped_updates": state.skipped_updates}  # fmt: skip
        restored = self._restore(global_step, "optimizer", target, "this stage's trainable parameters")
        learner.state = state.replace(**restored)

    def set_aside(self, global_step: int, why: str = "damaged") -> epath.Path:
        """Moves checkpoint ``global_step`` out of the manager's directory, files intact, to
        ``<directory>.<why>/<step>`` (a numbered suffix if that exists); returns where it went."""
        target = self.directory.parent / f"{self.directory.name}.{why}" / str(global_step)
        suffix = 1
        while target.exists():
            target = target.with_name(f"{global_step}.{suffix}")
            suffix += 1
        if jax.process_index() == 0:
            move(self.directory / str(global_step), target)
        barrier("checkpoint set aside")
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
