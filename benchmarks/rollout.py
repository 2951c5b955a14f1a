"""Rollout (generation) speed of our engine against transformers' ``generate``, side by side.

Builds a small random Qwen2.5-VL (text: 256 hidden, 4 layers; vision: 128 hidden, 2 blocks; ``--model tiny``: the
tests' 64-hidden, 2-layer model), saves it with
``save_pretrained`` and loads it with `models.load_hf`, so both sides hold identical weights. The prompts are
``--batch`` left-padded rows, each with one 224x224 image (256 patches -> 64 image tokens) and text of varying
length. The script first checks that greedy decoding gives the same tokens on both sides, then times:

- HF ``generate`` (PyTorch, sdpa attention, ``torch.no_grad``), greedy;
- ours, `RolloutEngine.generate` (one jitted program: vision tower, prefill, ``lax.while_loop`` decode), greedy;
- ours, sampled at temperature 1 with ``--n`` samples per prompt (one prefill per prompt, shared by its group).

Every call generates exactly its number of new tokens per row: the EOS id is ``vision_end``, which both sides
ban from being generated, and HF also gets ``min_new_tokens``. Each configuration is timed twice, generating
``--new-tokens`` tokens and generating 1 token (vision tower + prefill + one sampling step); the difference is the
decode loop, reported as decode tokens/s. Our engine's generation bucket is fixed to ``--new-tokens``, so both
calls run the same compiled program. Times are medians of ``--iters`` calls, each after one warm-up call; for ours
the warm-up compiles, and the compile time is reported as the warm-up's wall time minus the median call.

Run from the repository root (with the package installed, ``pip install -e .``, or with ``PYTHONPATH=.``)::

    python benchmarks/rollout.py [--batch 8] [--new-tokens 64] [--iters 3] [--n 5] [--model small|tiny]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
from collections.abc import Callable

import jax
import numpy as np
import torch
import transformers
from flax import nnx
from harness import hf_qwen2_5_vl, image_prompts, measure

from staged_vlm_jax import models
from staged_vlm_jax.models.qwen2_5_vl import Qwen2_5_VLConfig, tiny_config
from staged_vlm_jax.rl.rollout import EngineConfig, RolloutEngine

GRID = (1, 16, 16)  # one 224x224 image in 14 px patches -> 64 image tokens
TEXT_BEFORE, TEXT_AFTER = (4, 20), (8, 40)  # inclusive ranges of text lengths around the image


def bench_config(vocab_size: int = 4096) -> Qwen2_5_VLConfig:
    return tiny_config(
        vocab_size,
        text=dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=1_000_000.0, mrope_section=(8, 12, 12)),
        vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                    window_size=112, fullatt_block_indexes=(1,)),
    )  # fmt: skip


# --model: "small" is the default measurement; "tiny" is the tests' model (64 hidden, 2 layers), where per-step
# framework overhead rather than memory bandwidth sets the decode rate.
MODELS = {"small": bench_config, "tiny": lambda: tiny_config(4096)}


def hf_generate(
    model: torch.nn.Module, cfg: Qwen2_5_VLConfig, prompts: dict[str, np.ndarray]
) -> Callable[[int], np.ndarray]:
    """HF's greedy ``generate`` bound to ``prompts``: new-token count -> the new tokens [B, new_tokens]."""
    kwargs = {k: torch.from_numpy(a) for k, a in prompts.items()}
    # Without mm_token_type_ids transformers 5 silently falls back to 1-D rotary positions.
    kwargs["mm_token_type_ids"] = (kwargs["input_ids"] == cfg.image_token_id).long()
    prompt_len = prompts["input_ids"].shape[1]

    def run(new_tokens: int) -> np.ndarray:
        with torch.no_grad():
            out = model.generate(
                **kwargs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                suppress_tokens=list(cfg.special_token_ids),
                eos_token_id=cfg.vision_end_token_id,
                pad_token_id=cfg.text.pad_token_id,
            )
        return out[:, prompt_len:].numpy()

    return run


def our_generate(
    model: nnx.Module, cfg: Qwen2_5_VLConfig, prompts: dict[str, np.ndarray], bucket: int, n: int, greedy: bool
) -> Callable[[int], np.ndarray]:
    """`RolloutEngine.generate` bound to ``prompts``: new-token count (at most ``bucket``) -> the tokens.

    A fresh engine, so its first call compiles; every new-token count up to ``bucket`` runs that one program.
    """
    engine = RolloutEngine(EngineConfig(new_token_buckets=(bucket,)))

    def run(new_tokens: int) -> np.ndarray:
        out = engine.generate(
            model,
            prompts["input_ids"],
            prompts["attention_mask"],
            pixel_values=prompts["pixel_values"],
            image_grid_thw=prompts["image_grid_thw"],
            max_new_tokens=new_tokens,
            n=n,
            greedy=greedy,
            temperature=1.0,
            eos_token_ids=(cfg.vision_end_token_id,),  # banned from sampling, so never emitted
            pad_token_id=cfg.text.pad_token_id,
            rng=jax.random.key(0),
        )
        return np.asarray(out.tokens)  # blocks until the tokens are on the host

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the decode rate is the difference to a 1-token call)")

    transformers.utils.logging.disable_progress_bar()
    cfg = MODELS[args.model]()
    rng = np.random.default_rng(0)
    draw = lambda lo_hi: int(rng.integers(lo_hi[0], lo_hi[1] + 1))
    prompts = image_prompts(cfg, GRID, [(draw(TEXT_BEFORE), draw(TEXT_AFTER)) for _ in range(args.batch)])
    hf = hf_qwen2_5_vl(cfg, "sdpa")  # sdpa: transformers' fastest CPU attention
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours, _ = models.load_hf(tmp, dtype="float32")

    new = args.new_tokens
    runs = {  # name: (samples per prompt, generate)
        "ours, greedy": (1, our_generate(ours, cfg, prompts, new, 1, True)),
        "HF generate (torch sdpa), greedy": (1, hf_generate(hf, cfg, prompts)),
        f"ours, sampled, n={args.n}": (args.n, our_generate(ours, cfg, prompts, new, args.n, False)),
    }
    timings = {name: measure(run, new, args.iters) for name, (_, run) in runs.items()}
    ours_greedy, hf_greedy = timings["ours, greedy"], timings["HF generate (torch sdpa), greedy"]
    same = float(np.mean(ours_greedy.tokens == hf_greedy.tokens))
    print(f"parity (float32, greedy): {100 * same:.2f}% of new tokens identical to HF generate")
    if same < 1.0:
        print("WARNING: greedy tokens differ from HF generate (near-tie argmax flips are possible in a random model)")

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}")
    print(f"jax {jax.__version__}: {jax.device_count()} device(s), platform {jax.default_backend()}")
    print(f"torch {torch.__version__}: {torch.get_num_threads()} threads")
    print(f"transformers {transformers.__version__}")
    print(f"model {args.model!r}: text {cfg.text.hidden_size} hidden x {cfg.text.num_hidden_layers} layers, vocabulary "
          f"{cfg.text.vocab_size}; vision {cfg.vision.hidden_size} hidden x {cfg.vision.depth} blocks")  # fmt: skip
    print(
        f"batch {args.batch} x {prompts['input_ids'].shape[1]} prompt tokens ({int(np.prod(GRID))} patches per "
        f"image), {new} new tokens, float32, median of {args.iters} after 1 warm-up"
    )
    print()
    print("| implementation | call (s) | 1-token call (s) | new tokens/s | decode tokens/s | compile (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in timings.items():
        n = runs[name][0]
        compile_s = f"{t.first - t.full:.1f}" if name.startswith("ours") else "-"
        total_tps = args.batch * n * new / t.full
        decode_tps = args.batch * n / t.decode_step(new)
        print(f"| {name} | {t.full:.3f} | {t.one:.3f} | {total_tps:.0f} | {decode_tps:.0f} | {compile_s} |")
    ratio = hf_greedy.full / ours_greedy.full
    decode_ratio = (hf_greedy.full - hf_greedy.one) / (ours_greedy.full - ours_greedy.one)
    print(f"\nspeed-up, greedy (ours / HF tokens/s): {ratio:.2f}x overall, {decode_ratio:.2f}x decode only")


if __name__ == "__main__":
    main()
