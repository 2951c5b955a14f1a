"""Tiny Qwen2.5-VL checkpoints written by transformers (the oracle) and prompts with images."""

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
    """A transformers Qwen2_5_VLForConditionalGeneration (fp32, eager) with ``cfg``'s shapes and random weights."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    hf_cfg = Qwen2_5_VLConfig(**cfg.to_hf())
    hf_cfg._attn_implementation = "eager"
    model = Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
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
