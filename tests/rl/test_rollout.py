"""Rollout engine: greedy parity (full forward, transformers' generate), log-prob parity, shared prefill, buckets,
mesh, memory bound."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from staged_vlm_jax import models
from staged_vlm_jax.data.batch import bucket
from staged_vlm_jax.models.sharding import make_mesh
from staged_vlm_jax.rl import rollout
from staged_vlm_jax.rl.rollout import EngineConfig, RolloutEngine, choose_tokens, sample_categorical
from tests.models.qwen_fixtures import hf_model, image_patches, left_pad, prompt, stepwise_greedy, tiny

torch = pytest.importorskip("torch")

NEW = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny()
    oracle = hf_model(cfg, seed=7)
    path = tmp_path_factory.mktemp("ckpt")
    oracle.save_pretrained(path)
    model, _ = models.load_hf(path)
    rng = np.random.default_rng(8)
    grids = [(1, 8, 8), (1, 4, 12)]
    ids, mask = left_pad(
        [prompt(rng, cfg, [grids[0]], [3, 4]), prompt(rng, cfg, [grids[1]], [6, 2])], cfg.text.pad_token_id
    )
    pixels = np.concatenate([image_patches(rng, cfg, g) for g in grids])
    return model, oracle, cfg, ids, mask, pixels, np.array(grids), path


def _kwargs(cfg, **extra):
    return dict(eos_token_ids=(cfg.text.eos_token_id,), pad_token_id=cfg.text.pad_token_id, **extra)


def _greedy(model, cfg, ids, mask, pixels, grids):
    return rollout.generate(model, ids, mask, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=NEW,
                            greedy=True, rng=jax.random.key(0), **_kwargs(cfg))  # fmt: skip


def test_greedy_equals_stepwise_argmax_of_full_forward(setup):
    model, _, cfg, ids, mask, pixels, grids, _ = setup
    out = _greedy(model, cfg, ids, mask, pixels, grids)
    expected = stepwise_greedy(model, cfg, ids, mask, pixels, grids, NEW)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)
    assert out.tokens.shape == (2, NEW)


def test_greedy_equals_transformers_generate(setup):
    model, oracle, cfg, ids, mask, pixels, grids, _ = setup
    out = _greedy(model, cfg, ids, mask, pixels, grids)
    with torch.no_grad():
        hf = oracle.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pixels),
            image_grid_thw=torch.tensor(grids),
            mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)),
            max_new_tokens=NEW,
            min_new_tokens=NEW,  # HF pads after EOS itself, but never stops early here
            do_sample=False,
            suppress_tokens=list(cfg.special_token_ids),
            eos_token_id=cfg.text.eos_token_id,
            pad_token_id=cfg.text.pad_token_id,
        )[:, ids.shape[1] :].numpy()
    ours = np.asarray(out.tokens)
    # min_new_tokens stops HF from choosing EOS; compare up to (excluding) our first EOS per row.
    for row in range(2):
        stop = int(out.lengths[row]) - int(ours[row, int(out.lengths[row]) - 1] == cfg.text.eos_token_id)
        np.testing.assert_array_equal(ours[row, :stop], hf[row, :stop])
    assert int(out.lengths.min()) == NEW  # this seed emits no EOS, so all NEW tokens were compared


def test_sampled_log_probs_equal_full_forward_recompute(setup):
    model, _, cfg, ids, mask, pixels, grids, _ = setup
    temperature, n = 0.7, 3
    out = rollout.generate(
        model, ids, mask, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=NEW, n=n, temperature=temperature,
        top_p=0.9, top_k=50, rng=jax.random.key(1), **_kwargs(cfg),
    )  # fmt: skip
    tokens, resp_mask = np.asarray(out.tokens), np.asarray(out.mask)
    full_ids = np.concatenate([np.repeat(ids, n, 0), tokens], axis=1)
    full_mask = np.concatenate([np.repeat(mask, n, 0), resp_mask], axis=1)
    # The image rows are repeated with the prompts: each prompt's patches n times, grids likewise.
    per_prompt = np.split(pixels, np.cumsum(np.prod(grids, 1))[:-1])
    rep_pixels = np.concatenate([p for p in per_prompt for _ in range(n)])
    logits = np.asarray(model(full_ids, full_mask, rep_pixels, np.repeat(grids, n, 0)), np.float64)
    logits = logits[:, ids.shape[1] - 1 : -1] / temperature
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    expected = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    valid = resp_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.log_probs)[valid], expected[valid], atol=1e-4)
    assert (np.asarray(out.log_probs)[~valid] == 0).all()
    assert not np.isin(tokens[valid], cfg.special_token_ids).any()
    # Groups of n contiguous rows come from the same prompt but differ in their samples.
    assert len({tuple(r) for r in tokens[:n]}) > 1


def test_group_shares_one_prefill_and_buckets_do_not_recompile(setup):
    model, _, cfg, ids, mask, pixels, grids, _ = setup
    engine = RolloutEngine()
    for extra in (0, 3, 9):  # prompt lengths 45, 48, 54 (more left padding): one 64-token bucket
        padded_ids = np.pad(ids, [(0, 0), (extra, 0)], constant_values=cfg.text.pad_token_id)
        padded_mask = np.pad(mask, [(0, 0), (extra, 0)])
        engine.generate(
            model, padded_ids, padded_mask, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=NEW - extra // 3,
            n=5, rng=jax.random.key(extra), **_kwargs(cfg),
        )  # fmt: skip
    assert engine.num_compilations == 1
    assert engine.last_trace["prefill_batch"] == 2  # the vision tower and prefill see each prompt once...
    assert engine.last_trace["decode_batch"] == 10  # ...the decode loop sees the 5 samples of each
    engine.generate(model, ids, mask, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=40, n=5,
                    rng=jax.random.key(9), **_kwargs(cfg))  # fmt: skip
    assert engine.num_compilations == 2  # a new generation-length bucket compiles once more


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_same_greedy_tokens_on_8_device_mesh(setup):
    model, _, cfg, ids, mask, pixels, grids, path = setup
    args = dict(pixel_values=pixels, image_grid_thw=grids, max_new_tokens=NEW, greedy=True, rng=jax.random.key(0))
    single = rollout.generate(model, ids, mask, **args, **_kwargs(cfg))
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded_model, _ = models.load_hf(path, mesh=mesh)
    out = RolloutEngine(mesh=mesh).generate(sharded_model, ids, mask, **args, **_kwargs(cfg))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(single.tokens))
    np.testing.assert_allclose(np.asarray(out.log_probs), np.asarray(single.log_probs), atol=1e-5)


def test_a_cache_over_the_memory_bound_is_sampled_in_chunks(setup):
    """2 prompts x n 5 need 400 KiB of KV cache; under a 300 kB bound the engine runs one prompt per program (the
    same compiled program twice) and greedy tokens are those of one call; under 100 kB not even one fits."""
    model, _, cfg, ids, mask, pixels, grids, _ = setup
    args = dict(pixel_values=pixels, image_grid_thw=grids, max_new_tokens=NEW, n=5, greedy=True, rng=jax.random.key(0))
    whole = RolloutEngine().generate(model, ids, mask, **args, **_kwargs(cfg))
    engine = RolloutEngine(EngineConfig(max_cache_bytes=300_000))
    chunked = engine.generate(model, ids, mask, **args, **_kwargs(cfg))
    assert engine.last_chunks == 2 and engine.num_compilations == 1
    for got, expected in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    with pytest.raises(rollout.CacheTooLargeError, match=r"even for 1 prompts × n 5 × 80 slots"):
        RolloutEngine(EngineConfig(max_cache_bytes=100_000)).generate(model, ids, mask, **args, **_kwargs(cfg))


def test_a_stream_in_segments_samples_what_generate_samples(setup):
    """`start` + `advance` (3 tokens at a time) give `generate`'s tokens for the same key, sampled with a group of
    3 per prompt; a row ended early by the host emits no more tokens while the others go on."""
    model, _, cfg, ids, mask, pixels, grids, _ = setup
    args = dict(pixel_values=pixels, image_grid_thw=grids, max_new_tokens=NEW, n=3, rng=jax.random.key(4),
                temperature=0.8, **_kwargs(cfg))  # fmt: skip
    engine = RolloutEngine()
    whole = engine.generate(model, ids, mask, **args)
    stream = engine.start(model, ids, mask, **args)
    parts = []
    while not stream.finished:
        parts.append(stream.advance(3))
    tokens, token_mask = (np.concatenate(part, axis=1) for part in zip(*parts, strict=True))
    np.testing.assert_array_equal(tokens, np.asarray(whole.tokens)[:, : tokens.shape[1]])
    np.testing.assert_array_equal(token_mask.sum(axis=1), np.asarray(whole.lengths))

    stream = engine.start(model, ids, mask, **{**args, "greedy": True})
    first, _ = stream.advance(2)
    rest, rest_mask = stream.advance(NEW, finish=[1])
    assert rest_mask[1].sum() == 0 and (rest[1] == cfg.text.pad_token_id).all() and stream.done[1]
    greedy = engine.generate(model, ids, mask, **{**args, "greedy": True})
    np.testing.assert_array_equal(np.concatenate([first, rest], axis=1)[0], np.asarray(greedy.tokens)[0])


def test_every_row_stops_at_eos():
    cfg = tiny()
    model = models.create(cfg, seed=2)
    ids, mask = left_pad([[1, 2, 3], [4, 5]], cfg.text.pad_token_id)
    everything = tuple(range(cfg.text.vocab_size))
    out = rollout.generate(model, ids, mask, max_new_tokens=6, n=2, eos_token_ids=everything,
                           pad_token_id=cfg.text.pad_token_id, rng=jax.random.key(3))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out.lengths), [1, 1, 1, 1])
    assert (np.asarray(out.tokens)[:, 1:] == cfg.text.pad_token_id).all()
    np.testing.assert_array_equal(np.asarray(out.mask)[:, 0], 1)


def test_choose_tokens_truncation():
    logits = jax.numpy.asarray(np.random.default_rng(0).standard_normal((64, 50)), jax.numpy.float32)
    one = jax.numpy.asarray(1.0)
    greedy, _ = choose_tokens(logits, jax.random.key(0), one, one, top_k=0, greedy=True, banned=(3,))
    top1, _ = choose_tokens(logits, jax.random.key(0), one, one, top_k=1, greedy=False, banned=(3,))
    tiny_p, _ = choose_tokens(
        logits, jax.random.key(0), one, jax.numpy.asarray(1e-6), top_k=0, greedy=False, banned=(3,)
    )
    masked = np.asarray(logits).copy()
    masked[:, 3] = -np.inf
    np.testing.assert_array_equal(np.asarray(greedy), masked.argmax(-1))
    np.testing.assert_array_equal(np.asarray(top1), masked.argmax(-1))
    np.testing.assert_array_equal(np.asarray(tiny_p), masked.argmax(-1))


@pytest.mark.parametrize("vocab", [7, 50])  # 7 and 50 are not multiples of their block sizes (2, 7)
def test_sample_categorical_draws_from_the_softmax(vocab):
    """Frequencies over 40,000 draws match softmax(logits) within 5 standard errors; −inf tokens never come up."""
    rng = np.random.default_rng(vocab)
    logits = rng.standard_normal((2, vocab)).astype(np.float32) * 2
    logits[:, ::3] = -np.inf
    draws = 20_000
    keys = jax.random.split(jax.random.key(0), draws)
    tokens = np.asarray(jax.jit(jax.vmap(lambda k: sample_categorical(k, jax.numpy.asarray(logits))))(keys))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    for row in range(2):
        freq = np.bincount(tokens[:, row], minlength=vocab) / draws
        assert (freq[::3] == 0).all()
        np.testing.assert_array_less(np.abs(freq - probs[row]), 5 * np.sqrt(probs[row] * (1 - probs[row]) / draws)
                                     + 1e-12)  # fmt: skip


def test_bucket_rounding():
    assert bucket(45, (64, 128)) == 64
    assert bucket(64, (64, 128)) == 64
    assert bucket(300, (64, 128)) == 384
    assert bucket(3, (1, 2, 4, 8), multiple_of=4) == 4
    assert bucket(1, (1, 2, 4, 8), multiple_of=4) == 4
