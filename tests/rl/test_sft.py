"""SFT through the learner: its update is the token-mean NLL update, targets are templated answers + EOS."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer
from staged_vlm_jax.rl.learner import Learner, LearnerConfig, make_optimizer, response_log_probs
from staged_vlm_jax.rl.rollout import RolloutEngine
from staged_vlm_jax.rl.sft import SFTTrainer, response_tokens, sft_learner_config
from tests.rl.test_learner import _first_moment, make_batch, tiny


def test_sft_step_is_the_nll_step():
    cfg = tiny()
    model = models.create(cfg)
    batch = make_batch(cfg, images=True)
    batch = batch.replace(advantages=np.ones_like(batch.advantages))
    config = sft_learner_config(LearnerConfig(learning_rate=1e-2, num_minibatches=4, kl_coef=0.5))
    assert (config.objective, config.num_minibatches, config.kl_coef) == ("nll", 1, 0.0)

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def nll(p):  # the textbook objective: mean over response tokens of −log p
        log_probs, _ = response_log_probs(nnx.merge(graphdef, p, rest), batch, 1.0)
        return -jnp.sum(log_probs * batch.response_mask) / jnp.sum(batch.response_mask)

    loss, grads = jax.value_and_grad(nll)(params)
    tx = make_optimizer(config)
    _, state = tx.update(grads, tx.init(params), params)
    expected = jax.tree.map(np.asarray, nnx.to_pure_dict(optax.tree.get(state, "mu")))  # (1 − b1) · clipped gradient

    learner = Learner(model, config)
    metrics = learner.train_step(batch)
    np.testing.assert_allclose(float(metrics["nll"]), float(loss), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-6)  # the objective is the NLL itself
    assert "pg_loss" not in metrics and "pg_clipfrac_higher" not in metrics  # no policy-gradient terms
    # Compared through Adam's first moment: Adam's normalisation turns float noise in near-zero gradients into
    # O(lr) parameter differences (as in test_learner).
    got = _first_moment(learner)
    assert max(np.abs(x).max() for x in jax.tree.leaves(expected)) > 1e-4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-4), got, expected)


def test_targets_are_template_plus_eos_right_padded(tmp_path):
    tokenizer = build_tiny_tokenizer(tmp_path)
    texts = ["<think> </think> \\boxed{7}", "\\boxed{12}"]
    tokens, mask = response_tokens(tokenizer, texts, eos_token_id=507, pad_token_id=506, buckets=(4, 16, 32))
    assert tokens.shape == mask.shape == (2, 16)
    for row, text in enumerate(texts):
        ids = tokens[row][mask[row] == 1].tolist()
        assert ids[-1] == 507 and tokenizer.decode(ids[:-1]) == text
        assert set(tokens[row][mask[row] == 0].tolist()) <= {506}
        assert mask[row].tolist() == sorted(mask[row].tolist(), reverse=True)  # right-padded


def test_sft_trainer_needs_the_sft_learner_config(tmp_path):
    model = models.create(tiny())
    with pytest.raises(ValueError, match="sft_learner_config"):
        SFTTrainer(Learner(model, LearnerConfig()), RolloutEngine(), build_tiny_tokenizer(tmp_path), "{answer}",
                   eos_token_id=507, pad_token_id=506)  # fmt: skip
