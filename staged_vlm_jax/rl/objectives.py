"""Training objectives the learner takes by name (``learner.objective``): what one micro-batch's loss is.

The learner owns everything around the loss — log-prob passes, old/reference log-probs, exact micro-batch
accumulation, the update — and an objective is the pure function in the middle. Each receives the micro-batch's
response log-probs and the whole mini-batch's aggregation denominator ``units`` (so micro-batch losses add up to the
mini-batch loss exactly, whatever ``loss_agg``) and returns its loss, the loss terms to report, and token sums the
learner turns into token means. A new objective (e.g. DPO's) is one function and one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from staged_vlm_jax.rl import losses

if TYPE_CHECKING:
    from staged_vlm_jax.rl.learner import LearnerConfig, TrainBatch

# (config, log_probs, old_log_probs, ref_log_probs, batch, units) -> (loss, loss terms, token sums).
# ``units`` is the whole mini-batch's aggregation denominator, so micro-batch losses add up to the mini-batch loss;
# loss terms are added over micro-batches likewise; token sums are sums over the batch's response tokens, which the
# learner divides by the mini-batch's token count to report token means.
Objective = Callable[
    ["LearnerConfig", jax.Array, jax.Array, jax.Array, "TrainBatch", jax.Array],
    tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]],
]


def policy_gradient_objective(cfg: LearnerConfig, log_probs, old_log_probs, ref_log_probs, batch: TrainBatch, units):
    """EasyR1's GRPO objective: the clipped surrogate (`losses.policy_loss`) + kl_coef · the aggregated KL penalty
    against the reference weights. Without a KL term (kl_coef 0) there are no reference log-probs (the learner
    passes zeros), so the KL and its metric are 0 rather than a distance to nothing."""
    mask = batch.response_mask
    pg_loss, pg_metrics = losses.policy_loss(
        log_probs, old_log_probs, batch.advantages, mask, cfg.clip_low, cfg.clip_high, cfg.clip_dual,
        cfg.loss_type, cfg.loss_agg, units,
    )  # fmt: skip
    kl = losses.kl_penalty(log_probs, ref_log_probs, cfg.kl_kind) if cfg.kl_coef else jnp.zeros_like(log_probs)
    kl_loss = losses.aggregate(kl, mask, cfg.loss_agg, units)
    tokens = jnp.sum(mask)
    sums = {k: v * tokens for k, v in pg_metrics.items()}
    sums["kl_token_mean"] = jnp.sum(kl * mask)
    return pg_loss + cfg.kl_coef * kl_loss, {"pg_loss": pg_loss, "kl_loss": kl_loss}, sums


def nll_objective(cfg: LearnerConfig, log_probs, old_log_probs, ref_log_probs, batch: TrainBatch, units):
    """Supervised fine-tuning: the negative log-likelihood of the response tokens, aggregated by ``loss_agg``
    (token-mean: the usual SFT loss). Advantages, old and reference log-probs are not used."""
    return losses.aggregate(-log_probs, batch.response_mask, cfg.loss_agg, units), {}, {}


OBJECTIVES: dict[str, Objective] = {"policy_gradient": policy_gradient_objective, "nll": nll_objective}
