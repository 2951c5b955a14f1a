"""Pieces shared by the side-by-side benchmarks: wall-clock medians, image prompts, the transformers oracle.

Benchmarks run as scripts (``python benchmarks/<name>.py``), which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from staged_vlm_jax.models.qwen2_5_vl import Qwen2_5_VLConfig


def median_seconds(run: Callable[[], object], iters: int, warmup: int = 0) -> float:
    """Median wall time of ``run()`` over ``iters`` calls after ``warmup`` calls; ``run`` must block until done."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall times in seconds: the first full call (ours: compiles), median full and 1-token calls; its tokens."""

    first: float
    full: float
    one: float
    tokens: np.ndarray

    def decode_step(self, new_tokens: int) -> float:
        """One decode step: the full call's excess over the 1-token call (vision tower + prefill + one sampling
        step), over the extra steps."""
        return (self.full - self.one) / (new_tokens - 1)


def measure(run: Callable[[int], np.ndarray], new_tokens: int, iters: int) -> Timing:
    """Times ``run(new_tokens)`` and ``run(1)``, each as the median of ``iters`` calls after one warm-up call."""
    start = time.perf_counter()
    tokens = run(new_tokens)
    first = time.perf_counter() - start
    full = median_seconds(lambda: run(new_tokens), iters)
    run(1)
    return Timing(first=first, full=full, one=median_seconds(lambda: run(1), iters), tokens=tokens)


def image_prompts(
    cfg: Qwen2_5_VLConfig, grid: tuple[int, int, int], text_lengths: Sequence[tuple[int, int]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Left-padded rows ``text <vision_start> image-pads <vision_end> text``, one random image of ``grid`` each;
    ``text_lengths`` gives (before, after) per row. HF forward/generate keyword arrays (packed patches)."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    image = [cfg.vision_start_token_id] + [cfg.image_token_id] * (int(np.prod(grid)) // v.spatial_merge_size**2)
    rows = [
        rng.integers(0, cfg.text.pad_token_id, before).tolist() + image + [cfg.vision_end_token_id]
        + rng.integers(0, cfg.text.pad_token_id, after).tolist()
        for before, after in text_lengths
    ]  # fmt: skip
    width = max(map(len, rows))
    input_ids = np.full((len(rows), width), cfg.text.pad_token_id, np.int64)
    attention_mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = row
        attention_mask[i, width - len(row) :] = 1
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": rng.standard_normal((len(rows) * int(np.prod(grid)), patch_dim)).astype(np.float32),
        "image_grid_thw": np.array([grid] * len(rows), np.int64),
    }


def hf_qwen2_5_vl(cfg: Qwen2_5_VLConfig, attention: str, seed: int = 0):
    """transformers' Qwen2_5_VLForConditionalGeneration for ``cfg`` with its own random initialisation."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.Qwen2_5_VLConfig(**cfg.to_hf())
    hf_cfg._attn_implementation = attention
    return transformers.Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
