"""Tiny Qwen-VL checkpoints written by transformers (the oracle) and prompts with images."""

from __future__ import annotations

import numpy as np

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
