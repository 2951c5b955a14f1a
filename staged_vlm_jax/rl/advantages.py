"""Outcome advantage estimators over groups of rollouts (registry).

Scores arrive as one scalar per response, [B·n] with the ``n`` responses of each prompt contiguous (the rollout
engine's layout). Each estimator returns per-response advantages [B·n]; the losses broadcast them over tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

AdvantageFn = Callable[[jax.Array, int, float], jax.Array]

ADVANTAGES: dict[str, AdvantageFn] = {}


def register(name: str):
    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES[name] = fn
        return fn

    return wrap


def _groups(scores: jax.Array, group_size: int) -> jax.Array:
    """[groups, n] in float32, shifted by each group's first score: a no-op for every estimator (all are
    shift-invariant) that makes a group of equal scores exactly zero, where float32 rounding of the mean would
    otherwise leave ~1e-8 residues that the grpo std normalisation blows up to O(0.1)."""
    if scores.ndim != 1 or scores.shape[0] % group_size:
        raise ValueError(f"scores of shape {scores.shape} do not split into groups of {group_size}")
    g = scores.astype(jnp.float32).reshape(-1, group_size)
    return g - g[:, :1]


@register("grpo")
def grpo(scores: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
    """A = (r − mean_g) / (std_g + eps) with the unbiased std (torch.std), as EasyR1/verl compute it."""
    if group_size < 2:
        raise ValueError("grpo advantages need at least 2 responses per prompt (rollout.n > 1)")
    g = _groups(scores, group_size)
    mean = g.mean(axis=1, keepdims=True)
    std = jnp.std(g, axis=1, ddof=1, keepdims=True)
    return ((g - mean) / (std + eps)).reshape(-1)


@register("dr_grpo")
def dr_grpo(scores: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
    """Dr. GRPO: A = r − mean_g (no std normalisation, which biases towards easy/hard groups)."""
    g = _groups(scores, group_size)
    return (g - g.mean(axis=1, keepdims=True)).reshape(-1)


@register("rloo")
def rloo(scores: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
    """RLOO: A = r − mean of the other n−1 responses = n/(n−1) · (r − mean_g)."""
    if group_size < 2:
        raise ValueError("rloo advantages need at least 2 responses per prompt")
    g = _groups(scores, group_size)
    return (group_size / (group_size - 1) * (g - g.mean(axis=1, keepdims=True))).reshape(-1)


def compute(name: str, scores: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
    """Advantages by estimator name (``grpo``, ``dr_grpo``, ``rloo``)."""
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGES)}")
    return ADVANTAGES[name](jnp.asarray(scores), group_size, eps)
