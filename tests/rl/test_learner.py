"""GRPO learner: exact micro-batch accumulation, frozen parameters, NaN guard, 8-device mesh equivalence."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from staged_vlm_jax import models
from staged_vlm_jax.data.batch import per_row_images
from staged_vlm_jax.models.sharding import make_mesh
from staged_vlm_jax.rl import losses
from staged_vlm_jax.rl.learner import Learner, LearnerConfig, TrainBatch, response_log_probs
from tests.models.qwen_fixtures import image_patches, left_pad, prompt, tiny

ROWS, RESPONSE = 8, 6


def make_batch(cfg, seed=0, images=False, group=1, share=False) -> TrainBatch:
    """ROWS rows; with ``group`` g each g contiguous rows share a prompt (and its image), repeated per row or, with
    ``share``, given once per group (``group_size`` g)."""
    rng = np.random.default_rng(seed)
    grids = [(1, 4, 4), (1, 4, 8)] * (ROWS // 2 // group)
    rows = [
        prompt(rng, cfg, [g] if images else [], [1 + i % 3, 2] if images else [3 + i % 3]) for i, g in enumerate(grids)
    ]
    ids, mask = (np.repeat(x, group, 0) for x in left_pad(rows, cfg.text.pad_token_id))
    response = rng.integers(0, cfg.image_token_id - 1, (ROWS, RESPONSE)).astype(np.int32)
    lengths = rng.integers(1, RESPONSE + 1, ROWS)
    response_mask = (np.arange(RESPONSE)[None] < lengths[:, None]).astype(np.int32)
    response = np.where(response_mask > 0, response, cfg.text.pad_token_id)
    batch = TrainBatch(
        input_ids=np.concatenate([ids, response], axis=1),
        attention_mask=np.concatenate([mask, response_mask], axis=1),
        response_mask=response_mask,
        advantages=rng.normal(0, 1, ROWS).astype(np.float32),
        group_size=group if share else 1,
    )
    if images:
        pixels = np.concatenate([image_patches(rng, cfg, g) for g in grids])
        rows_pixels, rows_grids = per_row_images(pixels, np.array(grids), [1] * len(grids))
        repeat = 1 if share else group
        batch = batch.replace(pixel_values=np.repeat(rows_pixels, repeat, 0), image_grid_thw=np.repeat(rows_grids,
                              repeat, 0))  # fmt: skip
    return batch


def _config(**overrides):
    # A large learning rate so one update visibly moves the weights.
    return dataclasses.replace(LearnerConfig(learning_rate=1e-2, num_minibatches=2), **overrides)


def _params(learner):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(learner.state.params))


def _first_moment(learner):
    """Adam's first moment, (1 − b1)·gradient after one update: compares gradients without Adam's normalisation,
    which amplifies float noise in near-zero gradients into O(lr) parameter differences."""
    return jax.tree.map(np.asarray, nnx.to_pure_dict(optax.tree.get(learner.state.opt_state, "mu")))


@pytest.mark.parametrize("agg", losses.LOSS_AGGREGATIONS)
def test_micro_batched_update_equals_full_batch_update(agg):
    cfg = tiny()
    batch = make_batch(cfg, images=agg == "token-mean")  # images in one mode; text-only compiles faster
    results = []
    for micro in (None, 2):
        learner = Learner(models.create(cfg, seed=1), _config(loss_agg=agg, micro_batch_size=micro, num_minibatches=1))
        metrics = learner.train_step(batch)
        results.append((_first_moment(learner), _params(learner), {k: float(v) for k, v in metrics.items()}))
    (full_mu, full_params, full_metrics), *others = results
    assert max(np.abs(x).max() for x in jax.tree.leaves(full_mu)) > 1e-4  # the gradients are not trivial
    for mu, params, metrics in others:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), mu, full_mu)
        for k in ("loss", "pg_loss", "kl_loss", "pg_clipfrac_higher", "entropy", "grad_norm"):
            assert metrics[k] == pytest.approx(full_metrics[k], rel=1e-5, abs=1e-6), k
        assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(full_params))


def test_shared_prompt_update_equals_per_row_update():
    """group_size = 2: each prompt and image runs once per group; log-probs, gradients and metrics as per row."""
    cfg = tiny()
    per_row, shared = (make_batch(cfg, seed=7, images=True, group=2, share=s) for s in (False, True))
    model = models.create(cfg, seed=1)
    expected, got = (np.asarray(response_log_probs(model, b, 1.0)[0]) for b in (per_row, shared))
    valid = per_row.response_mask.astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], atol=1e-5, rtol=0)
    results = []
    for batch in (per_row, shared):
        learner = Learner(models.create(cfg, seed=1), _config(micro_batch_size=2))
        assert learner.group_size(ROWS, 2) == 2
        metrics = learner.train_step(batch)
        results.append((_first_moment(learner), {k: float(v) for k, v in metrics.items()}))
    (mu, metrics), (shared_mu, shared_metrics) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), shared_mu, mu)
    for k in ("loss", "pg_loss", "kl_loss", "ppo_kl", "entropy", "grad_norm"):
        assert shared_metrics[k] == pytest.approx(metrics[k], rel=1e-5, abs=1e-6), k


def test_frozen_parameters_stay_bit_identical_and_get_no_optimizer_state():
    cfg = tiny()
    model = models.create(cfg, seed=2)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    learner = Learner(model, _config(trainable=(r"^language_model\.layers\.mlp\.",)))  # every layer's MLP
    for seed in range(3):
        learner.train_step(make_batch(cfg, seed, images=True))
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(learner.model())))
    moved = []
    flat_before = dict(jax.tree_util.tree_flatten_with_path(before)[0])
    for key, value in jax.tree_util.tree_flatten_with_path(after)[0]:
        dotted = jax.tree_util.keystr(key)
        if "['layers']['mlp']" in dotted:
            moved.append(not np.array_equal(value, flat_before[key]))
        else:
            np.testing.assert_array_equal(value, flat_before[key], err_msg=dotted)
    assert moved and all(moved)
    n_trainable = len(jax.tree.leaves(learner.state.params))
    adam_mu = optax.tree.get(learner.state.opt_state, "mu")
    assert len(jax.tree.leaves(adam_mu)) == n_trainable < len(jax.tree.leaves(after))


def test_non_finite_update_is_skipped_and_counted():
    cfg = tiny()
    learner = Learner(models.create(cfg, seed=3), _config())
    before = _params(learner)
    batch = make_batch(cfg)
    metrics = learner.train_step(batch.replace(advantages=np.full(ROWS, np.nan, np.float32)))
    assert int(metrics["skipped_updates"]) == 2 and int(learner.state.skipped_updates) == 2
    jax.tree.map(np.testing.assert_array_equal, _params(learner), before)
    metrics = learner.train_step(batch)
    assert int(metrics["skipped_updates"]) == 0 and int(learner.state.step) == 2


def test_old_log_probs_are_recomputed_with_the_current_weights():
    """With old = current weights the first mini-batch's ratio is 1: no clipping, ppo_kl 0 (EasyR1 semantics)."""
    cfg = tiny()
    model = models.create(cfg, seed=4)
    batch = make_batch(cfg)
    log_probs, _ = response_log_probs(model, batch, 1.0)
    mask = batch.response_mask.astype(bool)
    assert np.isfinite(np.asarray(log_probs)[mask]).all()
    learner = Learner(model, _config(num_minibatches=1, kl_coef=0.0))
    metrics = learner.train_step(batch)
    assert float(metrics["ppo_kl"]) == pytest.approx(0.0, abs=1e-7)
    assert float(metrics["pg_clipfrac_higher"]) == 0.0


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("group", [1, 2])
def test_sharded_step_equals_single_device_step(group):
    cfg = tiny()
    batch = make_batch(cfg, images=True, group=group, share=True)
    single = Learner(models.create(cfg, seed=5), _config(micro_batch_size=2, learning_rate=1e-6))
    single_metrics = single.train_step(batch)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = Learner(models.create(cfg, seed=5), _config(micro_batch_size=2, learning_rate=1e-6), mesh=mesh)
    kernel = sharded.state.params["language_model"]["layers"]["mlp"]["gate_proj"]["kernel"][...]  # stacked
    assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    sharded_metrics = sharded.train_step(batch)
    check = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    jax.tree.map(check, _first_moment(sharded), _first_moment(single))
    # Adam turns near-zero gradients into ±lr steps, so parameters agree to within 2·lr (the paper's lr here).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=0), _params(sharded), _params(single))
    assert float(sharded_metrics["loss"]) == pytest.approx(float(single_metrics["loss"]), abs=1e-6)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_optimizer_state_is_sharded_as_its_parameters(dtype):
    """Adam's moments (and bf16's compensation buffers) live where their parameters do, not replicated: a 7B
    model's optimizer state in full on every device would not fit."""
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    learner = Learner(models.create(tiny(), dtype=dtype), _config(), mesh=mesh)
    learner.train_step(make_batch(tiny()))  # and they stay there through an update
    params = {jax.tree_util.keystr(path): x for path, x in jax.tree_util.tree_leaves_with_path(learner.state.params)}
    per_parameter = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(learner.state.opt_state):
        key = jax.tree_util.keystr(path)
        owner = max((name for name in params if key.endswith(name)), key=len, default=None)
        if owner is None:
            assert leaf.sharding.is_fully_replicated, key  # step counts
        else:
            per_parameter += 1
            assert leaf.sharding == params[owner].sharding, key
    assert per_parameter == len(params) * (2 if dtype == "float32" else 3)  # mu, nu (+ Kahan compensation)
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(learner.state.opt_state))


def test_a_bf16_model_takes_its_pixels_in_bf16_with_the_same_result():
    """Pixels reach the device in the vision tower's dtype (`pixel_dtype`), half the bytes of the largest input of
    an image step; the tower casts them to it first anyway (as HF does), so log-probs are those of float32 pixels."""
    model = models.create(tiny(), dtype="bfloat16")
    batch = make_batch(tiny(), images=True)
    learner = Learner(model, _config())
    placed = learner.place_batch(batch)
    assert batch.pixel_values.dtype == np.float32 and placed.pixel_values.dtype == jnp.bfloat16
    learner.pixel_dtype = np.dtype(np.float32)  # as before: the float32 pixels, cast by the tower
    as_before = learner.place_batch(batch)
    assert as_before.pixel_values.dtype == np.float32
    log_probs = lambda b: np.asarray(learner.log_probs(learner.state.params, learner.state.frozen,
                                                       jax.tree.map(lambda x: x[None], b)))  # fmt: skip
    np.testing.assert_array_equal(log_probs(placed), log_probs(as_before))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_micro_batches_are_the_original_rows_and_span_every_shard_without_communication():
    """`place_batch` permutes rows so that the step's micro-batches come back, by a reshape and transpose local to
    each device, as the original contiguous rows (per-row and per-group leaves alike), each spread over all 4
    batch shards: no collective moves the batch (a contiguous micro-batch would sit on one device, and XLA would
    gather it onto every device, e.g. the 7B recipe's image patches)."""
    from staged_vlm_jax.rl.learner import _micro_layout, _split_micro_batches

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rows, group, length = 32, 2, 3
    numbered = np.arange(rows * length, dtype=np.int32).reshape(rows, length)
    batch = TrainBatch(
        input_ids=numbered, attention_mask=numbered, response_mask=numbered,
        advantages=np.arange(rows, dtype=np.float32), group_size=group,
        pixel_values=np.arange(rows // group * 5, dtype=np.float32).reshape(rows // group, 5),
    )  # fmt: skip
    learner = Learner(models.create(tiny(), seed=0), _config(num_minibatches=2, micro_batch_size=8), mesh=mesh)
    layout = _micro_layout(batch, learner.config)
    assert layout == (2, 2, 4)  # 2 mini-batches of 2 micro-batches of 4 groups (8 rows)
    split = jax.jit(lambda b: _split_micro_batches(b, layout))
    placed = learner.place_batch(batch)
    with jax.set_mesh(mesh):
        out = split(placed)
        hlo = split.lower(placed).compile().as_text()
    np.testing.assert_array_equal(np.asarray(out.input_ids), numbered.reshape(2, 2, 8, length))
    np.testing.assert_array_equal(np.asarray(out.advantages), np.arange(rows).reshape(2, 2, 8))
    np.testing.assert_array_equal(np.asarray(out.pixel_values), batch.pixel_values.reshape(2, 2, 4, 5))
    assert out.pixel_values.sharding.spec[2] == ("data", "fsdp")
    assert not [op for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce") if op in hlo], hlo


def test_micro_batches_that_do_not_spread_over_the_shards_are_named_with_the_fix():
    from staged_vlm_jax.rl.learner import micro_batch_spread_warning

    paper = LearnerConfig(micro_batch_size=40, num_minibatches=4)  # 2560 rows in groups of 5
    assert micro_batch_spread_warning(paper, 2560, 5, 8) is None  # 8 groups over 8 GPUs
    assert micro_batch_spread_warning(paper, 2560, 5, 64) == (
        "micro-batches of 8 groups of 5 do not divide over 64 batch shards, so their rows are replicated; set "
        "learner.micro_batch_size to a multiple of 320"
    )
    whole = LearnerConfig(num_minibatches=2)  # micro-batch = mini-batch = 4 rows
    assert "4 rows do not divide over 8 batch shards" in micro_batch_spread_warning(whole, 8, 1, 8)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})  # 4 batch shards
    learner = Learner(models.create(tiny(), seed=0), _config(micro_batch_size=2), mesh=mesh)
    with pytest.warns(UserWarning, match="multiple of 4"):
        learner.place_batch(make_batch(tiny()))


def test_batch_that_does_not_split_is_refused():
    cfg = tiny()
    learner = Learner(models.create(cfg, seed=6), _config(micro_batch_size=3))
    with pytest.raises(ValueError, match="learner.micro_batch_size=3"):
        learner.train_step(make_batch(cfg))
    shared = make_batch(cfg, group=4, share=True)
    with pytest.raises(ValueError, match="holding whole groups of 4"):
        Learner(models.create(cfg, seed=6), _config(micro_batch_size=2)).train_step(shared)
    assert Learner(models.create(cfg, seed=6), _config(micro_batch_size=2)).group_size(ROWS, 4) == 1
    with pytest.raises(ValueError, match="matches no parameter"):
        Learner(models.create(cfg), _config(trainable=("nothing_matches",)))


def test_chunked_log_probs_are_exact_and_keep_less_in_memory():
    """Response positions go through the LM head `logits_chunk` at a time (3 here, with 6 positions: two chunks
    and a padded tail at 4): same log-probs, entropies and gradients as all at once, and the compiled forward +
    backward keeps less temporary memory (the float32 logits of every position never exist together)."""
    cfg = models.tiny_config("qwen2_5_vl", vocab_size=4096)
    graphdef, params, rest = nnx.split(models.create(cfg, seed=6), nnx.Param, ...)
    batch = make_batch(cfg, images=True)

    def run(chunk: int):
        def loss(params, batch):
            log_probs, entropy = response_log_probs(nnx.merge(graphdef, params, rest), batch, 0.7, chunk)
            return jnp.sum(log_probs * batch.response_mask) + jnp.sum(entropy), (log_probs, entropy)

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (_, (log_probs, entropy)), grads = step(params, batch)
        return log_probs, entropy, grads, step.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    whole, chunked, tail = run(RESPONSE), run(3), run(4)
    for other in (chunked, tail):
        for a, b in zip(jax.tree.leaves(other[:3]), jax.tree.leaves(whole[:3]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert chunked[3] < whole[3], (chunked[3], whole[3])
