"""Compile seconds of the GRPO train step and the rollout program against model depth (scanned layers).

Builds the tiny Qwen2.5-VL with L decoder layers and L vision blocks for each ``--layers`` value and times, in one
process with the persistent compilation cache off:

- train: lowering + compiling `Learner`'s step (vision tower, decoder, backward, optimizer) for 8 rows of image
  prompts (16-token responses, 2 mini-batches);
- rollout: the first `RolloutEngine.generate` call (vision tower, prefill, decode loop) minus the median of the
  next three, i.e. the trace + compile share of that first call.

Layers are stacked and run by ``jax.lax.scan``, so both should stay flat as L grows; a Python loop over layers grows
linearly. The last column is the ratio to the shallowest model. Run: ``python benchmarks/compile_depth.py``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from harness import median_seconds

from staged_vlm_jax import models
from staged_vlm_jax.rl.learner import Learner, LearnerConfig, TrainBatch
from staged_vlm_jax.rl.rollout import EngineConfig, RolloutEngine

ROWS, PROMPT, RESPONSE = 8, 40, 16


def _config(layers: int):
    return models.tiny_config("qwen2_5_vl", text=dict(num_hidden_layers=layers), vision=dict(depth=layers))


def _inputs(cfg, seed: int = 0):
    """Left-padded image prompts (one 56 px image each, 4 merged tokens) and random responses."""
    rng = np.random.default_rng(seed)
    v = cfg.vision
    grid = (1, 4, 4)
    image = [cfg.vision_start_token_id] + [cfg.image_token_id] * 4 + [cfg.vision_end_token_id]
    text = rng.integers(0, cfg.text.pad_token_id - 1, (ROWS, PROMPT - len(image)))
    input_ids = np.concatenate([np.tile(image, (ROWS, 1)), text], axis=1).astype(np.int32)
    patch_dim = v.in_channels * v.temporal_patch_size * v.patch_size**2
    pixels = rng.standard_normal((ROWS, 16, patch_dim)).astype(np.float32)
    grids = np.tile(np.asarray(grid, np.int32), (ROWS, 1, 1))
    responses = rng.integers(0, cfg.text.pad_token_id - 1, (ROWS, RESPONSE)).astype(np.int32)
    return input_ids, pixels, grids, responses


def train_compile_s(cfg) -> float:
    input_ids, pixels, grids, responses = _inputs(cfg)
    batch = TrainBatch(
        input_ids=np.concatenate([input_ids, responses], axis=1),
        attention_mask=np.ones((ROWS, PROMPT + RESPONSE), np.int32),
        response_mask=np.ones((ROWS, RESPONSE), np.float32),
        advantages=np.linspace(-1, 1, ROWS).astype(np.float32),
        pixel_values=pixels,
        image_grid_thw=grids,
    )
    learner = Learner(models.create(cfg), LearnerConfig(micro_batch_size=4, num_minibatches=2))
    placed = learner.place_batch(batch)
    start = time.perf_counter()
    learner._step.lower(learner.state, placed).compile()
    return time.perf_counter() - start


def rollout_compile_s(cfg) -> float:
    input_ids, pixels, grids, _ = _inputs(cfg)
    model, engine = models.create(cfg), RolloutEngine(EngineConfig(new_token_buckets=(RESPONSE,)))
    run = lambda: np.asarray(engine.generate(
        model, input_ids, np.ones_like(input_ids), pixel_values=pixels, image_grid_thw=grids,
        max_new_tokens=RESPONSE, greedy=True, eos_token_ids=[cfg.text.eos_token_id],
        pad_token_id=cfg.text.pad_token_id, rng=jax.random.key(0),
    ).tokens)  # fmt: skip
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    return first - median_seconds(run, iters=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8, 32])
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; tiny Qwen2.5-VL, L decoder layers + L vision "
          f"blocks; {ROWS} rows, prompt {PROMPT}, response {RESPONSE}")  # fmt: skip
    print(f"{'layers':>6}  {'train compile s':>15}  {'rollout compile s':>17}  {'train x':>7}  {'rollout x':>9}")
    base = None
    for layers in args.layers:
        cfg = _config(layers)
        train, rollout = train_compile_s(cfg), rollout_compile_s(cfg)
        base = base or (train, rollout)
        print(f"{layers:>6}  {train:>15.2f}  {rollout:>17.2f}  {train / base[0]:>7.2f}  {rollout / base[1]:>9.2f}")


if __name__ == "__main__":
    main()
