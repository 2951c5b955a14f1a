"""Collapse detection: a run whose policy has died stops, loudly, instead of checkpointing dead weights.

A learning rate a thousand times too large does not crash a run. The update skips (non-finite loss or
gradients are never applied, `Learner`), or the policy saturates into a uniform distribution (entropy at
ln V) or a fixed point (gradient norm exactly zero), and every later step "succeeds" at nothing, to the last
checkpoint, exit status 0. `CollapseWatch` reads each step's metrics for three symptoms, each over
``config.watch`` consecutive steps:

* ``skipped_steps``: a step whose updates were all skipped (``skipped_updates`` > 0, ``grad_norm`` not finite);
* ``zero_grad_steps``: a gradient norm of exactly 0 although the loss has a signal: rewards that differ within a
  group (``reward/frac_zero_std_groups`` < 1) or a policy away from its reference (``kl`` > 0). (At a stage's
  first step with every group's rewards equal, a zero gradient is expected.);
* ``uniform_steps``: mean entropy at or above ``uniform_entropy`` · ln V, in a run that did not start there
  (a random-init model is uniform from its first step; that is not a collapse).

The streaks go on across stages: a dead policy stays dead when the next stage starts.

The stage loop then sets aside the checkpoints that may hold dead weights (`collapsed_from`) and stops with a
`CollapseError`, so that a rerun with a fixed config resumes from the last healthy one.
"""

from __future__ import annotations

import math
from typing import Any

from staged_vlm_jax.train.config import WatchSpec


class CollapseError(RuntimeError):
    """The policy collapsed (see the module docstring); the message says how and where the run can resume."""


def _skipped(record: dict[str, Any], watch: CollapseWatch) -> bool:
    return record.get("skipped_updates", 0) > 0 or not math.isfinite(record.get("grad_norm", 0))


def _zero_gradient(record: dict[str, Any], watch: CollapseWatch) -> bool:
    signal = record.get("reward/frac_zero_std_groups", 0) < 1 or record.get("kl", 0) > 0
    return record.get("grad_norm") == 0 and signal


def _uniform(record: dict[str, Any], watch: CollapseWatch) -> bool:
    return watch.started_uniform is False and "entropy" in record and record["entropy"] >= watch.uniform


# Symptom (a `WatchSpec` step-count field) -> (present in a step's record, what it means in words).
SYMPTOMS = {
    "skipped_steps": (_skipped, lambda n, record, _: f"{n} steps in a row skipped their update (non-finite loss "
                      f"or gradients; grad_norm {record.get('grad_norm')})"),
    "zero_grad_steps": (_zero_gradient, lambda n, record, _: f"the gradient norm was exactly 0 for {n} steps in a "
                        f"row although the loss had a signal (kl {record.get('kl')}, share of groups with equal "
                        f"rewards {record.get('reward/frac_zero_std_groups')}): a saturated policy"),
    "uniform_steps": (_uniform, lambda n, record, uniform: f"the policy's entropy "
                      f"({record['entropy']:.3f}) stayed at the uniform level (>= {uniform:.3f}) for {n} steps in a "
                      "row"),
}  # fmt: skip


class CollapseWatch:
    """The symptom streaks of a run (module docstring); `state` / `restore` carry them over a resume."""

    def __init__(self, spec: WatchSpec, vocab_size: int) -> None:
        self.spec = spec
        self.uniform = spec.uniform_entropy * math.log(vocab_size)
        self.restore({})

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `state` (empty: a new run)."""
        self.streaks = dict.fromkeys(SYMPTOMS, 0)
        self.streaks.update(state.get("streaks", {}))
        self.started_uniform: bool | None = state.get("started_uniform")

    def state(self) -> dict[str, Any]:
        return {"streaks": dict(self.streaks), "started_uniform": self.started_uniform}

    def __call__(self, record: dict[str, Any]) -> str | None:
        """Updates the streaks with one step's metrics; the collapse, in words, once a streak reaches its limit."""
        if self.started_uniform is None and "entropy" in record:
            self.started_uniform = record["entropy"] >= self.uniform
        for name, (present, _) in SYMPTOMS.items():
            self.streaks[name] = self.streaks[name] + 1 if present(record, self) else 0
        for name, (_, describe) in SYMPTOMS.items():
            limit = getattr(self.spec, name)
            if limit and self.streaks[name] >= limit:
                return describe(self.streaks[name], record, self.uniform)
        return None

    def collapsed_from(self, global_step: int) -> int:
        """The first global step whose weights may be dead: the weights saved after the step before the first
        symptomatic one (they produced its metrics)."""
        return global_step - max(self.streaks.values())
