"""Transformer building blocks shared by every model family.

Each parameter is an ``nnx.Param`` carrying ``logical_axes`` metadata (one name per dimension); `sharding.py`
turns those names into mesh shardings, so no module here knows about devices. Numerics follow the Hugging Face
reference implementations: RMSNorm and softmax run in float32 and cast back, rotary tables are computed in
float32, and masked attention uses the dtype's most negative finite value (not -inf) so that fully masked query
rows (left padding) stay finite, exactly as HF's eager attention does.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from staged_vlm_jax.models.sharding import constrain

LogicalAxes = tuple[str | None, ...]

# KV cache [L, B, Hkv, S, D]: every layer's keys (or values) in one array, the layer axis first so the scan over
# layers slices it; heads before slots (the layout the attention contraction reads, so a decode step does not
# transpose the cache); batch over data x fsdp, kv heads over tensor.
CACHE_AXES: LogicalAxes = ("layers", "batch", "kv_heads", None, None)

# The logical name of the leading axis of stacked (scanned) layer parameters.
LAYERS_AXIS = "layers"

# Rematerialisation of each scanned layer in the backward pass (`scan_layers`): what the forward keeps.
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # keep every intermediate: fastest, most memory
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs, recompute the rest
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input: least memory, one more forward
}

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def activation(name: str):
    """Looks up an activation by its Hugging Face ``hidden_act`` name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def param(rngs: nnx.Rngs | None, shape: Sequence[int], dtype, axes: LogicalAxes, init: str = "normal") -> nnx.Param:
    """A parameter with logical axis names; ``init`` is "normal" (std 0.02, HF's default), "zeros" or "ones"."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {tuple(shape)}")
    if init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif init == "zeros":
        value = jnp.zeros(shape, jnp.float32)
    elif init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


class Linear(nnx.Module):
    """y = x @ kernel + bias with ``kernel`` laid out [in, *out] (HF stores the transpose, [out, in])."""

    def __init__(
        self,
        in_features: int,
        out_shape: int | Sequence[int],
        *,
        axes: LogicalAxes,
        use_bias: bool,
        dtype,
        rngs: nnx.Rngs,
    ):
        out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        self.kernel = param(rngs, (in_features, *out_shape), dtype, axes)
        self.bias = param(rngs, out_shape, dtype, axes[1:], init="zeros") if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.tensordot(x, self.kernel[...], axes=1)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, normalised in float32 and cast back before the scale (as HF does)."""

    def __init__(self, dim: int, *, eps: float, dtype, axes: LogicalAxes = ("norm",)):
        self.weight = param(None, (dim,), dtype, axes, init="ones")
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch's ``nn.LayerNorm``: (x - mean) / sqrt(var + eps) * weight + bias, all in float32 and cast back."""

    def __init__(self, dim: int, *, eps: float, dtype, axes: LogicalAxes = ("norm",)):
        self.weight = param(None, (dim,), dtype, axes, init="ones")
        self.bias = param(None, (dim,), dtype, axes, init="zeros")
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        x32 = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + self.eps)
        return (x32 * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class MLP(nnx.Module):
    """fc2(act(fc1(x))); ``axes`` names the input, hidden and output dimensions."""

    def __init__(
        self, dim: int, hidden: int, out: int, *, act: str, use_bias: bool, axes: tuple[str, str, str], dtype, rngs
    ):
        in_axis, hidden_axis, out_axis = axes
        self.fc1 = Linear(dim, hidden, axes=(in_axis, hidden_axis), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.fc2 = Linear(hidden, out, axes=(hidden_axis, out_axis), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(activation(self.act)(self.fc1(x)))


class GatedMLP(nnx.Module):
    """SwiGLU-style MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, *, act: str, use_bias: bool, axes: tuple[str, str], dtype, rngs):
        embed, mlp = axes
        self.gate_proj = Linear(dim, hidden, axes=(embed, mlp), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.up_proj = Linear(dim, hidden, axes=(embed, mlp), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.down_proj = Linear(hidden, dim, axes=(mlp, embed), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(activation(self.act)(self.gate_proj(x)) * self.up_proj(x))


class Embed(nnx.Module):
    """Embedding table [vocab, embed] (tokens by default; ``axes`` for other tables); ``attend`` gives tied-embedding
    logits."""

    def __init__(self, vocab: int, dim: int, *, dtype, rngs, axes: LogicalAxes = ("vocab", "embed")):
        self.weight = param(rngs, (vocab, dim), dtype, axes)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.weight[...], ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        return x @ self.weight[...].T


# ----------------------------------------------------------------------------------------------------------------
# Rotary embeddings


def rotary_inv_freq(dim: int, theta: float) -> jax.Array:
    """inv_freq[i] = theta^(-2i/dim) for i < dim/2, in float32."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin; ``cos``/``sin`` broadcast over the heads axis (second to last)."""
    return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def mrope_cos_sin(
    positions: jax.Array, inv_freq: jax.Array, mrope_section: Sequence[int], dtype, interleaved: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Multimodal rotary tables (Qwen2-VL M-RoPE, or Qwen3-VL's interleaved M-RoPE).

    ``positions`` is [3, B, T] (temporal, height, width). Frequency band j of the half head-dim takes its angle from
    one position axis; the half is then duplicated, as in HF's ``recomposition_frequencies``. Contiguous (Qwen2-VL):
    the bands are cut into runs by ``mrope_section`` and run i reads axis i % 3. Interleaved (Qwen3-VL): band j reads
    axis j % 3 (T, H, W, T, H, W, ...) while j < 3 · mrope_section[j % 3], and T beyond, so every axis spans low to
    high frequencies. A single section (every band reads axis 0; ``positions`` may then be [1, B, T]) is plain 1-D
    RoPE, InternVL's. Returns cos, sin of shape [B, T, head_dim] in ``dtype``.
    """
    if sum(mrope_section) != inv_freq.shape[0]:
        raise ValueError(f"mrope_section {list(mrope_section)} must sum to head_dim/2 = {inv_freq.shape[0]}")
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, D/2]
    if interleaved:
        band = np.arange(inv_freq.shape[0])
        axis_of_band = np.where(band < 3 * np.asarray(mrope_section)[band % 3], band % 3, 0)
    else:
        axis_of_band = np.concatenate([np.full((n,), i % 3) for i, n in enumerate(mrope_section)])
    freqs = jnp.take_along_axis(freqs, axis_of_band[None, None, None, :], axis=0)[0]  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Attention


# Queries per block of `dot_product_attention` when its mask is given as a function: the [B, H, block, Tk] scores of
# one block are the most that exists at once (and, rematerialised, in the backward pass too).
QUERY_BLOCK = 512

Mask = jax.Array | Callable[[jax.Array], jax.Array]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask, scale: float) -> jax.Array:
    """Grouped-query attention with a boolean mask, in blocks of queries for long sequences.

    q [B, Tq, H, D], k/v [B, Hkv, Tk, D] (the KV-cache layout) with H a multiple of Hkv (query head h reads kv
    head h // (H/Hkv), as HF's ``repeat_kv``). ``mask`` is [B, Tq, Tk] (True = attend), or a function of query
    indices [q] giving their rows of it, [B, q, Tk]: then queries beyond `QUERY_BLOCK` are attended a block at a
    time (``lax.map``, each block rematerialised in the backward pass), so neither the [Tq, Tk] scores nor the
    mask ever exist whole: memory linear in Tq for a given Tk, the numbers those of one dense pass. Softmax runs
    in float32. One place for the attention kernel, so a fused implementation (cuDNN, splash) can replace it
    without touching the models.

    The G = H/Hkv query heads of a KV head are stacked along the query axis ([B, Hkv, G·Tq, D]), so both
    contractions are plain batched matmuls over (B, Hkv). Keeping G as a dimension of its own made XLA:CPU
    rearrange the operands around a two-free-dimension dot: 4× slower for a decode step, 1.4× for a training
    forward and backward.
    """
    tq = q.shape[1]
    if not callable(mask):
        return _attend(q, k, v, mask, scale)
    if tq <= QUERY_BLOCK:
        return _attend(q, k, v, mask(jnp.arange(tq)), scale)
    blocks = -(-tq // QUERY_BLOCK)
    padded = jnp.pad(q, ((0, 0), (0, blocks * QUERY_BLOCK - tq), (0, 0), (0, 0)))
    q_blocks = jnp.moveaxis(padded.reshape(q.shape[0], blocks, QUERY_BLOCK, *q.shape[2:]), 1, 0)
    rows = jnp.minimum(jnp.arange(blocks * QUERY_BLOCK).reshape(blocks, QUERY_BLOCK), tq - 1)  # padding: any row

    @jax.checkpoint
    def block(args):
        q_block, block_rows = args
        return _attend(q_block, k, v, mask(block_rows), scale)

    out = jax.lax.map(block, (q_blocks, rows))
    return jnp.moveaxis(out, 0, 1).reshape(q.shape[0], blocks * QUERY_BLOCK, *q.shape[2:])[:, :tq]


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """`dot_product_attention` of all queries at once, with the mask as an array."""
    b, tq, h, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = h // hkv
    q = q.reshape(b, tq, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * tq, d)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale
    mask = jnp.broadcast_to(mask[:, None, None], (b, 1, g, tq, tk)).reshape(b, 1, g * tq, tk)
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
    return out.reshape(b, hkv, g, tq, d).transpose(0, 3, 1, 2, 4).reshape(b, tq, h, d)


# ----------------------------------------------------------------------------------------------------------------
# Stacked layers


def stack_layers(make: Callable[[], nnx.Module], count: int) -> nnx.Module:
    """One module whose every parameter holds ``count`` layers' values along a new leading ``"layers"`` axis.

    ``make`` builds one layer; it is called ``count`` times in order, so the random init is the one a Python list
    of layers would get. `scan_layers` runs the stack; `hf_io` reads and writes it as the per-layer tensors.
    """
    built = [make() for _ in range(count)]
    graphdef, first = nnx.split(built[0])
    states = [first, *(nnx.split(layer)[1] for layer in built[1:])]
    stacked = jax.tree.map(lambda *values: jnp.stack(values), *states)
    module = nnx.merge(graphdef, stacked)
    for _, variable in nnx.iter_graph(module):
        if isinstance(variable, nnx.Variable):
            variable.set_metadata("logical_axes", (LAYERS_AXIS, *variable.get_metadata()["logical_axes"]))
    return module


def layer_range(layers: nnx.Module, start: int, stop: int) -> nnx.Module:
    """Layers [start, stop) of a stack (`stack_layers`) as a stack of their own, for `scan_layers` to run part of
    it (e.g. up to a layer whose output is needed besides the last)."""
    graphdef, state = nnx.split(layers)
    return nnx.merge(graphdef, jax.tree.map(lambda value: value[start:stop], state))


_ACTIVE_REMAT: contextvars.ContextVar[str] = contextvars.ContextVar("remat", default="none")


@contextlib.contextmanager
def remat(policy: str):
    """The `REMAT_POLICIES` entry `scan_layers` applies while tracing inside this context.

    Rematerialisation is a training choice (``learner.remat``), not part of the architecture: the learner traces
    its step under it and the same model runs unchanged elsewhere (outside a gradient it changes nothing).
    """
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; choose one of {sorted(REMAT_POLICIES)}")
    token = _ACTIVE_REMAT.set(policy)
    try:
        yield policy
    finally:
        _ACTIVE_REMAT.reset(token)


def scan_layers(layers: nnx.Module, body: Callable, carry, xs):
    """``jax.lax.scan`` of ``body(carry, (layer, x)) -> (carry, y)`` over the stacked ``layers`` (and ``xs``).

    One traced layer whatever the depth, so compile time does not grow with it. Each layer is rematerialised by
    the active `remat` policy.
    """
    graphdef, state = nnx.split(layers)

    def step(carry, scanned):
        layer_state, x = scanned
        return body(carry, (nnx.merge(graphdef, layer_state), x))

    policy = REMAT_POLICIES[_ACTIVE_REMAT.get()]
    if policy is not None:
        step = jax.checkpoint(step, policy=policy, prevent_cse=False)
    return jax.lax.scan(step, carry, (state, xs))


@flax.struct.dataclass
class KVCache:
    """Fixed-size key/value cache for incremental decoding.

    keys/values: all layers' [L, B, Hkv, S, D]; ``key_mask`` [B, S] marks slots holding real (non-pad) tokens;
    ``length`` is the number of slots written (shared by the batch: prompts are left-padded to one length);
    ``next_position`` [B] is the rotary position of each row's next token (M-RoPE positions run ahead of the slot
    index after an image, HF's ``rope_deltas``).
    """

    keys: jax.Array
    values: jax.Array
    key_mask: jax.Array
    length: jax.Array
    next_position: jax.Array

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times in place (row i -> rows i·n … i·n + n − 1), e.g. for a group of n samples."""
        return self.replace(
            keys=jnp.repeat(self.keys, n, axis=1),
            values=jnp.repeat(self.values, n, axis=1),
            key_mask=jnp.repeat(self.key_mask, n, axis=0),
            next_position=jnp.repeat(self.next_position, n, axis=0),
        )


class Attention(nnx.Module):
    """Causal self-attention with GQA, optional q/k/v bias, optional q/k RMSNorm per head and rotary embeddings;
    optionally reads/writes a KV cache.

    ``head_dim`` defaults to dim / num_heads (Qwen2); Qwen3 sets it on its own. ``qk_norm_eps``: when given, queries
    and keys are RMS-normalised over each head's dimension before the rotary embedding (Qwen3's ``q_norm`` /
    ``k_norm``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int,
        *,
        qkv_bias: bool,
        dtype,
        rngs,
        head_dim: int | None = None,
        qk_norm_eps: float | None = None,
    ):
        if (head_dim is None and dim % num_heads) or num_heads % num_kv_heads:
            raise ValueError(f"hidden {dim} / heads {num_heads} / kv heads {num_kv_heads} are not compatible")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim or dim // num_heads
        hd = self.head_dim
        norm = lambda: None if qk_norm_eps is None else RMSNorm(hd, eps=qk_norm_eps, dtype=dtype)
        self.q_norm, self.k_norm = norm(), norm()
        self.q_proj = Linear(dim, num_heads * hd, axes=("embed", "heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Linear(
            dim, num_kv_heads * hd, axes=("embed", "kv_heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs
        )
        self.v_proj = Linear(
            dim, num_kv_heads * hd, axes=("embed", "kv_heads"), use_bias=qkv_bias, dtype=dtype, rngs=rngs
        )
        self.o_proj = Linear(num_heads * hd, dim, axes=("heads", "embed"), use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        key_mask: jax.Array,
        cache_kv: tuple[jax.Array, jax.Array, jax.Array] | None = None,
        start: jax.Array | int = 0,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [B, T, E]; key_mask [B, S]. Without a cache S = T. With ``cache_kv`` = (keys, values, layer), the new
        keys/values are written at slots [start, start + T) and the queries attend to every written slot up to
        their own (causal by slot): ``layer`` indexes every layer's [L, B, Hkv, S, D] cache, written in place;
        ``layer`` None means keys/values are this layer's own [B, Hkv, S, D]. Returns the output and the updated
        cache (None without one)."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Hkv, T, D]
        cache = None
        if cache_kv is not None:
            keys, values, layer = cache_kv
            # Only the T new slots are written (the rest of the cache is untouched), then this layer is read back.
            if layer is None:
                at, new_k, new_v, axes = (0, 0, start, 0), k, v, CACHE_AXES[1:]
            else:
                at, new_k, new_v, axes = (layer, 0, 0, start, 0), k[None], v[None], CACHE_AXES
            keys = constrain(jax.lax.dynamic_update_slice(keys, new_k.astype(keys.dtype), at), axes)
            values = constrain(jax.lax.dynamic_update_slice(values, new_v.astype(values.dtype), at), axes)
            k, v = (keys, values) if layer is None else (keys[layer], values[layer])
            cache = (keys, values)
        key_slots, valid = jnp.arange(k.shape[2]), key_mask.astype(bool)

        def mask(queries: jax.Array) -> jax.Array:  # causal by slot, padding keys masked; [B, q, S]
            return (key_slots[None, :] <= (start + queries)[:, None])[None] & valid[:, None, :]

        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, self.head_dim**-0.5)
        return self.o_proj(out.reshape(b, t, -1)), cache
