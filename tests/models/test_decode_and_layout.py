"""KV-cache decoding vs the full forward, the jit-friendly vision layout and 3-D positions vs HF's loops, and the
image placeholder/feature count check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.data.batch import per_row_images
from staged_vlm_jax.models.qwen2_5_vl import rope_positions
from staged_vlm_jax.models.vision import vision_layout
from tests.models.qwen_fixtures import (
    assert_decode_matches_forward,
    assert_grouped_matches_forward,
    image_patches,
    left_pad,
    prompt,
    tiny,
)

GRIDS = [[(1, 8, 8)], [(1, 6, 4), (1, 4, 12)]]


@pytest.fixture(scope="module")
def model_and_batch():
    cfg = tiny()
    model = models.create(cfg, seed=1)
    rng = np.random.default_rng(2)
    rows = [prompt(rng, cfg, GRIDS[0], [3, 2]), prompt(rng, cfg, GRIDS[1], [1, 4, 2])]
    ids, mask = left_pad(rows, cfg.text.pad_token_id)
    grids = np.array([g for row in GRIDS for g in row])
    pixels = np.concatenate([image_patches(rng, cfg, tuple(g)) for g in grids])
    return model, cfg, ids, mask, pixels, grids


def test_incremental_decode_reproduces_full_forward(model_and_batch):
    model, cfg, *batch = model_and_batch
    assert_decode_matches_forward(model, cfg, *batch, steps=8, atol=1e-4)


@pytest.mark.parametrize("length", [1, 6])
def test_grouped_hidden_states_equal_the_full_forward_of_every_row(model_and_batch, length):
    """Shared-prefix learner forward: each prompt (with its images) once, its cache repeated to n responses."""
    model, cfg, *batch = model_and_batch
    assert_grouped_matches_forward(model, cfg, *batch, n=3, length=length, atol=2e-5)


def test_prompt_longer_than_cache_is_refused(model_and_batch):
    model, _, ids, mask, pixels, grids = model_and_batch
    with pytest.raises(ValueError, match="exceeds the KV cache size"):
        model.prefill(ids, mask, pixels, grids, cache_size=ids.shape[1] - 1)


@pytest.mark.parametrize(
    "grids", [[(1, 8, 8)], [(1, 4, 12), (1, 10, 6)], [(2, 6, 6), (1, 16, 2)], [(1, 18, 22)]], ids=str
)
def test_vision_layout_matches_hf(grids):
    torch = pytest.importorskip("torch")
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    cfg = tiny().vision
    grid_t = torch.tensor(grids)
    window_units = cfg.window_size // cfg.spatial_merge_size // cfg.patch_size
    hf_index, hf_cu = get_vision_window_index(grid_t, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
    hf_pos = get_vision_position_ids(grid_t, cfg.spatial_merge_size).numpy()
    n = int(np.prod(grids, axis=1).sum())
    layout = vision_layout(jnp.array(grids), n, cfg.spatial_merge_size, window_units)
    np.testing.assert_array_equal(np.asarray(layout.window_index), hf_index.numpy())
    unit = cfg.spatial_merge_size**2
    hf_pos_windowed = hf_pos.reshape(-1, unit, 2)[hf_index.numpy()].reshape(-1, 2)
    np.testing.assert_array_equal(np.asarray(layout.rotary_hw), hf_pos_windowed)
    # Segment boundaries equal HF's cumulative window lengths.
    seg = np.asarray(layout.window_segment)
    boundaries = np.concatenate([[0], np.flatnonzero(np.diff(seg)) + 1, [n]])
    np.testing.assert_array_equal(boundaries, hf_cu.numpy())
    frames = np.asarray(layout.frame_segment)
    assert frames.max() + 1 == sum(t for t, _, _ in grids)


def test_rope_positions_match_hf_get_rope_index(model_and_batch, tmp_path):
    torch = pytest.importorskip("torch")
    from tests.models.qwen_fixtures import hf_model

    _, cfg, ids, mask, _, grids = model_and_batch
    oracle = hf_model(cfg)
    hf_pos, hf_delta = oracle.model.get_rope_index(
        torch.tensor(ids, dtype=torch.long),
        mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)),
        image_grid_thw=torch.tensor(grids),
        attention_mask=torch.tensor(mask),
    )
    ours, next_position = rope_positions(
        jnp.array(ids), jnp.array(mask), jnp.array(grids), image_token_id=cfg.image_token_id, merge_size=2
    )
    np.testing.assert_array_equal(np.asarray(ours), hf_pos.numpy())
    np.testing.assert_array_equal(np.asarray(next_position), hf_delta[:, 0].numpy() + mask.sum(1))


def test_image_token_count_mismatch_raises_eagerly_and_poisons_under_jit(model_and_batch):
    model, cfg, ids, mask, pixels, grids = model_and_batch
    bad = ids.copy()
    bad[0, np.flatnonzero(bad[0] == cfg.image_token_id)[0]] = 5  # one placeholder fewer than features
    with pytest.raises(models.ImageTokenMismatchError, match=r"per row \[15, 18\] sum to 33.*describes 34 image"):
        model(bad, mask, pixels, grids)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
    assert np.isnan(np.asarray(jitted(state, bad, mask, pixels, grids))).all()
    assert np.isfinite(np.asarray(jitted(state, ids, mask, pixels, grids))).all()
    with pytest.raises(models.ImageTokenMismatchError, match="pixel_values has 135 patch rows but"):
        model(ids, mask, pixels[:-1], grids)


def test_padding_patches_do_not_change_logits(model_and_batch):
    """Extra zero patch rows (fixed-shape buckets) beyond the grids' total leave the logits unchanged."""
    model, _, ids, mask, pixels, grids = model_and_batch
    padded = np.concatenate([pixels, np.zeros((44, pixels.shape[1]), np.float32)])
    valid = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(model(ids, mask, padded, grids))[valid],
        np.asarray(model(ids, mask, pixels, grids))[valid],
        atol=1e-5,
    )


@pytest.mark.parametrize("n", [37, 64, 65])
def test_local_segment_attention_equals_dense_masked_attention(n):
    from staged_vlm_jax.models.layers import dot_product_attention
    from staged_vlm_jax.models.vision import local_segment_attention

    block = 16
    rng = np.random.default_rng(n)
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(1, block + 1)))
    segment = np.repeat(np.arange(len(lengths)), lengths)[:n]
    q, k, v = (jnp.asarray(rng.standard_normal((n, 2, 8)), jnp.float32) for _ in range(3))
    heads_major = lambda x: x.transpose(1, 0, 2)[None]
    mask = (segment[:, None] == segment[None, :])[None]
    dense = dot_product_attention(q[None], heads_major(k), heads_major(v), mask, 0.3)[0]
    local = local_segment_attention(q, k, v, jnp.asarray(segment), block, 0.3)
    np.testing.assert_allclose(np.asarray(local), np.asarray(dense), atol=1e-6, rtol=0)


def test_per_row_image_layout_gives_the_packed_logits(model_and_batch):

    model, _, ids, mask, pixels, grids = model_and_batch
    rows_pixels, rows_grids = per_row_images(pixels, grids, [1, 2], patches_per_row=80, slots_per_row=3)
    assert rows_pixels.shape == (2, 80, pixels.shape[1]) and rows_grids.shape == (2, 3, 3)
    valid = mask.astype(bool)
    expected = np.asarray(model(ids, mask, pixels, grids))[valid]
    np.testing.assert_allclose(np.asarray(model(ids, mask, rows_pixels, rows_grids))[valid], expected, atol=1e-5)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
    np.testing.assert_allclose(
        np.asarray(jitted(state, ids, mask, rows_pixels, rows_grids))[valid], expected, atol=1e-5
    )
    bad = ids.copy()
    bad[1, np.flatnonzero(bad[1] == model.cfg.image_token_id)[0]] = 5
    with pytest.raises(models.ImageTokenMismatchError, match="row 1: image placeholder tokens"):
        model(bad, mask, rows_pixels, rows_grids)
