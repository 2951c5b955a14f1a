"""Collapse detection: each symptom stops a run after its streak, healthy and expected patterns do not, the
streaks survive a resume, and the dead checkpoints are the ones the first symptomatic step points at."""

from __future__ import annotations

import math

import pytest

from staged_vlm_jax.train.config import WatchSpec
from staged_vlm_jax.train.watch import CollapseWatch

VOCAB = 512
HEALTHY = {"entropy": 2.0, "grad_norm": 0.7, "skipped_updates": 0.0, "kl": 0.01, "reward/frac_zero_std_groups": 0.4}


def _run(watch: CollapseWatch, records: list[dict]) -> list[str | None]:
    return [watch(record) for record in records]


def test_a_healthy_run_never_stops():
    watch = CollapseWatch(WatchSpec(), VOCAB)
    assert _run(watch, [HEALTHY] * 50) == [None] * 50


def test_skipped_updates_stop_after_the_streak_and_a_healthy_step_resets_it():
    watch = CollapseWatch(WatchSpec(skipped_steps=3), VOCAB)
    skipped = {**HEALTHY, "skipped_updates": 1.0, "grad_norm": math.nan}
    assert _run(watch, [skipped, skipped, HEALTHY, skipped, skipped]) == [None] * 5
    message = watch(skipped)
    assert message.startswith("3 steps in a row skipped their update (non-finite loss or gradients; grad_norm nan")
    assert watch.collapsed_from(global_step=20) == 17  # steps 18-20 symptomatic: weights after step 17 are dead


def test_zero_gradient_is_a_collapse_only_when_the_loss_has_a_signal():
    watch = CollapseWatch(WatchSpec(zero_grad_steps=2), VOCAB)
    no_signal = {**HEALTHY, "grad_norm": 0.0, "kl": 0.0, "reward/frac_zero_std_groups": 1.0}
    assert _run(watch, [no_signal] * 5) == [None] * 5  # every group's rewards equal, at the reference: expected
    saturated = {**no_signal, "kl": 0.02}
    assert _run(watch, [saturated, saturated])[1].startswith("the gradient norm was exactly 0 for 2 steps in a row")


def test_uniform_entropy_is_a_collapse_only_for_a_run_that_did_not_start_uniform():
    uniform = {**HEALTHY, "entropy": math.log(VOCAB)}
    started_uniform = CollapseWatch(WatchSpec(uniform_steps=2), VOCAB)  # a random-init model
    assert _run(started_uniform, [uniform] * 5) == [None] * 5
    watch = CollapseWatch(WatchSpec(uniform_steps=2), VOCAB)
    stops = _run(watch, [HEALTHY, uniform, uniform])
    assert stops[:2] == [None, None] and "stayed at the uniform level (>= 6.114)" in stops[2]


def test_streaks_survive_a_resume_and_zero_turns_a_check_off():
    skipped = {**HEALTHY, "skipped_updates": 2.0}
    watch = CollapseWatch(WatchSpec(skipped_steps=3), VOCAB)
    _run(watch, [HEALTHY, skipped, skipped])
    resumed = CollapseWatch(WatchSpec(skipped_steps=3), VOCAB)
    resumed.restore(watch.state())
    assert resumed(skipped) is not None
    off = CollapseWatch(WatchSpec(skipped_steps=0), VOCAB)
    assert _run(off, [skipped] * 10) == [None] * 10


@pytest.mark.parametrize("field", ["skipped_steps", "uniform_entropy"])
def test_bad_thresholds_are_refused_at_start_up(tmp_path, field):
    from staged_vlm_jax.train import config as config_lib
    from staged_vlm_jax.train import recipes

    config = recipes.demo()
    config.watch[field] = -1 if field == "skipped_steps" else 1.5
    with pytest.raises(config_lib.ConfigKeyError, match=r"^config\.watch: "):
        config_lib.resolve(config, tmp_path)
