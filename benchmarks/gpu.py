"""The scale issue's GPU figures in one run, ours and transformers side by side on the same card.

At the Qwen2.5-VL-3B shape (36 decoder layers of 2048, 16 / 2 heads, 151,936-token tied vocabulary, the 32-block
vision tower; random weights, bf16), on one GPU:

- decode: greedy generation of ``--new-tokens`` tokens after ``--prompt`` text tokens at batch 64 and 256 (ours:
  `RolloutEngine.generate`; transformers: ``generate`` with sdpa at batch 64). The decode step time is the
  difference between a full and a 1-token call over the extra steps; "roofline" is the fraction of the card's HBM
  bandwidth that reading the decoder's weights, the LM head and every row's KV cache (its average context) once
  per step would take in that time. Tokens/s = rows / step time.
- train: our GRPO `Learner` step on 64 rows = 16 prompts x 4 responses of 256 + 256 tokens, 2 mini-batches, prompts
  shared by their group; transformers: forward + backward of the same 64 x 512 tokens (loss on every position).
  MFU = model FLOPs of what was executed (`plan.Flops`: 2 per weight per token, attention, the reference and old
  log-prob passes, remat's extra forward) / time / the card's dense bf16 peak. Peak memory from the allocator.
- compile: seconds to compile the rollout program (first call minus a timed call) and the train step (lower +
  compile).

Ours decodes first and trains last: the train step donates the weights, and its peak memory, read from the
allocator's process-wide peak, is far above decode's.

transformers runs first and hands its memory back (`torch.cuda.empty_cache`); JAX does not preallocate, so each side
gets the card. ``--shape tiny`` runs the same code at a small shape (a CPU smoke test; no roofline or MFU without a
known card). Budget: under 6 minutes on one H100/H200. Run from the repository root::

    python benchmarks/gpu.py [--shape 3b|tiny] [--iters 3] [--no-hf]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # transformers and JAX share the card in turn

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from harness import Timing, measure, median_seconds  # noqa: E402

from staged_vlm_jax import models  # noqa: E402
from staged_vlm_jax.models.qwen2_5_vl import Qwen2_5_VLConfig, tiny_config  # noqa: E402
from staged_vlm_jax.rl.learner import Learner, LearnerConfig, TrainBatch  # noqa: E402
from staged_vlm_jax.rl.rollout import EngineConfig, RolloutEngine  # noqa: E402
from staged_vlm_jax.train.plan import Flops  # noqa: E402

# (dense bf16 FLOP/s, HBM bytes/s) by `device_kind` prefix: the SXM cards' datasheet figures.
CARDS = {"NVIDIA H100": (989e12, 3.35e12), "NVIDIA H200": (989e12, 4.8e12)}

SHAPES: dict[str, Callable[[], Qwen2_5_VLConfig]] = {
    "3b": lambda: tiny_config(
        151936, tie_word_embeddings=True,
        text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                  num_key_value_heads=2, rope_theta=1_000_000.0, mrope_section=(16, 24, 24)),
        vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                    window_size=112, fullatt_block_indexes=(7, 15, 23, 31)),
    ),
    "tiny": lambda: tiny_config(4096, text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                                mrope_section=(4, 6, 6))),
}  # fmt: skip


def prompts(cfg: Qwen2_5_VLConfig, rows: int, length: int, seed: int = 0) -> np.ndarray:
    """Full-length random text prompts (no padding), ids below the special tokens."""
    return np.random.default_rng(seed).integers(0, cfg.text.pad_token_id, (rows, length)).astype(np.int32)


def decode_bytes(model, cfg: Qwen2_5_VLConfig, rows: int, context: float) -> float:
    """Bytes one decode step must read: the decoder's weights and final norm, the LM head (the embedding when
    tied) and each row's KV cache over ``context`` positions."""
    nbytes = lambda module: sum(x.nbytes for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    weights = nbytes(model.language_model.layers) + nbytes(model.language_model.norm)
    weights += nbytes(model.language_model.embed_tokens if cfg.tie_word_embeddings else model.lm_head)
    t = cfg.text
    kv = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * jnp.dtype(jnp.bfloat16).itemsize
    return weights + rows * context * kv


def ours_decode(model, cfg: Qwen2_5_VLConfig, ids: np.ndarray, new_tokens: int, iters: int) -> Timing:
    """`harness.measure` of greedy generation: its first call's excess over a timed one is the compile time."""
    engine = RolloutEngine(EngineConfig(new_token_buckets=(new_tokens,)))

    def run(tokens: int):
        out = engine.generate(model, ids, np.ones_like(ids), max_new_tokens=tokens, greedy=True,
                              eos_token_ids=(cfg.vision_end_token_id,), pad_token_id=cfg.text.pad_token_id,
                              rng=jax.random.key(0))  # fmt: skip
        return np.asarray(out.tokens)

    return measure(run, new_tokens, iters)


def train_batch(cfg: Qwen2_5_VLConfig, groups: int, n: int, prompt: int, response: int) -> TrainBatch:
    rng = np.random.default_rng(1)
    ids = np.concatenate([np.repeat(prompts(cfg, groups, prompt), n, 0), prompts(cfg, groups * n, response, 2)], 1)
    return TrainBatch(
        input_ids=ids,
        attention_mask=np.ones_like(ids),
        response_mask=np.ones((groups * n, response), np.int32),
        advantages=rng.standard_normal(groups * n).astype(np.float32),
        group_size=n,
    )


def ours_train(model, batch: TrainBatch, config: LearnerConfig, iters: int) -> tuple[float, float]:
    """(compile seconds, median step seconds) of the GRPO train step."""
    learner = Learner(model, config)
    placed = learner.place_batch(batch)
    start = time.perf_counter()
    with learner._tracing():
        compiled = learner._step.lower(learner.state, placed).compile()
    compile_s = time.perf_counter() - start

    def step():
        learner.state, metrics = compiled(learner.state, placed)
        jax.block_until_ready(metrics)

    return compile_s, median_seconds(step, iters, warmup=1)


def hf_model(cfg: Qwen2_5_VLConfig, device: str):
    import torch
    import transformers

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2_5_VLConfig(**cfg.to_hf())
    hf_cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = transformers.Qwen2_5_VLForConditionalGeneration(hf_cfg)
    return model.to(torch.bfloat16 if device == "cuda" else torch.float32)


def hf_figures(cfg: Qwen2_5_VLConfig, args, rows: int, train_rows: int, train_length: int) -> dict[str, float]:
    """transformers' decode step at ``rows`` rows and forward + backward seconds and peak bytes (bf16, sdpa)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    model = hf_model(cfg, device).eval()
    ids = torch.from_numpy(prompts(cfg, rows, args.prompt)).long().to(device)

    def run(tokens: int):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, suppress_tokens=list(cfg.special_token_ids),
                                 eos_token_id=cfg.vision_end_token_id, pad_token_id=cfg.text.pad_token_id)  # fmt: skip
        return out[:, ids.shape[1] :].cpu().numpy()  # waits for the card

    decode = measure(run, args.new_tokens, args.iters)
    model.train()
    batch = torch.from_numpy(prompts(cfg, train_rows, train_length, 3)).long().to(device)

    def step():
        model(input_ids=batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)
        sync()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, args.iters, warmup=1)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else float("nan")
    return {"decode_step_s": decode.decode_step(args.new_tokens), "train_s": seconds, "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--prompt", type=int, default=192, help="decode prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="decode batch sizes (ours)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--no-hf", dest="hf", action="store_false", help="skip the transformers side")
    args = parser.parse_args()

    cfg = SHAPES[args.shape]()
    device = jax.devices()[0]
    peak_flops, bandwidth = next((v for k, v in CARDS.items() if device.device_kind.startswith(k)), (None, None))
    groups, n, length = 16, 4, 256  # the train step: 64 rows of 256 + 256 tokens
    print(f"{datetime.date.today()} {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"shape {args.shape}")  # fmt: skip

    hf = hf_figures(cfg, args, args.batches[0], groups * n, 2 * length) if args.hf else None
    if hf:  # transformers' model is gone with hf_figures' frame; hand its cached blocks back to the card
        import torch

        gc.collect()
        torch.cuda.empty_cache()

    model = models.create(cfg, dtype="bfloat16", seed=0)
    flops = Flops(model)
    context = args.prompt + args.new_tokens / 2
    roofline = lambda rows, step_s: (
        f"{decode_bytes(model, cfg, rows, context) / step_s / bandwidth:.0%}" if bandwidth else "n/a"
    )
    print("decode (greedy)           rows   step ms   tokens/s   roofline   compile s")
    for rows in args.batches:
        ours = ours_decode(model, cfg, prompts(cfg, rows, args.prompt), args.new_tokens, args.iters)
        step = ours.decode_step(args.new_tokens)
        print(f"  ours                   {rows:5d}  {step * 1e3:8.2f}  {rows / step:9.0f}"
              f"   {roofline(rows, step):>8}   {ours.first - ours.full:9.1f}")  # fmt: skip
        if hf and rows == args.batches[0]:
            theirs = hf["decode_step_s"]
            print(f"  transformers           {rows:5d}  {theirs * 1e3:8.2f}  {rows / theirs:9.0f}   "
                  f"{roofline(rows, theirs):>8}   (ours {theirs / step:.1f}x faster)")  # fmt: skip

    # Last: the step donates the model's weights. Its peak is the process's (decode needs far less).
    config = LearnerConfig(num_minibatches=2)
    compile_s, step_s = ours_train(model, train_batch(cfg, groups, n, length, length), config, args.iters)
    executed = flops.train(config, groups, length, groups * n, length, 0)
    peak = device.memory_stats().get("peak_bytes_in_use") if device.memory_stats() else None
    mfu = lambda work, seconds: f"{work / seconds / peak_flops:.1%}" if peak_flops else "n/a"
    gib = lambda b: f"{b / 2**30:.1f} GiB" if b and b == b else "n/a"
    print("train                     seconds   MFU (executed)   peak memory   compile s")
    print(f"  ours GRPO step           {step_s:7.3f}   {mfu(executed, step_s):>14}   {gib(peak):>11}   "
          f"{compile_s:9.1f}")  # fmt: skip
    if hf:
        forward = flops.decoder_tokens(groups * n * 2 * length, length) + flops.head(groups * n * 2 * length)
        print(f"  transformers fwd+bwd     {hf['train_s']:7.3f}   {mfu(3 * forward, hf['train_s']):>14}   "
              f"{gib(hf['peak_bytes']):>11}")  # fmt: skip


if __name__ == "__main__":
    main()
