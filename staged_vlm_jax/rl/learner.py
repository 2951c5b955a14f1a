"""The learner: train state, log-prob recomputation and the jitted, sharded update step of every stage kind.

One `Learner.train_step` consumes the rollouts of one RL step (B prompts × n responses = R rows) exactly as
EasyR1 does: old log-probs are computed once with the current weights, reference log-probs with the stage's
initial weights, then the rows are cut into ``num_minibatches`` mini-batches, one AdamW update each; a mini-batch
is processed in micro-batches whose gradients are accumulated *exactly* — every micro-batch's loss is normalised
by the whole mini-batch's unit count (tokens for token-mean, sequences otherwise), so the sum of micro-batch
gradients is the mini-batch gradient for every aggregation mode. The loss itself is a named objective
(`objectives.OBJECTIVES`: the GRPO policy-gradient objective, or the NLL of SFT stages).

Only parameters matching ``trainable`` regexes get gradients and optimizer state; the rest stay bit-identical.
A non-finite loss or gradient skips the update (parameters and optimizer state unchanged) and is counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from staged_vlm_jax.models.layers import REMAT_POLICIES, remat
from staged_vlm_jax.models.sharding import (
    DEFAULT_RULES,
    MeshAxes,
    abstract,
    axis_rules,
    batch_shards,
    constrain,
    place,
    state_shardings,
    to_host,
)
from staged_vlm_jax.rl import losses
from staged_vlm_jax.rl.objectives import OBJECTIVES
from staged_vlm_jax.rl.optimizers import OPTIMIZER_PRECISIONS


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The objective and optimizer (defaults: the paper's EasyR1 recipe)."""

    learning_rate: float = 1e-6
    weight_decay: float = 1e-2
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    num_minibatches: int = 4
    micro_batch_size: int | None = None  # rows per gradient-accumulation micro-batch; None = whole mini-batch
    loss_type: str = "grpo"
    loss_agg: str = "token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.3
    clip_dual: float = 3.0
    kl_coef: float = 1e-2
    kl_kind: str = "k3"
    temperature: float = 1.0
    trainable: tuple[str, ...] = (r".*",)  # regexes over dotted parameter paths, e.g. r"^language_model\."
    share_prompts: bool = True  # run a GRPO group's shared prompt once (exact; see TrainBatch.group_size)
    objective: str = "policy_gradient"  # an `objectives.OBJECTIVES` name: what a micro-batch's loss is
    # How updates reach low-precision (bf16) weights, an `optimizers.OPTIMIZER_PRECISIONS` name: "kahan" (Kahan-
    # compensated, EasyR1's adamw_bf16), "fp32_master" (fp32 master weights) or "plain" (AdamW applied to the bf16
    # weights directly: at lr 1e-6 most updates round away). fp32 weights get plain AdamW, bit-identical, with any.
    optimizer_precision: str = "kahan"
    # What each scanned layer keeps for the backward pass, a `layers.REMAT_POLICIES` name: "none" (everything),
    # "dots" (matmul outputs; recompute the rest) or "full" (only the layer input: least memory, one extra forward).
    remat: str = "none"
    # Response positions whose float32 logits [rows, chunk, vocab] exist at once (`token_log_probs`); exact.
    logits_chunk: int = 128

    def micro_batch_rows(self, rows: int) -> int:
        """Rows per micro-batch of a step of ``rows`` rows: ``micro_batch_size``, or a whole mini-batch."""
        return self.micro_batch_size or rows // self.num_minibatches


@flax.struct.dataclass
class TrainBatch:
    """One RL step's rows: prompt (left-padded) + response (right-padded) token ids, R rows.

    input_ids / attention_mask [R, P + L]; response_mask [R, L] (1 on response tokens, EOS included);
    advantages [R] or [R, L]; optional images in the per-row layout (pixel_values [·, N, ·], image_grid_thw
    [·, I, 3]); optional old_log_probs [R, L] (the current weights' log-probs when None, as EasyR1 recomputes them).

    ``group_size`` g > 1 declares that each g contiguous rows share their prompt (the first P columns) — GRPO's
    groups. The images are then given once per group ([R / g, ...]) and the learner runs each prompt through the
    model once per group (`Qwen2_5_VL.grouped_hidden_states`); mini- and micro-batches must hold whole groups.
    """

    input_ids: jax.Array
    attention_mask: jax.Array
    response_mask: jax.Array
    advantages: jax.Array
    pixel_values: jax.Array | None = None
    image_grid_thw: jax.Array | None = None
    old_log_probs: jax.Array | None = None
    group_size: int = flax.struct.field(pytree_node=False, default=1)


@flax.struct.dataclass
class TrainState:
    """params: trainable weights; frozen: the rest; ref_params: the KL reference (trainable part at the stage
    start; the frozen part is shared); opt_state covers ``params`` only."""

    params: nnx.State
    frozen: nnx.State
    ref_params: nnx.State
    opt_state: optax.OptState
    step: jax.Array
    skipped_updates: jax.Array


def trainable_filter(patterns: tuple[str, ...]):
    """An NNX filter: parameters whose dotted path matches any regex (``re.search``)."""
    compiled = [re.compile(p) for p in patterns]
    return lambda path, _: any(c.search(".".join(map(str, path))) for c in compiled)


def learning_rate_schedule(cfg: LearnerConfig) -> optax.Schedule:
    """Constant learning rate after an optional linear warmup (counted in optimizer updates)."""
    if cfg.warmup_steps:
        return optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.constant_schedule(cfg.learning_rate)


def make_optimizer(cfg: LearnerConfig) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW, applied to low-precision weights as ``cfg.optimizer_precision`` says (a no-op
    wrapper for fp32 weights)."""
    if cfg.optimizer_precision not in OPTIMIZER_PRECISIONS:
        raise ValueError(
            f"learner.optimizer_precision {cfg.optimizer_precision!r} is not one of {sorted(OPTIMIZER_PRECISIONS)}"
        )
    lr = learning_rate_schedule(cfg)
    return OPTIMIZER_PRECISIONS[cfg.optimizer_precision](
        optax.chain(
            optax.clip_by_global_norm(cfg.max_grad_norm),
            optax.adamw(lr, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps, weight_decay=cfg.weight_decay),
        )
    )


def token_log_probs(
    model: nnx.Module, hidden: jax.Array, targets: jax.Array, temperature: float, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """log_softmax(logits / T) of ``targets`` [R, L] and the entropy at each position, from final hidden states
    [R, L, E], ``chunk`` positions at a time.

    The float32 logits of a chunk ([R, chunk, vocab]) are the largest thing that exists at once, in the forward
    and, as each chunk is rematerialised, in the backward pass too: [R, L, vocab] never does (20 GB at 64 rows x
    512 tokens of a 152k vocabulary). Exact: every position's numbers are those of the unchunked computation.
    """

    def stats(h: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = model.logits(h).astype(jnp.float32) / temperature
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), t[..., None], axis=-1)[..., 0]
        return picked, losses.entropy_from_logits(logits)

    rows, length = targets.shape
    if length <= chunk:
        return stats(hidden, targets)
    count = -(-length // chunk)
    pad = count * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    chunks = lambda x: jnp.moveaxis(x.reshape(rows, count, chunk, *x.shape[2:]), 1, 0)  # [count, R, chunk, ...]
    picked, entropy = jax.lax.map(lambda c: jax.checkpoint(stats)(*c), (chunks(hidden), chunks(targets)))
    unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(rows, count * chunk)[:, :length]
    return unchunk(picked), unchunk(entropy)


def response_log_probs(
    model: nnx.Module, batch: TrainBatch, temperature: float, chunk: int = 128
) -> tuple[jax.Array, jax.Array]:
    """log_softmax(logits / T) of each response token and the per-token entropy, both [R, L].

    The logits at position P − 1 + t predict response token t; only those L positions go through the LM head,
    ``chunk`` positions at a time (`token_log_probs`).
    """
    length = batch.response_mask.shape[1]
    if batch.group_size > 1:
        prompt = slice(None, batch.input_ids.shape[1] - length)
        hidden = model.grouped_hidden_states(
            batch.input_ids[:: batch.group_size, prompt], batch.attention_mask[:: batch.group_size, prompt],
            batch.input_ids[:, prompt.stop :], batch.pixel_values, batch.image_grid_thw,
        )  # fmt: skip
    else:
        hidden = model.hidden_states(batch.input_ids, batch.attention_mask, batch.pixel_values, batch.image_grid_thw)
        hidden = hidden[:, -length - 1 : -1]
    return token_log_probs(model, hidden, batch.input_ids[:, -length:], temperature, chunk)


def batch_split_error(cfg: LearnerConfig, rows: int, group_size: int = 1) -> str | None:
    """Why ``rows`` rows cannot be cut into ``cfg``'s mini-batches of whole micro-batches of whole groups of
    ``group_size`` rows (None when they can); the message names the config keys."""
    micro = cfg.micro_batch_rows(rows)
    minibatch = rows // cfg.num_minibatches
    if rows % cfg.num_minibatches == 0 and micro and minibatch % micro == 0 and micro % group_size == 0:
        return None
    return (
        f"{rows} rows do not split into learner.num_minibatches={cfg.num_minibatches} mini-batches of whole "
        f"micro-batches of learner.micro_batch_size={micro}"
        + (f" holding whole groups of {group_size}" if group_size > 1 else "")
    )


def micro_batch_spread_warning(cfg: LearnerConfig, rows: int, group_size: int, shards: int) -> str | None:
    """Why ``cfg``'s micro-batches of ``rows`` rows (groups of ``group_size``) cannot spread evenly over ``shards``
    batch shards (None when they can). Then XLA replicates or gathers their rows: it works, at a multiple of the
    memory (the paper's 40-row micro-batches on 64 chips: 124.7 instead of 55.1 GiB per chip for a 7B model)."""
    micro = cfg.micro_batch_rows(rows)
    if (micro // group_size) % shards == 0:
        return None
    what = "rows" if group_size == 1 else f"groups of {group_size}"
    return (
        f"micro-batches of {micro // group_size} {what} do not divide over {shards} batch shards, so their rows are "
        f"replicated; set learner.micro_batch_size to a multiple of {group_size * shards}"
    )


def optimizer_state_shardings(abstract_state, params, other: NamedSharding):
    """Shardings of an optimizer state: each per-parameter leaf (moments, master copies, compensation buffers) as
    its parameter — found by its tree path ending in the parameter's path, with the same shape — and ``other``
    (replicated) for the rest (step counts). Left to propagation, zero-initialised moments come out replicated: a
    7B model's Adam state in full on every device."""
    by_path = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}

    def sharding(path, leaf):
        key = jax.tree_util.keystr(path)
        matches = [name for name, p in by_path.items() if key.endswith(name) and p.shape == leaf.shape]
        return by_path[max(matches, key=len)].sharding if matches else other  # the most specific path

    return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def _rows_on_batch_axes(x: jax.Array, axis: int) -> jax.Array:
    """``x`` with its ``axis`` (the rows) on the batch mesh axes and the axes before it (splits) unsharded."""
    return constrain(x, (None,) * axis + ("batch",) + (None,) * (x.ndim - axis - 1))


def _micro_layout(batch: TrainBatch, cfg: LearnerConfig) -> tuple[int, int, int]:
    """(num_minibatches, micro-batches per mini-batch, groups per micro-batch) of ``batch`` under ``cfg``."""
    rows = batch.input_ids.shape[0]
    micro = cfg.micro_batch_rows(rows)
    return cfg.num_minibatches, rows // cfg.num_minibatches // micro, micro // batch.group_size


def _strided(tree, splits: int, units: int, *, forward: bool):
    """The row permutation that lets every micro-batch span every batch shard (and its inverse).

    A batch is sharded in contiguous blocks of rows, so a contiguous micro-batch lives on one or two devices, and
    a loop over micro-batches makes XLA gather each onto every device (measured on the 7B plan: the whole batch's
    image patches on each device). The host therefore stores micro-batch s's u-th group at position
    ``u * splits + s`` (``forward``: [splits, units, ...] -> [units, splits, ...], see `Learner.place_batch`); the
    step reads it back with the inverse, a local reshape and transpose of each device's block, so micro-batch s is
    exactly the original rows ``s * units ...`` again, now spread over the devices. Per-row leaves move in whole
    groups (their leading size is a multiple of the group count); per-group leaves (images) one by one.
    """
    groups = splits * units

    def move(x):
        if isinstance(x, jax.ShapeDtypeStruct):  # `staged-vlm plan`: shapes only, unchanged by the permutation
            return x
        rest, per_group = x.shape[1:], x.shape[0] // groups
        if forward:
            return x.reshape(splits, units, per_group, *rest).swapaxes(0, 1).reshape(x.shape)
        return x.reshape(units, splits, per_group, *rest).swapaxes(0, 1).reshape(splits, -1, *rest)

    return jax.tree.map(move, tree)


def _split_micro_batches(tree, layout: tuple[int, int, int]):
    """Every batched leaf of a `place_batch`-arranged batch as [num_minibatches, micro-batches, micro rows, ...] in
    the original row order (`_strided`), micro rows on the batch axes."""
    minibatches, micros, units = layout
    split = _strided(tree, minibatches * micros, units, forward=False)  # [splits, micro rows, ...]
    return jax.tree.map(lambda x: _rows_on_batch_axes(x.reshape(minibatches, micros, *x.shape[1:]), 2), split)


class Learner:
    """Owns the model's graph, the optimizer and the compiled train step for one stage.

    Given an abstract model (``nnx.eval_shape``) and a mesh, the state is shapes and shardings only: nothing is
    allocated, and `lower` gives the step's program for ahead-of-time compilation (`staged-vlm plan`).
    """

    def __init__(
        self,
        model: nnx.Module,
        config: LearnerConfig = LearnerConfig(),
        mesh: Mesh | None = None,
        rules: Mapping[str, MeshAxes] = DEFAULT_RULES,
    ):
        self.config, self.mesh, self.rules = config, mesh, rules
        self.model_config = model.cfg  # the family's config (image-token ids, ...)
        self.pixel_dtype = jnp.dtype(model.pixel_dtype)
        self.graphdef, params, frozen = nnx.split(model, trainable_filter(config.trainable), ...)
        if not jax.tree.leaves(params):
            raise ValueError(f"learner.trainable {config.trainable} matches no parameter")
        if config.objective not in OBJECTIVES:
            raise ValueError(f"learner.objective {config.objective!r} is not one of {sorted(OBJECTIVES)}")
        if config.logits_chunk < 1:
            raise ValueError(f"learner.logits_chunk must be a positive number of positions, got {config.logits_chunk}")
        if config.remat not in REMAT_POLICIES:
            raise ValueError(f"learner.remat {config.remat!r} is not one of {sorted(REMAT_POLICIES)}")
        self.objective = OBJECTIVES[config.objective]
        self.tx = make_optimizer(config)
        self.learning_rate = learning_rate_schedule(config)
        scalar = jnp.zeros((), jnp.int32)
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
            if mesh is None:
                raise ValueError("a Learner of an abstract model (shapes only, as `staged-vlm plan` uses) needs a mesh")
            replicated = NamedSharding(mesh, PartitionSpec())
            params, frozen = (abstract(s, state_shardings(s, mesh, rules)) for s in (params, frozen))
            opt_state = jax.eval_shape(self.tx.init, params)
            opt_state = abstract(opt_state, optimizer_state_shardings(opt_state, params, replicated))
            scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
        elif mesh is None:
            opt_state = self.tx.init(params)
        else:
            params, frozen = (place(s, state_shardings(s, mesh, rules)) for s in (params, frozen))
            replicated = NamedSharding(mesh, PartitionSpec())
            scalar = place(scalar, replicated)
            shardings = optimizer_state_shardings(jax.eval_shape(self.tx.init, params), params, replicated)
            opt_state = jax.jit(self.tx.init, out_shardings=shardings)(params)
        copy = lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jnp.copy(x)
        self.state = TrainState(
            params=params,
            frozen=frozen,
            ref_params=jax.tree.map(copy, params),
            opt_state=opt_state,
            step=scalar,
            skipped_updates=copy(scalar),
        )
        jit_kwargs = {}
        if mesh is not None:
            state_sharding = jax.tree.map(lambda x: x.sharding, self.state)
            rows = NamedSharding(mesh, PartitionSpec(rules["batch"]))  # prefix: every batch leaf is [rows, ...]
            jit_kwargs = dict(
                in_shardings=(state_sharding, rows),
                out_shardings=(state_sharding, NamedSharding(mesh, PartitionSpec())),
            )
        self.num_compilations = 0  # traces of the train step (one per batch shape; more means recompiles)
        self._step = jax.jit(self._train_step, donate_argnums=0, **jit_kwargs)

    def lower(self, batch: TrainBatch) -> jax.stages.Lowered:
        """The train step's program for ``batch`` (arrays or shape/dtype structs placed by `place_batch`)."""
        with self._tracing():
            return self._step.lower(self.state, batch)

    def _tracing(self) -> contextlib.AbstractContextManager:
        """The context the step is traced in: this learner's sharding rules, remat policy and mesh (so the model's
        activation constraints pin rows to the batch axes; without a mesh they are no-ops)."""
        stack = contextlib.ExitStack()
        stack.enter_context(axis_rules(self.rules))
        stack.enter_context(remat(self.config.remat))
        if self.mesh is not None:
            stack.enter_context(jax.set_mesh(self.mesh))
        return stack

    def model(self) -> nnx.Module:
        """The current model as an NNX module, e.g. for the rollout engine."""
        return nnx.merge(self.graphdef, self.state.params, self.state.frozen)

    def place_batch(self, batch: TrainBatch) -> TrainBatch:
        """The train step's input: ``batch``'s rows permuted so that every micro-batch spans every batch shard
        (`_strided`; the step undoes it) and, with a mesh, put on it with the rows over the batch axes."""
        error = batch_split_error(self.config, batch.input_ids.shape[0], batch.group_size)
        if error:
            raise ValueError(error)
        minibatches, micros, units = _micro_layout(batch, self.config)
        batch = _strided(batch, minibatches * micros, units, forward=True)
        pixels = batch.pixel_values  # in the tower's dtype (`Qwen2_5_VL.pixel_dtype`): half the bytes in bf16
        if pixels is not None and not isinstance(pixels, jax.ShapeDtypeStruct) and pixels.dtype != self.pixel_dtype:
            batch = batch.replace(pixel_values=pixels.astype(self.pixel_dtype))
        if self.mesh is None:
            return batch
        rows, shards = batch.input_ids.shape[0] // batch.group_size, batch_shards(self.mesh, self.rules)
        if rows % shards:
            what = "rows" if batch.group_size == 1 else f"groups of {batch.group_size} rows"
            raise ValueError(f"{rows} {what} do not split over {shards} batch shards")
        spread = micro_batch_spread_warning(self.config, batch.input_ids.shape[0], batch.group_size, shards)
        if spread:
            warnings.warn(spread, stacklevel=2)
        return place(batch, NamedSharding(self.mesh, PartitionSpec(self.rules["batch"])))

    def group_size(self, rows: int, n: int) -> int:
        """The ``TrainBatch.group_size`` for ``rows`` rows in groups of ``n``: n where sharing is on and every
        mini-batch, micro-batch and batch shard holds whole groups, else 1 (each row runs its own prompt)."""
        shards = batch_shards(self.mesh, self.rules)
        whole = batch_split_error(self.config, rows, n) is None and (rows // n) % shards == 0
        return n if self.config.share_prompts and n > 1 and whole else 1

    def train_step(self, batch: TrainBatch) -> dict[str, np.ndarray]:
        """Runs one RL step's updates on ``batch`` and returns its metrics (host values); updates ``self.state``."""
        # The model's activation constraints and layer rematerialisation follow this learner's config.
        with self._tracing():
            self.state, metrics = self._step(self.state, self.place_batch(batch))
        return to_host(metrics)

    # -- compiled ---------------------------------------------------------------------------------------------------

    def log_probs(self, params, frozen, chunks: TrainBatch) -> jax.Array:
        """Response log-probs [..., rows, L] with ``params`` (and ``frozen``), without gradients, of micro-batches
        whose leaves carry the same leading axes before their rows ([..., rows, ...]), one micro-batch at a time:
        the old- and reference-log-prob passes of the train step (traceable; jit it to run it on its own)."""
        lead = chunks.response_mask.shape[:-2]
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[len(lead) :]), chunks.replace(old_log_probs=None))
        cfg, model = self.config, nnx.merge(self.graphdef, params, frozen)
        fn = lambda b: response_log_probs(model, b, cfg.temperature, cfg.logits_chunk)[0]
        out = jax.lax.map(fn, flat)
        return jax.lax.stop_gradient(out.reshape(*lead, *out.shape[1:]))

    def _train_step(self, state: TrainState, batch: TrainBatch):
        self.num_compilations += 1  # runs at trace time only
        cfg = self.config
        per_minibatch = batch.input_ids.shape[0] // cfg.num_minibatches
        split = _split_micro_batches(batch, _micro_layout(batch, cfg))  # [mini-batches, micro-batches, rows, ...]
        # The first mini-batch is updated with the very weights that define "old", so its old log-probs are its own
        # log-probs (stop-gradient) inside the loss; only the later mini-batches need a separate pass. Same
        # objective as EasyR1's up-front recompute, one forward pass over R / num_minibatches rows cheaper.
        first_is_current = split.old_log_probs is None
        if first_is_current:
            old = jnp.zeros(split.response_mask.shape, jnp.float32)
            if cfg.num_minibatches > 1:
                later = self.log_probs(state.params, state.frozen, jax.tree.map(lambda x: x[1:], split))
                old = jnp.concatenate([old[:1], later])
            split = split.replace(old_log_probs=old)
        ref_log_probs = (
            self.log_probs(state.ref_params, state.frozen, split)
            if cfg.kl_coef
            else jnp.zeros_like(split.old_log_probs)
        )
        minibatches = (split, ref_log_probs)

        def micro_step(params, frozen, units, own_old, chunk):
            mb, ref = chunk

            def loss_fn(p):
                model = nnx.merge(self.graphdef, p, frozen)
                log_probs, entropy = response_log_probs(model, mb, cfg.temperature, cfg.logits_chunk)
                old = jnp.where(own_old, jax.lax.stop_gradient(log_probs), mb.old_log_probs)
                loss, terms, sums = self.objective(cfg, log_probs, old, ref, mb, units)
                tokens = jnp.sum(mb.response_mask)
                # Token-weighted sums, so metrics over micro-batches combine into exact mini-batch means.
                sums = {**sums, "entropy": jnp.sum(entropy * mb.response_mask)}
                sums["nll"] = -jnp.sum(log_probs * mb.response_mask)  # of the batch's tokens (the SFT loss)
                return loss, ({"loss": loss, **terms, "tokens": tokens}, sums)

            return jax.value_and_grad(loss_fn, has_aux=True)(params)

        def minibatch_step(carry, indexed):
            params, opt_state, skipped = carry
            index, minibatch = indexed
            units = losses.aggregation_units(minibatch[0].response_mask.reshape(per_minibatch, -1), cfg.loss_agg)
            own_old = first_is_current & (index == 0)

            def accumulate(acc, chunk):
                (_, aux), grads = micro_step(params, state.frozen, units, own_old, chunk)
                grads_acc, totals = acc
                return (jax.tree.map(jnp.add, grads_acc, grads), jax.tree.map(jnp.add, totals, aux)), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            first = jax.tree.map(lambda x: x[0], minibatch)
            aux_shapes = jax.eval_shape(micro_step, params, state.frozen, units, own_old, first)[0][1]
            totals0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), aux_shapes)
            (grads, (totals, sums)), _ = jax.lax.scan(accumulate, (zeros, totals0), minibatch)
            grad_norm = optax.tree.norm(grads)
            finite = jnp.isfinite(grad_norm) & jnp.isfinite(totals["loss"])
            updates, new_opt_state = self.tx.update(grads, opt_state, params)
            new_params = optax.apply_updates(params, updates)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
            tokens = jnp.maximum(totals.pop("tokens"), 1)
            metrics = {**totals, **{k: v / tokens for k, v in sums.items()}}
            metrics["grad_norm"] = grad_norm
            carry = (keep(new_params, params), keep(new_opt_state, opt_state), skipped + (~finite).astype(jnp.int32))
            return carry, metrics

        (params, opt_state, skipped), metrics = jax.lax.scan(
            minibatch_step,
            (state.params, state.opt_state, state.skipped_updates),
            (jnp.arange(cfg.num_minibatches), minibatches),
        )
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["skipped_updates"] = skipped - state.skipped_updates
        metrics["lr"] = self.learning_rate(state.step * cfg.num_minibatches)
        state = state.replace(params=params, opt_state=opt_state, step=state.step + 1, skipped_updates=skipped)
        return state, metrics
