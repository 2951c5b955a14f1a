"""Rollout engine: jitted group sampling from a VLM with a KV cache and fixed-shape buckets.

The sampler runs the very modules the learner trains (`model.prefill` / `model.decode`), so image tokens and
image features cannot drift apart between rollout and training. Per call:

1. prompts are left-padded (as HF does) to a prompt-length bucket, the batch to a batch bucket and the image
   patches to a patch bucket, so a stream of batches compiles once per bucket combination;
2. the vision tower and the prompt prefill run **once per prompt**; the KV cache is then repeated to the ``n``
   samples of each group (groups of ``n`` contiguous rows);
3. a ``lax.while_loop`` decodes one token per step and stops as soon as every row has emitted an EOS token.

A batch whose KV cache would exceed the memory bound is sampled in chunks of prompts (the largest batch bucket
that fits, one compiled program for all chunks) instead of being refused; ``last_chunks`` says how many.

`RolloutEngine.start` runs the same prefill and loop as two programs, the loop a segment of steps per call
(`DecodeStream`), for the server: it streams tokens as they come and ends rows early (stop strings, cancelled
requests). Rows of the batch bucket that hold no prompt are done from the start, so they never keep the loop going.

Log-probs are those of the tempered, untruncated distribution, ``log_softmax(logits / temperature)``, which is
what the learner recomputes for the same tokens; top-k / top-p and the ban on vision special tokens only shape
which token is drawn. Response masks include the EOS token (EasyR1/verl convention: EOS is trained).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from staged_vlm_jax.data.batch import SLOT_BUCKETS, PromptBatch, bucket, model_inputs, pad_axis, to_per_row
from staged_vlm_jax.models.layers import KVCache
from staged_vlm_jax.models.sharding import (
    DEFAULT_RULES,
    MeshAxes,
    abstract,
    axis_rules,
    batch_sharding,
    batch_shards,
    constrain,
    place,
    state_shardings,
    to_host,
)


class CacheTooLargeError(ValueError):
    """The requested rollout batch does not fit the configured KV-cache memory."""


@flax.struct.dataclass
class RolloutOutput:
    """Sampled completions, rows grouped by prompt (``n`` contiguous rows per prompt).

    tokens [B·n, max_new_tokens] (``pad_token_id`` after EOS); log_probs [B·n, max_new_tokens] (0 where masked);
    mask [B·n, max_new_tokens] (1 for response tokens, EOS included); lengths [B·n].
    """

    tokens: jax.Array
    log_probs: jax.Array
    mask: jax.Array
    lengths: jax.Array


@flax.struct.dataclass
class DecodeState:
    """The decode loop's carry: tokens drawn so far (``step`` of them per row), which rows are done, the logits of
    the next position, the KV cache and the key. Lives on the device between the segments of a `DecodeStream`."""

    step: jax.Array
    done: jax.Array
    tokens: jax.Array
    log_probs: jax.Array
    mask: jax.Array
    logits: jax.Array
    cache: KVCache
    rng: jax.Array

    def output(self) -> RolloutOutput:
        mask = self.mask.astype(jnp.int32)
        return RolloutOutput(tokens=self.tokens, log_probs=self.log_probs, mask=mask, lengths=mask.sum(axis=1))


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Shape buckets and memory bound.

    Each size is rounded up to the smallest bucket that holds it (sizes beyond the last bucket are rounded up to
    a multiple of it). ``max_cache_bytes`` bounds the per-device KV cache; None uses the device's reported memory
    limit where it has one (GPU/TPU) and no bound on CPU.
    """

    prompt_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    new_token_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    patch_buckets: tuple[int, ...] = (64, 256, 1024, 4096, 16384)  # per row
    max_cache_bytes: int | None = None
    cache_memory_fraction: float = 0.5


def _top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keeps the smallest set of highest logits whose probability reaches ``top_p`` (always the top one)."""
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass strictly above each token
    kept = jnp.sum(before < top_p, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def sample_categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits) [B, V] by two-level inverse transform sampling.

    ``jax.random.categorical`` (Gumbel-max) needs V random numbers and two logarithms per row and step, which on CPU
    costs more than a small model's whole decode step; this draws two uniforms per row. The vocabulary is cut into
    ~√V blocks: a block is drawn by inverting the CDF of the block masses, then a token within it, so each cumulative
    sum is short and float32 rounding cannot swallow the mass of the tail. Tokens of probability zero (−inf logits)
    are never drawn: u ∈ (0, 1] and a token is chosen only where the CDF strictly rises.
    """
    rows, vocab = logits.shape
    block = max(1, math.isqrt(vocab))
    blocks = -(-vocab // block)
    padded = jnp.pad(logits.astype(jnp.float32), ((0, 0), (0, blocks * block - vocab)), constant_values=-jnp.inf)
    probs = jax.nn.softmax(padded, axis=-1).reshape(rows, blocks, block)
    u = 1.0 - jax.random.uniform(key, (2, rows, 1))  # (0, 1]

    def invert(weights, u):  # the first index whose cumulative weight reaches u · total
        cdf = jnp.cumsum(weights, axis=-1)
        return jnp.sum(cdf < u * cdf[:, -1:], axis=-1)

    chosen_block = invert(probs.sum(axis=-1), u[0])
    within = jnp.take_along_axis(probs, chosen_block[:, None, None], axis=1)[:, 0]
    return chosen_block * block + invert(within, u[1])


def choose_tokens(
    logits: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    top_k: int,
    greedy: bool,
    banned: tuple[int, ...],
) -> tuple[jax.Array, jax.Array]:
    """One token per row and its log-prob under ``log_softmax(logits / temperature)``.

    ``banned`` ids are never drawn; top-k (0 = off) and top-p (1 = off) truncate the sampling distribution.
    """
    scaled = logits.astype(jnp.float32) / temperature
    log_probs = jax.nn.log_softmax(scaled, axis=-1)
    allowed = scaled.at[:, jnp.asarray(banned, jnp.int32)].set(-jnp.inf) if banned else scaled
    if greedy:
        token = jnp.argmax(allowed, axis=-1)
    else:
        if top_k > 0:
            kth = jax.lax.top_k(allowed, top_k)[0][:, -1:]
            allowed = jnp.where(allowed < kth, -jnp.inf, allowed)
        allowed = jax.lax.cond(top_p < 1.0, _top_p_filter, lambda x, _: x, allowed, top_p)
        token = sample_categorical(key, allowed)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]


class RolloutEngine:
    """Holds the bucket/memory configuration, the mesh, and the compiled sampling programs.

    ``num_compilations`` counts traces of the sampling program (one per bucket combination and static option
    set); ``last_trace`` records the shapes the most recent trace saw (prefill batch vs decode batch);
    ``last_chunks`` how many programs the last `generate` ran to fit its KV cache.
    """

    def __init__(
        self,
        config: EngineConfig = EngineConfig(),
        mesh: Mesh | None = None,
        rules: Mapping[str, MeshAxes] = DEFAULT_RULES,
    ):
        self.config, self.mesh, self.rules = config, mesh, rules
        self.num_compilations = 0
        self.last_trace: dict[str, int] = {}
        self.last_chunks = 0
        self._program = jax.jit(
            self._sample,
            static_argnames=("graphdef", "n", "length", "cache_size", "top_k", "greedy", "eos", "pad", "banned"),
        )
        # `start` / `DecodeStream`: the same prefill and loop as two programs, so the host sees tokens in between.
        self._start_program = jax.jit(self._start, static_argnames=("graphdef", "n", "length", "cache_size", "pad"))
        self._advance_program = jax.jit(
            self._advance,
            donate_argnames=("carry",),
            static_argnames=("graphdef", "top_k", "greedy", "eos", "pad", "banned"),
        )

    # -- the compiled program -------------------------------------------------------------------------------------

    def _begin(self, model, input_ids, attention_mask, pixel_values, image_grid_thw, rng, *, n, length, cache_size,
               pad) -> DecodeState:  # fmt: skip
        """The vision tower and prefill, once per prompt, then the cache repeated to the ``n`` rows of each group."""
        self.num_compilations += 1  # runs at trace time only
        batch = input_ids.shape[0]
        self.last_trace = {"prefill_batch": batch, "decode_batch": batch * n, "cache_size": cache_size}
        logits, cache = model.prefill(input_ids, attention_mask, pixel_values, image_grid_thw, cache_size=cache_size)
        logits, cache = jnp.repeat(logits, n, axis=0), cache.repeat(n)
        rows = batch * n
        return DecodeState(
            step=jnp.asarray(0, jnp.int32),
            done=jnp.repeat(~jnp.any(attention_mask > 0, axis=1), n),  # padding rows of the batch bucket: no prompt
            tokens=jnp.full((rows, length), pad, jnp.int32),
            log_probs=jnp.zeros((rows, length), jnp.float32),
            mask=jnp.zeros((rows, length), bool),
            logits=constrain(logits, ("batch", "vocab")),
            cache=cache,
            rng=rng,
        )

    @staticmethod
    def _decode_until(model, carry: DecodeState, limit, temperature, top_p, *, top_k, greedy, eos, pad,
                      banned) -> DecodeState:  # fmt: skip
        """Decodes one token per step until step ``limit`` or until every row has emitted an EOS token."""
        eos_ids = jnp.asarray(eos, jnp.int32)

        def cond(carry: DecodeState):
            return (carry.step < limit) & ~jnp.all(carry.done)

        def body(carry: DecodeState):
            rng, key = jax.random.split(carry.rng)
            token, log_prob = choose_tokens(carry.logits, key, temperature, top_p, top_k=top_k, greedy=greedy,
                                            banned=banned)  # fmt: skip
            done, step = carry.done, carry.step
            token = jnp.where(done, pad, token)
            logits, cache = model.decode(token[:, None], carry.cache)
            return DecodeState(
                step=step + 1,
                done=done | jnp.isin(token, eos_ids),
                tokens=carry.tokens.at[:, step].set(token),
                log_probs=carry.log_probs.at[:, step].set(jnp.where(done, 0.0, log_prob)),
                mask=carry.mask.at[:, step].set(~done),
                logits=logits[:, -1],
                cache=cache,
                rng=rng,
            )

        return jax.lax.while_loop(cond, body, carry)

    def _sample(self, state, input_ids, attention_mask, pixel_values, image_grid_thw, rng, max_new_tokens,
                temperature, top_p, *, graphdef, n, length, cache_size, top_k, greedy, eos, pad,
                banned) -> RolloutOutput:  # fmt: skip
        """The whole sampling call as one program (what training and evaluation run)."""
        model = nnx.merge(graphdef, state)
        carry = self._begin(model, input_ids, attention_mask, pixel_values, image_grid_thw, rng, n=n, length=length,
                            cache_size=cache_size, pad=pad)  # fmt: skip
        carry = self._decode_until(model, carry, max_new_tokens, temperature, top_p, top_k=top_k, greedy=greedy,
                                   eos=eos, pad=pad, banned=banned)  # fmt: skip
        return carry.output()

    def _start(self, state, input_ids, attention_mask, pixel_values, image_grid_thw, rng, *, graphdef, n, length,
               cache_size, pad) -> DecodeState:  # fmt: skip
        return self._begin(nnx.merge(graphdef, state), input_ids, attention_mask, pixel_values, image_grid_thw, rng,
                           n=n, length=length, cache_size=cache_size, pad=pad)  # fmt: skip

    def _advance(self, state, carry: DecodeState, finished, limit, temperature, top_p, *, graphdef, top_k, greedy,
                 eos, pad, banned) -> DecodeState:  # fmt: skip
        carry = carry.replace(done=carry.done | finished)
        return self._decode_until(nnx.merge(graphdef, state), carry, limit, temperature, top_p, top_k=top_k,
                                  greedy=greedy, eos=eos, pad=pad, banned=banned)  # fmt: skip

    # -- host side --------------------------------------------------------------------------------------------------

    def _buckets(self, prompts: int, prompt_length: int, max_new_tokens: int) -> tuple[int, int, int]:
        """(batch, prompt-length, new-token) buckets of a call."""
        cfg = self.config
        return (bucket(prompts, cfg.batch_buckets, batch_shards(self.mesh, self.rules)),
                bucket(prompt_length, cfg.prompt_buckets), bucket(max_new_tokens, cfg.new_token_buckets))  # fmt: skip

    def cache_bytes(self, model, rows: int, cache_size: int) -> int:
        """Per-device bytes of the KV cache of ``rows`` sampled rows with ``cache_size`` slots."""
        text = model.cfg.text
        per_device_rows = rows / batch_shards(self.mesh, self.rules)
        per_row_slot = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim
        return int(per_device_rows * cache_size * per_row_slot) * jnp.dtype(model.dtype).itemsize

    def cache_limit(self) -> int | None:
        """The per-device KV-cache bound: ``max_cache_bytes``, else a fraction of the device's reported memory
        limit (GPU/TPU), else none (CPU)."""
        if self.config.max_cache_bytes is not None:
            return self.config.max_cache_bytes
        stats = jax.local_devices()[0].memory_stats() or {}  # this process's device: all are alike
        return int(stats["bytes_limit"] * self.config.cache_memory_fraction) if "bytes_limit" in stats else None

    def prompts_per_call(
        self, model, prompts: int, prompt_length: int, max_new_tokens: int, n: int, limit: int | None = None
    ) -> int:
        """How many of ``prompts`` one sampling program takes: all, or when their KV cache is over ``limit``
        (default `cache_limit`), the largest batch bucket whose cache fits; raises `CacheTooLargeError` if none
        does."""
        rows, prompt_bucket, length = self._buckets(prompts, prompt_length, max_new_tokens)
        limit = self.cache_limit() if limit is None else limit
        fits = lambda batch: limit is None or self.cache_bytes(model, batch * n, prompt_bucket + length) <= limit
        if fits(rows):
            return prompts
        shards = batch_shards(self.mesh, self.rules)
        fitting = [b for b in self.config.batch_buckets if b % shards == 0 and b < prompts and fits(b)]
        if not fitting:
            smallest = bucket(1, self.config.batch_buckets, shards)
            raise CacheTooLargeError(
                f"rollout KV cache needs {self.cache_bytes(model, smallest * n, prompt_bucket + length) / 2**30:.2f} "
                f"GiB per device even for {smallest} prompts × n {n} × {prompt_bucket + length} slots (prompt + "
                f"new-token buckets), over the limit of {limit / 2**30:.2f} GiB (engine.max_cache_bytes); use a "
                "smaller n or max_new_tokens, or more data/fsdp devices"
            )
        return max(fitting)

    def generate(
        self,
        model: nnx.Module,
        input_ids,
        attention_mask,
        *,
        pixel_values=None,
        image_grid_thw=None,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        rng: jax.Array,
    ) -> RolloutOutput:
        """Samples ``n`` completions per left-padded prompt; see the module docstring."""
        input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
        batch, prompt_len = input_ids.shape
        chunk = self.prompts_per_call(model, batch, prompt_len, max_new_tokens, n)
        if chunk < batch:
            return self._generate_in_chunks(model, input_ids, attention_mask, pixel_values, image_grid_thw, chunk,
                                            max_new_tokens=max_new_tokens, n=n, temperature=temperature, top_p=top_p,
                                            top_k=top_k, greedy=greedy, eos_token_ids=eos_token_ids,
                                            pad_token_id=pad_token_id, rng=rng)  # fmt: skip
        self.last_chunks = 1
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax decoding), got {temperature}")
        if not eos_token_ids:
            raise ValueError("eos_token_ids must name at least one token")
        inputs, length, cache_size = self._inputs(model, input_ids, attention_mask, pixel_values, image_grid_thw,
                                                  max_new_tokens, pad_token_id)  # fmt: skip
        graphdef, state = nnx.split(model)
        with self._mesh_context(), axis_rules(self.rules):
            out = self._program(state, *inputs, rng, jnp.asarray(max_new_tokens, jnp.int32),
                                jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                                graphdef=graphdef, n=n, length=length, cache_size=cache_size, top_k=top_k,
                                greedy=greedy, eos=tuple(eos_token_ids), pad=pad_token_id,
                                banned=model.cfg.special_token_ids)  # fmt: skip
        if jax.process_count() > 1:  # every process continues with the whole batch's results (host numpy)
            out = to_host(out)
        return jax.tree.map(lambda x: x[: batch * n, :max_new_tokens] if x.ndim == 2 else x[: batch * n], out)

    def start(
        self,
        model: nnx.Module,
        input_ids,
        attention_mask,
        *,
        pixel_values=None,
        image_grid_thw=None,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        rng: jax.Array,
    ) -> DecodeStream:
        """What `generate` samples (the same tokens for the same arguments), as a `DecodeStream` the caller decodes
        a segment at a time: for serving, which streams tokens as they come and stops rows early (a stop string,
        a cancelled request). One process; the batch must fit the KV-cache bound (`prompts_per_call`)."""
        input_ids, attention_mask = np.asarray(input_ids), np.asarray(attention_mask)
        if temperature <= 0 or not eos_token_ids:
            raise ValueError("temperature must be > 0 and eos_token_ids must name at least one token")
        if self.prompts_per_call(model, len(input_ids), input_ids.shape[1], max_new_tokens, n) < len(input_ids):
            raise CacheTooLargeError(f"{len(input_ids)} prompts × n {n} do not fit the KV-cache bound in one call")
        inputs, length, cache_size = self._inputs(model, input_ids, attention_mask, pixel_values, image_grid_thw,
                                                  max_new_tokens, pad_token_id)  # fmt: skip
        graphdef, state = nnx.split(model)
        with self._mesh_context(), axis_rules(self.rules):
            carry = self._start_program(state, *inputs, rng, graphdef=graphdef, n=n, length=length,
                                        cache_size=cache_size, pad=pad_token_id)  # fmt: skip
        static = dict(graphdef=graphdef, top_k=top_k, greedy=greedy, eos=tuple(eos_token_ids), pad=pad_token_id,
                      banned=model.cfg.special_token_ids)  # fmt: skip
        sampling = (jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32))
        return DecodeStream(self, state, carry, len(input_ids) * n, max_new_tokens, sampling, static)

    def _inputs(self, model, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values, image_grid_thw,
                max_new_tokens: int, pad_token_id: int) -> tuple[tuple, int, int]:  # fmt: skip
        """The sampling program's array inputs (ids, mask, pixels, grids) padded to their buckets and placed, the
        new-token bucket and the cache size."""
        batch, prompt_len = input_ids.shape
        rows_bucket, prompt_bucket, length = self._buckets(batch, prompt_len, max_new_tokens)
        # Prompts left-padded to the prompt bucket, then padding rows (all pad, no attention) up to the batch bucket.
        pad = lambda x, value: pad_axis(pad_axis(x.astype(np.int32), 1, prompt_bucket, left=True, value=value), 0,
                                        rows_bucket, value=value)  # fmt: skip
        ids, mask = pad(input_ids, pad_token_id), pad(attention_mask, 0)
        if pixel_values is not None:
            pixel_values, image_grid_thw = to_per_row(
                input_ids, np.asarray(pixel_values, jnp.dtype(model.pixel_dtype)), np.asarray(image_grid_thw),
                rows_bucket, image_token_id=model.cfg.image_token_id,
                merge_size=model.cfg.vision.spatial_merge_size, patch_buckets=self.config.patch_buckets,
            )  # fmt: skip
            pixel_values, image_grid_thw = self._place(pixel_values), self._place(image_grid_thw)
        return (self._place(ids), self._place(mask), pixel_values, image_grid_thw), length, prompt_bucket + length

    def _generate_in_chunks(self, model, input_ids, attention_mask, pixel_values, image_grid_thw, chunk: int, *,
                            rng: jax.Array, **kwargs) -> RolloutOutput:  # fmt: skip
        """`generate` over consecutive chunks of ``chunk`` prompts (chunk i samples with ``fold_in(rng, i)``)."""
        batch = input_ids.shape[0]
        if pixel_values is not None and np.ndim(pixel_values) == 2:  # packed images: split them per row first
            pixel_values, image_grid_thw = to_per_row(
                input_ids, np.asarray(pixel_values), np.asarray(image_grid_thw), batch,
                image_token_id=model.cfg.image_token_id, merge_size=model.cfg.vision.spatial_merge_size,
                patch_buckets=self.config.patch_buckets,
            )  # fmt: skip
        rows = lambda x, start: None if x is None else x[start : start + chunk]
        outputs = [
            self.generate(model, rows(input_ids, start), rows(attention_mask, start),
                          pixel_values=rows(pixel_values, start), image_grid_thw=rows(image_grid_thw, start),
                          rng=jax.random.fold_in(rng, index), **kwargs)
            for index, start in enumerate(range(0, batch, chunk))
        ]  # fmt: skip
        self.last_chunks = len(outputs)
        return jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *outputs)

    def lower(
        self, model, *, prompts: int, prompt_length: int, max_new_tokens: int, n: int, patches: int, images: int,
        limit: int | None = None,
    ) -> tuple[jax.stages.Lowered, int]:  # fmt: skip
        """The sampling program a `generate` call of ``prompts`` prompts of ``prompt_length`` tokens with
        ``images`` images of ``patches`` patches in all per row would run, for ahead-of-time compilation, and how
        many chunks of prompts the call would take under ``limit``. ``model`` may be abstract (``nnx.eval_shape``).
        """
        chunk = self.prompts_per_call(model, prompts, prompt_length, max_new_tokens, n, limit)
        rows, prompt_bucket, length = self._buckets(chunk, prompt_length, max_new_tokens)
        vision = model.cfg.vision
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        struct = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=(
            None if self.mesh is None else batch_sharding(self.mesh, len(shape), self.rules)))  # fmt: skip
        slots = bucket(images, SLOT_BUCKETS)
        pixel_values = struct((rows, bucket(patches, self.config.patch_buckets), patch_dim), model.pixel_dtype)
        graphdef, state = nnx.split(model)
        if self.mesh is not None:
            state = abstract(state, state_shardings(state, self.mesh, self.rules))
        scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
        with self._mesh_context(), axis_rules(self.rules):
            lowered = self._program.lower(
                state, struct((rows, prompt_bucket), jnp.int32), struct((rows, prompt_bucket), jnp.int32),
                pixel_values if images else None, struct((rows, slots, 3), jnp.int32) if images else None,
                jax.eval_shape(lambda: jax.random.key(0)), scalar(jnp.int32), scalar(jnp.float32),
                scalar(jnp.float32), graphdef=graphdef, n=n, length=length, cache_size=prompt_bucket + length,
                top_k=0, greedy=False, eos=(0,), pad=0, banned=model.cfg.special_token_ids,
            )  # fmt: skip
        return lowered, -(-prompts // chunk)

    def model_inputs(self, cfg, prompts: PromptBatch, pad_token_id: int):
        """`batch.model_inputs` of ``prompts`` for a model of config ``cfg``, in this engine's buckets: what the
        sampler and the learner both take, so one conversion serves a whole GRPO step."""
        return model_inputs(
            prompts, prompt_buckets=self.config.prompt_buckets, patch_buckets=self.config.patch_buckets,
            image_token_id=cfg.image_token_id, merge_size=cfg.vision.spatial_merge_size, pad_token_id=pad_token_id,
        )  # fmt: skip

    def _place(self, array: np.ndarray):
        if self.mesh is None:
            return array
        return place(array, batch_sharding(self.mesh, array.ndim, self.rules))

    def _mesh_context(self):
        if self.mesh is None:
            return contextlib.nullcontext()
        return jax.set_mesh(self.mesh)


_DEFAULT_ENGINE = RolloutEngine()


def generate(model: nnx.Module, input_ids, attention_mask, **kwargs) -> RolloutOutput:
    """`RolloutEngine.generate` on a process-wide engine with the default buckets (no mesh)."""
    return _DEFAULT_ENGINE.generate(model, input_ids, attention_mask, **kwargs)


def compilation_count() -> int:
    """How many sampling programs the default engine has compiled."""
    return _DEFAULT_ENGINE.num_compilations


class DecodeStream:
    """A batch started by `RolloutEngine.start`, decoded ``steps`` tokens per `advance` call.

    Rows are the ``n`` samples of each prompt, contiguous, as in `RolloutOutput`. Between calls the carry stays on
    the device; `advance` may end rows early (``finish``), which then emit padding, and the batch stops decoding
    once every row is done or ``max_new_tokens`` are drawn.
    """

    def __init__(self, engine: RolloutEngine, state, carry: DecodeState, rows: int, max_new_tokens: int,
                 sampling: tuple[jax.Array, jax.Array], static: dict) -> None:  # fmt: skip
        self._engine, self._state, self._carry, self._sampling, self._static = engine, state, carry, sampling, static
        self.rows, self.max_new_tokens, self.step = rows, max_new_tokens, 0
        self.done = np.zeros(rows, bool)

    @property
    def finished(self) -> bool:
        return self.step >= self.max_new_tokens or bool(self.done.all())

    def advance(self, steps: int, finish: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """Ends rows ``finish``, decodes up to ``steps`` more tokens; returns the new tokens [rows, k] with
        ``mask`` [rows, k] (1 for real tokens, EOS included; k ≤ steps, 0 once `finished`)."""
        finished = np.zeros(self._carry.done.shape, bool)
        finished[list(finish)] = True
        limit = min(self.step + steps, self.max_new_tokens)
        engine = self._engine
        with engine._mesh_context(), axis_rules(engine.rules):
            self._carry = engine._advance_program(self._state, self._carry, finished, jnp.asarray(limit, jnp.int32),
                                                  *self._sampling, **self._static)  # fmt: skip
        start, self.step = self.step, int(self._carry.step)
        tokens, mask, done = jax.device_get((self._carry.tokens[: self.rows, start : self.step],
                                             self._carry.mask[: self.rows, start : self.step],
                                             self._carry.done[: self.rows]))  # fmt: skip
        self.done = np.asarray(done)
        return np.asarray(tokens), np.asarray(mask, np.int32)


__all__ = [
    "CacheTooLargeError",
    "DecodeStream",
    "EngineConfig",
    "RolloutEngine",
    "RolloutOutput",
    "choose_tokens",
    "compilation_count",
    "generate",
    "sample_categorical",
]
