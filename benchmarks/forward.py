"""Forward-pass speed of our Qwen2.5-VL against transformers' eager PyTorch implementation, side by side.

Builds a mid-size random Qwen2.5-VL (text: 512 hidden, 4 layers; vision: 256 hidden, 4 blocks), saves
it with ``save_pretrained``, loads it with `models.load_hf`, checks that both give the same logits, then
times one full forward (vision tower + decoder + LM head) on one 448x448 image (1024 patches -> 256 image
tokens) plus 64 text tokens per row. Ours runs under ``jax.jit`` (compile time reported separately); HF
runs eagerly under ``torch.no_grad``. Both report the median wall time over ``--iters`` calls after
``--warmup`` calls.

Run from the repository root (with the package installed, ``pip install -e .``, or with ``PYTHONPATH=.``)::

    python benchmarks/forward.py [--batch 1] [--iters 10] [--warmup 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from collections.abc import Callable

import jax
import numpy as np
import torch
import transformers
from flax import nnx
from harness import hf_qwen2_5_vl, image_prompts, median_seconds

from staged_vlm_jax import models
from staged_vlm_jax.models.qwen2_5_vl import Qwen2_5_VLConfig, tiny_config

PARITY_TOLERANCE = 1e-3
GRID = (1, 32, 32)  # one 448x448 image in 14 px patches
TEXT_LENS = (16, 48)  # text before and after the image: 16 + <start> 256 <end> + 48 = 322 tokens per row
INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")  # the positional forward args


def bench_config(vocab_size: int = 4096) -> Qwen2_5_VLConfig:
    return tiny_config(
        vocab_size,
        text=dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, rope_theta=1_000_000.0, mrope_section=(8, 12, 12)),
        vision=dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=512,
                    window_size=112, fullatt_block_indexes=(3,)),
    )  # fmt: skip


def hf_forward(
    model: torch.nn.Module, cfg: Qwen2_5_VLConfig, inputs: dict[str, np.ndarray]
) -> Callable[[], torch.Tensor]:
    """HF's forward bound to ``inputs``: the logits [B, T, vocab]."""
    kwargs = {k: torch.from_numpy(a) for k, a in inputs.items()}
    kwargs["pixel_values"] = kwargs["pixel_values"].to(model.dtype)
    # Without mm_token_type_ids transformers 5 silently falls back to 1-D rotary positions.
    kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == cfg.image_token_id).long()

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(**kwargs).logits

    return run


def our_forward(model: nnx.Module, inputs: dict[str, np.ndarray]) -> tuple[Callable[[], jax.Array], float]:
    """The jitted forward bound to ``inputs``, and its trace + compile time in seconds."""
    graphdef, state = nnx.split(model)

    def forward(state: nnx.State, *args: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(*args)

    args = [jax.device_put(inputs[k]) for k in INPUT_NAMES]
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, *args).compile()
    return lambda: compiled(state, *args), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()

    transformers.utils.logging.disable_progress_bar()
    cfg = bench_config()
    inputs = image_prompts(cfg, GRID, [TEXT_LENS] * args.batch)
    hf = hf_qwen2_5_vl(cfg, "eager")
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        # Parity in float32 (the oracle's precision), then both models in the timed dtype.
        ours, _ = models.load_hf(tmp, dtype="float32")
        expected = hf_forward(hf, cfg, inputs)().numpy()
        got = np.asarray(ours(*(inputs[k] for k in INPUT_NAMES)))
        delta = float(np.max(np.abs(got - expected)))
        scale = float(np.max(np.abs(expected)))
        print(f"parity (float32): max |delta logits| = {delta:.2e} (max |logit| = {scale:.2f})")
        if not delta <= PARITY_TOLERANCE:
            raise SystemExit(f"parity check failed: max |delta logits| {delta:.2e} > {PARITY_TOLERANCE:.0e}")
        if args.dtype != "float32":
            ours, _ = models.load_hf(tmp, dtype=args.dtype)
            hf = hf.to(getattr(torch, args.dtype))

    run_ours, compile_s = our_forward(ours, inputs)
    ours_ms = 1e3 * median_seconds(lambda: run_ours().block_until_ready(), args.iters, args.warmup)
    hf_ms = 1e3 * median_seconds(hf_forward(hf, cfg, inputs), args.iters, args.warmup)

    seq = inputs["input_ids"].shape[1]
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}")
    print(f"jax {jax.__version__}: {jax.device_count()} device(s), platform {jax.default_backend()}")
    print(f"torch {torch.__version__}: {torch.get_num_threads()} threads")
    print(f"transformers {transformers.__version__}")
    print(
        f"batch {args.batch} x {seq} tokens ({args.batch * int(np.prod(GRID))} patches), {args.dtype}, "
        f"median of {args.iters} after {args.warmup} warm-up"
    )
    print()
    print("| implementation | median forward (ms) | compile (s) |")
    print("|---|---:|---:|")
    print(f"| ours (jax.jit) | {ours_ms:.1f} | {compile_s:.1f} |")
    print(f"| HF transformers (torch eager) | {hf_ms:.1f} | - |")
    print(f"\nspeed-up (HF / ours): {hf_ms / ours_ms:.2f}x")


if __name__ == "__main__":
    main()
