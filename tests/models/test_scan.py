"""Stacked, scanned layers: the program does not grow with depth, and remat policies change memory, not numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.models.layers import REMAT_POLICIES, remat
from staged_vlm_jax.rl.learner import Learner, LearnerConfig
from tests.rl.test_learner import make_batch


def _tiny(layers: int):
    return models.tiny_config("qwen2_5_vl", text=dict(num_hidden_layers=layers), vision=dict(depth=layers))


def test_the_train_step_program_does_not_grow_with_depth():
    """Scanned layers are traced once: the lowered GRPO step (vision tower, decoder, backward, optimizer) of a model
    4x deeper is the same size, up to the few constants that spell the depth."""
    sizes = {}
    for layers in (2, 8):
        cfg = _tiny(layers)
        learner = Learner(models.create(cfg, seed=0), LearnerConfig(micro_batch_size=2, num_minibatches=2))
        batch = learner.place_batch(make_batch(cfg, 0, images=True))
        sizes[layers] = len(learner._step.lower(learner.state, batch).as_text())
    assert sizes[8] < 1.02 * sizes[2], sizes


def _loss_and_grads(model, policy: str):
    graphdef, params = nnx.split(model, nnx.Param)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 500, (2, 48)), jnp.int32)

    def loss(params):
        logits = nnx.merge(graphdef, params)(ids)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    with remat(policy):
        step = jax.jit(jax.value_and_grad(loss))
        compiled = step.lower(params).compile()
        value, grads = step(params)
    return value, grads, compiled.memory_analysis().temp_size_in_bytes


def test_remat_policies_give_the_same_gradients_and_full_remat_keeps_less():
    model = models.create(_tiny(4), seed=1)
    results = {policy: _loss_and_grads(model, policy) for policy in REMAT_POLICIES}
    value, grads, _ = results["none"]
    for policy, (other_value, other_grads, _) in results.items():
        assert float(other_value) == pytest.approx(float(value), rel=1e-6), policy
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), other_grads, grads)
    temp = {policy: result[2] for policy, result in results.items()}
    assert temp["full"] < temp["none"], temp


def test_an_unknown_remat_policy_names_the_choices():
    with (
        pytest.raises(ValueError, match=r"unknown remat policy 'some'; choose one of \['dots', 'full', 'none'\]"),
        remat("some"),
    ):
        pass
    with pytest.raises(ValueError, match=r"learner.remat 'some' is not one of"):
        Learner(models.create(_tiny(2)), LearnerConfig(remat="some"))
