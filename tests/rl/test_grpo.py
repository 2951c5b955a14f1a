"""A full GRPO step (rollout -> rewards -> advantages -> updates) and the learning test."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from staged_vlm_jax import models
from staged_vlm_jax.data.batch import PromptBatch
from staged_vlm_jax.rl.grpo import (
    GRPOTrainer,
    RolloutConfig,
    Rollouts,
    concatenate,
    group_rows,
    overlong_penalty,
)
from staged_vlm_jax.rl.learner import Learner, LearnerConfig
from staged_vlm_jax.rl.rollout import EngineConfig, RolloutEngine
from tests.models.qwen_fixtures import image_patches, left_pad, prompt, tiny

TARGET = 48  # reward 1 iff the response starts with a token id below this (~10 % of the vocabulary at first)


def first_token_reward(responses, ground_truths):
    scores = [float(int(r.split()[0]) < TARGET) if r else 0.0 for r in responses]
    return [{"overall": s, "format": 0.0, "accuracy": s} for s in scores], {"reward/timeouts": 0.0}


def make_trainer(cfg, learner_cfg, n, max_new_tokens):
    learner = Learner(models.create(cfg, seed=0), learner_cfg)
    engine = RolloutEngine(EngineConfig(prompt_buckets=(16, 64), new_token_buckets=(4, 8)))
    return GRPOTrainer(
        learner, engine, first_token_reward, lambda ids: " ".join(map(str, ids)),
        RolloutConfig(n=n, max_new_tokens=max_new_tokens), eos_token_ids=(cfg.text.eos_token_id,),
        pad_token_id=cfg.text.pad_token_id,
    )  # fmt: skip


@pytest.mark.slow
def test_grpo_raises_a_trivial_verifiable_reward():
    cfg = tiny()
    trainer = make_trainer(cfg, LearnerConfig(learning_rate=3e-3, num_minibatches=2, kl_coef=0.0), n=8,
                           max_new_tokens=3)  # fmt: skip
    rng = np.random.default_rng(0)
    ids, mask = left_pad([rng.integers(0, 400, 4 + i % 3).tolist() for i in range(4)], cfg.text.pad_token_id)
    prompts = PromptBatch(ids, mask, ground_truths=[""] * 4)
    rewards = []
    for step in range(60):
        rewards.append(trainer.step(prompts, jax.random.key(step))["reward/mean"])
        if len(rewards) >= 3 and np.mean(rewards[-3:]) > 0.9:
            break
    assert rewards[0] < 0.2, rewards
    assert np.mean(rewards[-3:]) > 0.9, rewards
    assert trainer.engine.num_compilations == 1


def test_step_with_images_reports_the_expected_metrics():
    cfg = tiny()
    trainer = make_trainer(cfg, LearnerConfig(num_minibatches=2), n=2, max_new_tokens=4)
    rng = np.random.default_rng(1)
    grids = [(1, 4, 4), (1, 8, 4)]
    ids, mask = left_pad([prompt(rng, cfg, [g], [2, 3]) for g in grids], cfg.text.pad_token_id)
    pixels = np.concatenate([image_patches(rng, cfg, g) for g in grids])
    prompts = PromptBatch(ids, mask, ["", ""], pixels, np.array(grids))
    metrics = trainer.step(prompts, jax.random.key(0))
    expected = {
        "reward/mean", "reward/accuracy", "reward/format", "reward/std", "reward/frac_zero_std_groups",
        "reward/timeouts", "response_length/mean", "response_length/max", "response_length/clip_ratio", "loss",
        "pg_loss", "kl_loss", "kl", "entropy", "pg_clipfrac_higher", "pg_clipfrac_lower", "ppo_kl", "grad_norm", "lr",
        "skipped_updates", "time/rollout_s", "time/reward_s", "time/train_s", "tokens/s",
    }  # fmt: skip
    assert expected <= set(metrics), expected - set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["skipped_updates"] == 0


def test_shared_prompt_batch_equals_the_row_by_row_fallback():
    """With images: the learner gets each prompt's image once (group_size n) or, with share_prompts off, once per
    row; the same rollouts give the same loss and gradient norm either way."""
    cfg = tiny()
    rng = np.random.default_rng(1)
    grids = [(1, 4, 4), (1, 8, 4)]
    ids, mask = left_pad([prompt(rng, cfg, [g], [2, 3]) for g in grids], cfg.text.pad_token_id)
    pixels = np.concatenate([image_patches(rng, cfg, g) for g in grids])
    prompts = PromptBatch(ids, mask, ["", ""], pixels, np.array(grids))
    results = {}
    for share in (True, False):
        trainer = make_trainer(cfg, LearnerConfig(num_minibatches=2, share_prompts=share), n=2, max_new_tokens=4)
        seen = []
        train_step = trainer.learner.train_step
        trainer.learner.train_step = lambda batch, seen=seen, step=train_step: seen.append(batch) or step(batch)
        results[share] = trainer.step(prompts, jax.random.key(0)), seen[0]
    (shared, shared_batch), (per_row, per_row_batch) = results[True], results[False]
    assert shared_batch.group_size == 2 and shared_batch.pixel_values.shape[0] == 2
    assert per_row_batch.group_size == 1 and per_row_batch.pixel_values.shape[0] == 4
    np.testing.assert_array_equal(per_row_batch.pixel_values[::2], shared_batch.pixel_values)
    np.testing.assert_array_equal(per_row_batch.input_ids, shared_batch.input_ids)
    for key in ("loss", "pg_loss", "kl_loss", "entropy", "grad_norm"):
        assert shared[key] == pytest.approx(per_row[key], rel=1e-5, abs=1e-6), key


def test_rollouts_keep_images_per_prompt_through_take_and_concatenate():
    n, groups = 2, 3
    part = Rollouts(
        prompt_ids=np.repeat(np.arange(groups)[:, None], n, 0), prompt_mask=np.ones((groups * n, 1), np.int32),
        tokens=np.arange(groups * n)[:, None], response_mask=np.ones((groups * n, 1), np.int32),
        lengths=np.ones(groups * n, np.int32), scores={"overall": np.arange(groups * n, dtype=np.float32)},
        pixel_values=np.arange(groups, dtype=np.float32)[:, None, None], image_grid_thw=np.ones((groups, 1, 3)), n=n,
    )  # fmt: skip
    kept = part.take(group_rows(np.array([True, False, True]), n))
    np.testing.assert_array_equal(kept.tokens[:, 0], [0, 1, 4, 5])
    np.testing.assert_array_equal(kept.pixel_values[:, 0, 0], [0, 2])
    joined = concatenate([kept, part.take(group_rows(np.array([False, True, False]), n))], pad_token_id=0)
    np.testing.assert_array_equal(joined.prompt_ids[::n, 0], joined.pixel_values[:, 0, 0])
    assert joined.n == n


def test_overlong_penalty_in_tokens():
    np.testing.assert_allclose(overlong_penalty(np.array([10, 12, 14, 16]), 16, 4), [0.0, 0.0, -0.5, -1.0])
    np.testing.assert_allclose(overlong_penalty(np.array([15]), 16, 4, factor=0.5), [-0.375])


def parity_reward(responses, ground_truths):
    """Prompts marked "good" reward an even first token; "bad" prompts always score 0 (zero-std groups)."""
    scores = [
        float(gt == "good" and r != "" and int(r.split()[0]) % 2 == 0)
        for r, gt in zip(responses, ground_truths, strict=True)
    ]
    return [{"overall": s, "format": 0.0, "accuracy": s} for s in scores], {"reward/timeouts": 0.0}


def test_dynamic_sampling_trains_on_informative_groups_only():
    cfg = tiny()
    n = 4
    trainer = make_trainer(cfg, LearnerConfig(num_minibatches=1), n=n, max_new_tokens=4)
    trainer.score = parity_reward
    trainer.config = RolloutConfig(n=n, max_new_tokens=4, dynamic_sampling=True, max_sampling_batches=4,
                                overlong_buffer=2)  # fmt: skip
    rng = np.random.default_rng(2)
    ids, mask = left_pad([rng.integers(0, 400, 5).tolist() for _ in range(4)], cfg.text.pad_token_id)
    prompts = PromptBatch(ids, mask, ground_truths=["good", "bad", "good", "bad"])
    seen = []
    train_step = trainer.learner.train_step
    trainer.learner.train_step = lambda batch: seen.append(batch) or train_step(batch)
    metrics = trainer.step(prompts, jax.random.key(0), refill=lambda: prompts)
    (batch,) = seen
    assert batch.input_ids.shape[0] == 4 * n
    informative = np.asarray(batch.advantages).reshape(-1, n).std(axis=1) > 0
    assert metrics["dynamic_sampling/batches"] >= 2  # half of every batch is "bad": at least one refill
    assert (~informative).sum() == metrics["dynamic_sampling/shortfall_groups"]
    assert "reward/overlong_penalty" in metrics and metrics["reward/overlong_penalty"] <= 0
