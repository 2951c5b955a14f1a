"""Policy-gradient losses, KL penalties and their aggregation (pure functions; EasyR1/verl semantics).

Shapes: per-token arrays are [B, T] over the response tokens, ``mask`` [B, T] marks real response tokens.
Aggregations (``loss_agg``), with L the per-token loss and M the mask:

- ``token-mean``: Σ L·M / Σ M (DAPO; EasyR1's default and the paper's);
- ``seq-mean-token-mean``: mean_b(Σ_t L·M / Σ_t M) (original GRPO, length-biased);
- ``seq-mean-token-sum-norm``: mean_b(Σ_t L·M) / T with T the padded response length (Dr. GRPO);

where mean_b runs over sequences with at least one response token, so padding rows never change the loss.
Every aggregation is a sum over *units* (tokens or sequences) divided by a unit count; `aggregate` takes that
count as an optional argument so micro-batches can be normalised by the whole mini-batch's count, which makes
gradient accumulation exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregation_units(mask: jax.Array, loss_agg: str) -> jax.Array:
    """The denominator of ``loss_agg`` for ``mask``: response tokens, or sequences with any response token."""
    if loss_agg == "token-mean":
        return jnp.sum(mask)
    if loss_agg in LOSS_AGGREGATIONS:
        return jnp.sum(jnp.any(mask > 0, axis=-1))
    raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")


def aggregate(values: jax.Array, mask: jax.Array, loss_agg: str, units: jax.Array | None = None) -> jax.Array:
    """Aggregates per-token ``values`` [B, T] by ``loss_agg`` (see the module docstring).

    ``units``: the denominator to use instead of this batch's own (the whole mini-batch's, when this is one
    micro-batch of it); a zero denominator gives 0, not NaN.
    """
    mask = mask.astype(values.dtype)
    if units is None:
        units = aggregation_units(mask, loss_agg)
    if loss_agg == "token-mean":
        total = jnp.sum(values * mask)
    elif loss_agg == "seq-mean-token-mean":
        total = jnp.sum(jnp.sum(values * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1))
    elif loss_agg == "seq-mean-token-sum-norm":
        total = jnp.sum(values * mask) / values.shape[-1]
    else:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")
    return total / jnp.maximum(units, 1)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1)


def _sequence_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(x.dtype)
    return (jnp.sum(x * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1))[:, None]


# Each maps (log_probs, old_log_probs, mask) to the per-token log importance ratio used by the clipped objective.
LOG_RATIOS: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    # PPO/GRPO: per-token ratio.
    "grpo": lambda lp, old, mask: lp - old,
    # GSPO: one ratio per sequence, the geometric mean of its token ratios.
    "gspo": lambda lp, old, mask: jnp.broadcast_to(_sequence_mean(lp - old, mask), lp.shape),
    # GSPO-token: the sequence ratio's value with per-token gradients: sg[s_i] + logp − sg[logp].
    "gspo_token": lambda lp, old, mask: (
        jax.lax.stop_gradient(_sequence_mean(lp - old, mask)) + lp - jax.lax.stop_gradient(lp)
    ),
}


def policy_loss(
    log_probs: jax.Array,
    old_log_probs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_low: float = 0.2,
    clip_high: float = 0.3,
    clip_dual: float = 3.0,
    loss_type: str = "grpo",
    loss_agg: str = "token-mean",
    units: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped policy-gradient loss with dual clip (EasyR1 ``compute_policy_loss``).

    With r = logp − old (per ``loss_type``), ratio = exp(clamp(r, −20, 20)) and
    clipped = exp(clamp(r, log(1 − clip_low), log(1 + clip_high))), per token L = max(−A·ratio, −A·clipped),
    and where A < 0, L = min(L, −A·clip_dual). ``advantages`` are per sequence [B] or per token [B, T].
    Metrics (masked token means): pg_clipfrac_higher (the clipped branch won), pg_clipfrac_lower (dual clip
    fired), ppo_kl (mean of old − logp).
    """
    if loss_type not in LOG_RATIOS:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(LOG_RATIOS)}")
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    advantages = jnp.broadcast_to(advantages, log_probs.shape)
    log_ratio = LOG_RATIOS[loss_type](log_probs, old_log_probs, mask)
    ratio = jnp.exp(jnp.clip(log_ratio, -20.0, 20.0))
    clipped_ratio = jnp.exp(jnp.clip(log_ratio, math.log(1.0 - clip_low), math.log(1.0 + clip_high)))
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * clipped_ratio
    loss_dual = -advantages * clip_dual
    higher = jnp.maximum(loss_unclipped, loss_clipped)
    per_token = jnp.where(advantages < 0, jnp.minimum(higher, loss_dual), higher)
    metrics = {
        "pg_clipfrac_higher": masked_mean((loss_unclipped < loss_clipped).astype(jnp.float32), mask),
        "pg_clipfrac_lower": masked_mean(((higher > loss_dual) & (advantages < 0)).astype(jnp.float32), mask),
        "ppo_kl": masked_mean(old_log_probs - log_probs, mask),
    }
    return aggregate(per_token, mask, loss_agg, units), metrics


def _k3(log_probs: jax.Array, ref_log_probs: jax.Array) -> jax.Array:
    d = jnp.clip(ref_log_probs - log_probs, -20.0, 20.0)
    return jnp.clip(jnp.exp(d) - d - 1.0, -10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "k1": lambda lp, ref: lp - ref,
    "k2": lambda lp, ref: 0.5 * jnp.square(lp - ref),
    "k3": _k3,  # Schulman's low-variance estimator, EasyR1's "low_var_kl"
}


def kl_penalty(log_probs: jax.Array, ref_log_probs: jax.Array, kind: str = "k3") -> jax.Array:
    """Per-token KL estimate between the policy and the reference.

    k1 = logp − ref; k2 = ½(logp − ref)²; k3 = clamp(exp(d) − d − 1, −10, 10) with d = clamp(ref − logp, −20, 20).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](log_probs, ref_log_probs)


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """Per-token entropy of softmax(logits): logsumexp(z) − Σ softmax(z)·z."""
    logits = logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(probs * logits, axis=-1)
