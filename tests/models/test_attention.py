"""The attention kernel: queries in blocks with the mask built per block is the dense computation, in values and
gradients, with less memory; the models' masks (causal with left padding, vision frames) go through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from staged_vlm_jax.models import layers

T = layers.QUERY_BLOCK * 2 + 77  # three blocks, the last one padded


def _inputs(batch: int, heads: int, kv_heads: int, dim: int = 8):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((batch, T, heads, dim)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((batch, kv_heads, T, dim)), jnp.float32) for _ in range(2))
    return q, k, v


def _causal_left_padded(pad: list[int]):
    valid = jnp.asarray(np.arange(T)[None] >= np.asarray(pad)[:, None])
    return lambda queries: (jnp.arange(T)[None, :] <= queries[:, None])[None] & valid[:, None, :]


def _frames(sizes: list[int]):
    segment = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes))
    return lambda queries: (segment[queries][:, None] == segment[None, :])[None]


@pytest.mark.parametrize(
    ("mask", "batch", "heads", "kv_heads"),
    [(_causal_left_padded([0, 300]), 2, 4, 2), (_frames([700, 400, T - 1100]), 1, 2, 2)],
    ids=["causal_left_padded_gqa", "vision_frames"],
)
def test_blocked_attention_is_the_dense_computation(mask, batch, heads, kv_heads):
    q, k, v = _inputs(batch, heads, kv_heads)
    dense = lambda q, k, v: layers.dot_product_attention(q, k, v, mask(jnp.arange(T)), 0.35)
    blocked = lambda q, k, v: layers.dot_product_attention(q, k, v, mask, 0.35)
    np.testing.assert_allclose(blocked(q, k, v), dense(q, k, v), atol=2e-6, rtol=0)
    loss = lambda attention: lambda *args: jnp.sum(jnp.sin(attention(*args)))
    for got, expected in zip(jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v),
                             jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v), strict=True):  # fmt: skip
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)  # k/v sum over every query


def test_blocked_attention_keeps_less_than_the_dense_scores():
    q, k, v = _inputs(2, 4, 2)
    mask = _causal_left_padded([0, 300])

    def temp_bytes(blocked: bool) -> int:
        attention = lambda q: layers.dot_product_attention(q, k, v, mask if blocked else mask(jnp.arange(T)), 0.35)
        grad = jax.jit(jax.grad(lambda q: jnp.sum(attention(q))))
        return grad.lower(q).compile().memory_analysis().temp_size_in_bytes

    dense_scores = 2 * 4 * T * T * 4  # float32 [B, H, T, T]
    assert temp_bytes(True) < dense_scores < temp_bytes(False)
