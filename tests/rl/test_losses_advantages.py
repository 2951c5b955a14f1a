"""Losses, KL estimators and advantages vs an independent NumPy implementation of DESIGN.md's formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from staged_vlm_jax.rl import advantages, losses

AGGS = losses.LOSS_AGGREGATIONS


# ---- NumPy reference (written from the formulas, loop by loop) ----------------------------------------------------


def np_aggregate(values, mask, agg):
    rows = [b for b in range(values.shape[0]) if mask[b].sum() > 0]
    if agg == "token-mean":
        return (values * mask).sum() / max(mask.sum(), 1)
    if agg == "seq-mean-token-mean":
        per = [(values[b] * mask[b]).sum() / mask[b].sum() for b in rows]
    else:
        per = [(values[b] * mask[b]).sum() / values.shape[1] for b in rows]
    return float(np.mean(per)) if per else 0.0


def np_policy_loss(lp, old, adv, mask, agg, loss_type, lo=0.2, hi=0.3, dual=3.0):
    B, T = lp.shape
    adv = np.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, (B, T))
    out = np.zeros((B, T))
    for b in range(B):
        seq = (lp[b] - old[b])[mask[b] > 0].mean() if mask[b].sum() else 0.0
        for t in range(T):
            r = lp[b, t] - old[b, t] if loss_type == "grpo" else seq
            ratio = math.exp(min(max(r, -20), 20))
            clipped = math.exp(min(max(r, math.log(1 - lo)), math.log(1 + hi)))
            L = max(-adv[b, t] * ratio, -adv[b, t] * clipped)
            if adv[b, t] < 0:
                L = min(L, -adv[b, t] * dual)
            out[b, t] = L
    return np_aggregate(out, mask, agg)


def np_k3(lp, ref):
    d = np.clip(ref - lp, -20, 20)
    return np.clip(np.exp(d) - d - 1, -10, 10)


def np_advantages(name, scores, n):
    out = []
    for g in scores.reshape(-1, n):
        for r in g:
            if name == "grpo":
                out.append((r - g.mean()) / (np.std(g, ddof=1) + 1e-6))
            elif name == "dr_grpo":
                out.append(r - g.mean())
            else:
                out.append(r - (g.sum() - r) / (n - 1))
    return np.array(out)


# ---- cases -----------------------------------------------------------------------------------------------------------


def _case(seed, B=6, T=7):
    rng = np.random.default_rng(seed)
    lp = -rng.random((B, T)) * 3
    old = lp + rng.normal(0, 0.4, (B, T))
    mask = (rng.random((B, T)) < 0.7).astype(np.float64)
    mask[0] = 0  # a fully masked (padding) row
    mask[1] = 0
    mask[1, 0] = 1  # a one-token response
    adv = rng.normal(0, 1, B)
    return lp, old, adv, mask


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("loss_type", ["grpo", "gspo", "gspo_token"])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_matches_numpy(agg, loss_type, seed):
    lp, old, adv, mask = _case(seed)
    got, metrics = losses.policy_loss(
        jnp.asarray(lp, jnp.float32), jnp.asarray(old, jnp.float32), jnp.asarray(adv, jnp.float32),
        jnp.asarray(mask, jnp.float32), loss_type=loss_type, loss_agg=agg,
    )  # fmt: skip
    ref_type = "grpo" if loss_type == "grpo" else "gspo"  # gspo_token has gspo's value (only gradients differ)
    np.testing.assert_allclose(float(got), np_policy_loss(lp, old, adv, mask, agg, ref_type), rtol=1e-5, atol=1e-6)
    assert set(metrics) == {"pg_clipfrac_higher", "pg_clipfrac_lower", "ppo_kl"}


def test_clip_metrics_match_numpy():
    lp, old, adv, mask = _case(3)
    _, m = losses.policy_loss(*(jnp.asarray(x, jnp.float32) for x in (lp, old, adv, mask)))
    adv_t = np.broadcast_to(adv[:, None], lp.shape)
    r = lp - old
    ratio, clipped = np.exp(np.clip(r, -20, 20)), np.exp(np.clip(r, math.log(0.8), math.log(1.3)))
    higher = np.maximum(-adv_t * ratio, -adv_t * clipped)
    sel = mask > 0
    np.testing.assert_allclose(float(m["pg_clipfrac_higher"]), (-adv_t * ratio < -adv_t * clipped)[sel].mean(), 1e-6)
    np.testing.assert_allclose(
        float(m["pg_clipfrac_lower"]), ((higher > -adv_t * 3.0) & (adv_t < 0))[sel].mean(), atol=1e-6
    )
    np.testing.assert_allclose(float(m["ppo_kl"]), (old - lp)[sel].mean(), rtol=1e-5)


def test_per_token_advantages_and_dual_clip_fire():
    lp = jnp.zeros((1, 3))
    old = jnp.asarray([[-3.0, 0.0, 3.0]])  # ratios e^3, 1, e^-3
    adv = jnp.asarray([[-1.0, -1.0, 1.0]])
    loss, m = losses.policy_loss(lp, old, adv, jnp.ones((1, 3)), loss_agg="token-mean")
    # token 0: A<0, ratio e^3 -> max(e^3, 1.3) capped by dual clip 3; token 1: 1; token 2: max(-e^-3, -0.8) = -e^-3
    np.testing.assert_allclose(float(loss), (3.0 + 1.0 - math.exp(-3)) / 3, rtol=1e-6)
    assert float(m["pg_clipfrac_lower"]) == pytest.approx(1 / 3)


def test_gspo_token_equals_gspo_for_sequence_advantages_and_differs_for_token_advantages():
    """GSPO paper: GSPO-token's gradient equals GSPO's when every token of a sequence has the same advantage."""
    lp, old, adv, mask = (jnp.asarray(x, jnp.float32) for x in _case(4))
    token_adv = adv[:, None] * jnp.linspace(0.5, 1.5, lp.shape[1])[None]

    def grads(kind, a):
        return np.asarray(jax.grad(lambda x: losses.policy_loss(x, old, a, mask, loss_type=kind)[0])(lp))

    np.testing.assert_allclose(grads("gspo", adv), grads("gspo_token", adv), rtol=1e-5, atol=1e-7)
    assert not np.allclose(grads("gspo", token_adv), grads("gspo_token", token_adv), atol=1e-4)
    assert np.all(grads("gspo_token", token_adv)[np.asarray(mask) == 0] == 0)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_penalty_matches_numpy(kind):
    rng = np.random.default_rng(5)
    lp, ref = -rng.random((4, 9)) * 5, -rng.random((4, 9)) * 5
    lp[0, 0], ref[0, 0] = -40.0, 0.0  # exercises the clamps
    expected = {"k1": lp - ref, "k2": 0.5 * (lp - ref) ** 2, "k3": np_k3(lp, ref)}[kind]
    got = losses.kl_penalty(jnp.asarray(lp, jnp.float32), jnp.asarray(ref, jnp.float32), kind)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("agg", AGGS)
def test_aggregate_edge_cases(agg):
    values = jnp.ones((3, 4))
    assert float(losses.aggregate(values, jnp.zeros((3, 4)), agg)) == 0.0  # everything masked: 0, not NaN
    mask = np.zeros((3, 4))
    mask[2, :2] = 1
    np.testing.assert_allclose(
        float(losses.aggregate(values, jnp.asarray(mask), agg)), np_aggregate(np.ones((3, 4)), mask, agg)
    )


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_advantages_match_numpy(name):
    rng = np.random.default_rng(6)
    scores = rng.random(20).round(1)
    scores[:5] = 0.9  # a group whose rewards are all equal
    got = advantages.compute(name, jnp.asarray(scores), group_size=5)
    np.testing.assert_allclose(np.asarray(got), np_advantages(name, scores, 5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got)[:5], 0.0, atol=1e-6)


def test_advantage_errors():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        advantages.compute("ppo", jnp.zeros(4), 2)
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        advantages.compute("grpo", jnp.zeros(4), 3)
    with pytest.raises(ValueError, match="at least 2 responses"):
        advantages.compute("grpo", jnp.zeros(4), 1)


def test_micro_batch_units_make_sums_exact():
    lp, old, adv, mask = (jnp.asarray(x, jnp.float32) for x in _case(7))
    for agg in AGGS:
        full, _ = losses.policy_loss(lp, old, adv, mask, loss_agg=agg)
        units = losses.aggregation_units(mask, agg)
        parts = [
            losses.policy_loss(lp[s], old[s], adv[s], mask[s], loss_agg=agg, units=units)[0]
            for s in (slice(0, 2), slice(2, 5), slice(5, 6))
        ]
        np.testing.assert_allclose(float(sum(parts)), float(full), rtol=1e-6, err_msg=agg)
