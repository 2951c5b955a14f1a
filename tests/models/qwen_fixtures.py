"""Tiny Qwen-VL checkpoints written by transformers (the oracle), prompts with images, and the checks every
family's cached and shared-prompt passes must pass."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from staged_vlm_jax.data import batch
from staged_vlm_jax.models import tiny_config


def randomize_(torch_model, seed: int = 0) -> None:
    """Gives every parameter (norm scales and biases included) random values, so parity tests see all of them."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            base = 1.0 if name.endswith("norm.weight") or "norm" in name.split(".")[-2] else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


def hf_model(cfg, seed: int = 0):
    """The transformers model of ``cfg``'s family (e.g. Qwen2_5_VLForConditionalGeneration; fp32, eager) with its
    shapes and random weights."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf())
    hf_cfg._attn_implementation = "eager"
    model = getattr(transformers, cfg.architecture)(hf_cfg).eval()
    randomize_(model, seed)
    return model


def image_patches(rng: np.random.Generator, cfg, grid: tuple[int, int, int]) -> np.ndarray:
    """Random flattened patches [t·h·w, C·T·P·P] as the processor emits them."""
    v = cfg.vision
    return rng.standard_normal((int(np.prod(grid)), v.in_channels * v.temporal_patch_size * v.patch_size**2)).astype(
        np.float32
    )


def prompt(rng: np.random.Generator, cfg, grids: list[tuple[int, int, int]], text_lens: list[int]) -> list[int]:
    """text, <vision_start> image-pads <vision_end>, text, ... (len(text_lens) == len(grids) + 1)."""
    merge = cfg.vision.spatial_merge_size**2
    ids: list[int] = []
    for i, n in enumerate(text_lens):
        ids += rng.integers(0, cfg.image_token_id - 1, n).tolist()
        if i < len(grids):
            ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (int(np.prod(grids[i])) // merge)
            ids += [cfg.vision_end_token_id]
    return ids


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    return batch.left_pad(rows, max(map(len, rows)), pad_id)


def tiny(tie: bool = False):
    return tiny_config("qwen2_5_vl", tie_word_embeddings=tie)


# Parity prompts: image grids per row and text lengths per row (one more than its images); rows are left-padded.
PARITY_CASES = {
    "text_only": ([[]], [[9]]),
    "one_image": ([[(1, 8, 8)]], [[5, 7]]),
    "two_images_different_grids": ([[(1, 8, 8), (1, 4, 12)]], [[3, 4, 6]]),
    "left_padded_batch": ([[(1, 8, 8)], [(1, 6, 4)]], [[2, 3], [7, 11]]),
}


def case_inputs(cfg, case: str, seed: int = 0):
    """input_ids, attention_mask, packed pixel_values and image_grid_thw (None without images) of a parity case."""
    grids_per_row, text_lens = PARITY_CASES[case]
    rng = np.random.default_rng(seed)
    rows = [prompt(rng, cfg, g, t) for g, t in zip(grids_per_row, text_lens, strict=True)]
    ids, mask = left_pad(rows, cfg.text.pad_token_id)
    grids = [g for row in grids_per_row for g in row]
    pixels = np.concatenate([image_patches(rng, cfg, g) for g in grids]) if grids else None
    return ids, mask, pixels, np.array(grids, np.int64) if grids else None


def hf_logits(oracle, cfg, ids, mask, pixels=None, grids=None) -> np.ndarray:
    """The transformers model's logits for our inputs (packed images)."""
    import torch

    kwargs = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask)}
    if pixels is not None:
        kwargs.update(
            pixel_values=torch.tensor(pixels),
            image_grid_thw=torch.tensor(grids),
            # Without mm_token_type_ids transformers 5 silently falls back to 1-D positions.
            mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)),
        )
    with torch.no_grad():
        return oracle(**kwargs).logits.numpy()


def stepwise_greedy(model, cfg, ids, mask, pixels, grids, new: int) -> np.ndarray:
    """``new`` greedy tokens per row from the full forward re-run on the growing sequence (special tokens banned,
    pad after EOS): the reference the rollout engine's cached greedy decoding must equal."""
    seq, seq_mask = ids.copy(), mask.copy()
    expected = np.full((len(ids), new), cfg.text.pad_token_id)
    done = np.zeros(len(ids), bool)
    for t in range(new):
        logits = np.array(model(seq, seq_mask, pixels, grids))[:, -1]
        logits[:, list(cfg.special_token_ids)] = -np.inf
        token = np.where(done, cfg.text.pad_token_id, logits.argmax(-1))
        expected[:, t] = token
        done |= token == cfg.text.eos_token_id
        seq = np.concatenate([seq, token[:, None]], axis=1)
        seq_mask = np.concatenate([seq_mask, np.ones((len(ids), 1), np.int32)], axis=1)
    return expected


def assert_decode_matches_forward(model, cfg, ids, mask, pixels, grids, *, steps: int, atol: float) -> None:
    """Prefill (images included) then ``steps`` one-token decode steps give the full forward's logits at every
    position: the last prompt position's only from the prefill, then each new token's; the cache counts them all."""
    new_tokens = np.random.default_rng(3).integers(0, cfg.image_token_id - 1, (ids.shape[0], steps)).astype(np.int32)
    full_ids = np.concatenate([ids, new_tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(new_tokens)], axis=1)
    expected = np.asarray(model(full_ids, full_mask, pixels, grids))

    graphdef, state = nnx.split(model)
    prefill = jax.jit(lambda s, *a: nnx.merge(graphdef, s).prefill(*a, cache_size=ids.shape[1] + steps))
    decode = jax.jit(lambda s, tok, cache: nnx.merge(graphdef, s).decode(tok, cache))
    logits, cache = prefill(state, ids, mask, pixels, grids)
    assert logits.shape == (ids.shape[0], cfg.text.vocab_size)
    np.testing.assert_allclose(np.asarray(logits), expected[:, ids.shape[1] - 1], atol=atol, rtol=0)
    for t in range(steps):
        step_logits, cache = decode(state, new_tokens[:, t : t + 1], cache)
        np.testing.assert_allclose(np.asarray(step_logits[:, 0]), expected[:, ids.shape[1] + t], atol=atol, rtol=0,
                                   err_msg=f"step {t}")  # fmt: skip
    assert int(cache.length) == ids.shape[1] + steps


def assert_grouped_matches_forward(model, cfg, ids, mask, pixels, grids, *, n: int, length: int, atol: float):
    """The learner's shared-prompt pass (each prompt with its images once, its cache repeated to ``n`` responses of
    up to ``length`` tokens, right-padded) gives the hidden states of the full forward of every row."""
    per_row = batch.images_per_row(ids, grids, cfg.image_token_id, cfg.vision.spatial_merge_size)
    row_pixels, row_grids = batch.per_row_images(pixels, grids, per_row)
    rng = np.random.default_rng(4)
    responses = rng.integers(0, cfg.image_token_id - 1, (ids.shape[0] * n, length)).astype(np.int32)
    lengths = rng.integers(1, length + 1, ids.shape[0] * n)
    response_mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    responses = np.where(response_mask > 0, responses, cfg.text.pad_token_id)

    repeat = lambda x: np.repeat(x, n, 0)
    full_ids = np.concatenate([repeat(ids), responses], axis=1)
    full_mask = np.concatenate([repeat(mask), response_mask], axis=1)
    expected = model.hidden_states(full_ids, full_mask, repeat(row_pixels), repeat(row_grids))
    expected = np.asarray(expected)[:, ids.shape[1] - 1 : -1]
    got = jax.jit(model.grouped_hidden_states)(ids, mask, responses, row_pixels, row_grids)
    assert got.shape == expected.shape
    valid = response_mask.astype(bool)  # positions after a row's last token predict nothing
    np.testing.assert_allclose(np.asarray(got)[valid], expected[valid], atol=atol, rtol=0)
