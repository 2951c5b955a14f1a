"""Precise optimizer updates for low-precision (bf16) parameters.

Why this exists: the paper's recipe trains 7B models with bf16 weights at AdamW lr 1e-6. Adam's step is ≈ lr per
weight, while half a bf16 ulp of a weight of magnitude 0.02 is ≈ 6e-5, so an optimizer applied directly to bf16
parameters rounds ~98 % of its updates away and the weights barely move. Two standard remedies, each an optax
wrapper around the unchanged inner optimizer (clipping + AdamW):

* ``kahan`` — Kahan-compensated summation, the remedy of EasyR1's ``adamw_bf16`` strategy (its
  ``AnyPrecisionAdamW``, from llama-cookbook, ``use_kahan_summation=True``): a per-parameter compensation buffer ``c``
  in the parameter's dtype carries the part of each update that the rounding of the weight dropped, and adds it
  back at the next step. With the inner update ``u`` (fp32), ``y = u + c``; the new weight is ``p + y`` rounded to
  bf16 and ``c' = y − (new_p − p)`` (``new_p − p`` is exact in fp32). ``p + c`` tracks the fp32 trajectory up to the
  bf16 storage of ``c`` (relative 2⁻⁹ of a quantity below half an ulp of ``p``); the bf16 weight itself is that value
  rounded. Differences from EasyR1: the moments are fp32 here (EasyR1 keeps them in bf16), ``y`` is not rounded
  before it is added (one bf16 rounding of ``c`` per step instead of two), and the decoupled weight decay goes
  through the compensation too (EasyR1 multiplies the bf16 weight by ``1 − lr·wd`` directly, which rounds away).
* ``fp32_master`` — fp32 master weights in the optimizer state; the inner optimizer updates the master and the bf16
  weight is the rounded master (the classic mixed-precision recipe; torchao's low-bit AdamW instead computes in fp32
  from the bf16 weight and rounds stochastically, ``bf16_stochastic_round``, which needs no state but is noisy).

Both hand the inner optimizer fp32 gradients and fp32 parameters, so its moments (mu, nu) are fp32 whatever the
parameter dtype. Both return updates such that ``optax.apply_updates(params, updates)`` — ``(p + u).astype(p.dtype)``
— is exactly the intended new bf16 weight: the update is ``new_p − p`` in fp32 with ``new_p`` rounded behind an
optimization barrier (XLA:GPU elides a ``f32 → bf16 → f32`` convert pair under its default
``xla_allow_excess_precision``, which would silently turn the compensation off), so ``p + u`` is representable and
the cast is exact.

Only low-precision floating leaves get a buffer (others hold ``optax.MaskedNode``); when ``params`` has no
low-precision leaf at all, both wrappers *are* the inner optimizer: same state pytree, same numbers.
Memory per bf16 parameter (weight + optimizer state): plain 2 + 2 + 2 = 6 bytes (moments follow the params' dtype),
kahan 2 + 4 + 4 + 2 = 12, fp32_master 2 + 4 + 4 + 4 = 14 (fp32 params with any choice: 4 + 4 + 4 = 12).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class KahanState(NamedTuple):
    """inner: the inner optimizer's state (over fp32 parameters); compensation: per low-precision leaf, the part of
    the updates not yet in the weight, in the weight's dtype (``optax.MaskedNode`` for other leaves)."""

    inner: optax.OptState
    compensation: optax.Updates


class MasterWeightsState(NamedTuple):
    """inner: the inner optimizer's state (over the fp32 master weights); master: per low-precision leaf, its fp32
    master copy (``optax.MaskedNode`` for other leaves, which are their own master)."""

    inner: optax.OptState
    master: optax.Params


def _low_precision(x) -> bool:
    dtype = jnp.result_type(x)
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def _to_f32(tree):
    """Low-precision floating leaves cast to fp32, other leaves unchanged."""
    return jax.tree.map(lambda x: x.astype(jnp.float32) if _low_precision(x) else x, tree)


def round_to_dtype(x32: jax.Array, dtype) -> jax.Array:
    """``x32`` cast to ``dtype`` and back to fp32, a value ``dtype`` represents exactly. XLA:GPU folds a
    ``f32 → bf16 → f32`` convert pair into nothing under its default ``xla_allow_excess_precision``; the optimization
    barrier blocks that, and ``reduce_precision`` (bitwise the bf16 cast; JAX's own blocker of such folding) keeps the
    result representable in bf16 even where a backend expands the barrier before folding conversions."""
    info = jnp.finfo(dtype)
    rounded = jax.lax.reduce_precision(x32, exponent_bits=info.nexp, mantissa_bits=info.nmant)
    return jax.lax.optimization_barrier(rounded.astype(dtype)).astype(jnp.float32)


def _has_low_precision(params) -> bool:
    return any(map(_low_precision, jax.tree.leaves(params)))


def _masked_like(params, make: Callable[[jax.Array], jax.Array]):
    """``make(leaf)`` for low-precision leaves, ``optax.MaskedNode()`` for the others, in ``params``' structure."""
    leaves, treedef = jax.tree.flatten(params)
    return treedef.unflatten([make(p) if _low_precision(p) else optax.MaskedNode() for p in leaves])


def _require(params, name: str):
    if params is None:
        raise ValueError(f"{name} needs the parameters: call update(grads, state, params)")


def plain(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """The inner optimizer applied as is (bf16 parameters: bf16 moments, updates below half an ulp are lost)."""
    return inner


def kahan_summation(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Kahan-compensated application of ``inner``'s updates to low-precision parameters (see the module docstring)."""
    inner = optax.with_extra_args_support(inner)

    def init(params):
        if not _has_low_precision(params):
            return inner.init(params)
        return KahanState(inner.init(_to_f32(params)), _masked_like(params, jnp.zeros_like))

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, KahanState):
            return inner.update(updates, state, params, **extra_args)
        _require(params, "kahan_summation")
        steps, inner_state = inner.update(_to_f32(updates), state.inner, _to_f32(params), **extra_args)
        leaves, treedef = jax.tree.flatten(params)
        out_steps, out_compensation = [], []
        for p, u, c in zip(leaves, treedef.flatten_up_to(steps), treedef.flatten_up_to(state.compensation),
                           strict=True):  # fmt: skip
            if isinstance(c, optax.MaskedNode):
                out_steps.append(u)
                out_compensation.append(c)
                continue
            p32 = p.astype(jnp.float32)
            y = u.astype(jnp.float32) + c.astype(jnp.float32)
            step = round_to_dtype(p32 + y, p.dtype) - p32  # exact: both terms are representable in p.dtype
            out_steps.append(step)
            out_compensation.append((y - step).astype(c.dtype))
        return treedef.unflatten(out_steps), KahanState(inner_state, treedef.unflatten(out_compensation))

    return optax.GradientTransformationExtraArgs(init, update)


def fp32_master_weights(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner`` run on fp32 master copies of the low-precision parameters; those parameters become the rounded
    masters (see the module docstring)."""
    inner = optax.with_extra_args_support(inner)

    def masters(params, master):
        leaves, treedef = jax.tree.flatten(params)
        return treedef.unflatten([p if isinstance(m, optax.MaskedNode) else m
                                  for p, m in zip(leaves, treedef.flatten_up_to(master), strict=True)])  # fmt: skip

    def init(params):
        if not _has_low_precision(params):
            return inner.init(params)
        master = _masked_like(params, lambda p: p.astype(jnp.float32))
        return MasterWeightsState(inner.init(masters(params, master)), master)

    def update(updates, state, params=None, **extra_args):
        if not isinstance(state, MasterWeightsState):
            return inner.update(updates, state, params, **extra_args)
        _require(params, "fp32_master_weights")
        steps, inner_state = inner.update(_to_f32(updates), state.inner, masters(params, state.master), **extra_args)
        leaves, treedef = jax.tree.flatten(params)
        out_steps, out_master = [], []
        for p, u, m in zip(leaves, treedef.flatten_up_to(steps), treedef.flatten_up_to(state.master), strict=True):
            if isinstance(m, optax.MaskedNode):
                out_steps.append(u)
                out_master.append(m)
                continue
            new_master = m + u.astype(jnp.float32)
            out_steps.append(round_to_dtype(new_master, p.dtype) - p.astype(jnp.float32))
            out_master.append(new_master)
        return treedef.unflatten(out_steps), MasterWeightsState(inner_state, treedef.unflatten(out_master))

    return optax.GradientTransformationExtraArgs(init, update)


# learner.optimizer_precision -> wrapper of the inner optimizer (clipping + AdamW).
OPTIMIZER_PRECISIONS: dict[str, Callable[[optax.GradientTransformation], optax.GradientTransformation]] = {
    "plain": plain,
    "kahan": kahan_summation,
    "fp32_master": fp32_master_weights,
}
