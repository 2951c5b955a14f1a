"""One full GRPO step: rollout -> rewards -> group advantages -> policy updates, with verl/TRL-style metrics.

The step is host-orchestrated around two compiled programs (the rollout engine's sampler and the learner's train
step); the rewards run on the host (a `RewardPool` in training). Shapes are bucketed so that every step of a
stage reuses the same compilations: prompts are left-padded to the rollout engine's prompt bucket and per-row
image patches to its patch bucket.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from staged_vlm_jax.models.qwen2_5_vl import per_row_images
from staged_vlm_jax.rl import advantages
from staged_vlm_jax.rl.learner import Learner, TrainBatch
from staged_vlm_jax.rl.rollout import RolloutEngine, bucket

# (responses, ground_truths) -> (per-response {"overall", ...} dicts, stats such as reward/timeouts)
ScoreFn = Callable[[Sequence[str], Sequence[str]], tuple[list[dict[str, float]], dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Rollout and advantage settings of a GRPO stage (the paper: n=5, temperature 1, grpo advantages)."""

    n: int = 5
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    advantage: str = "grpo"


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Tokenized prompts of one step, left-padded, images in HF's packed layout.

    input_ids / attention_mask [B, P]; pixel_values [N, ·] and image_grid_thw [I, 3] (or None for text-only
    batches); images_per_row [B] says how many of the images belong to each prompt; ground_truths [B].
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    ground_truths: Sequence[str]
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None
    images_per_row: Sequence[int] | None = None


class GRPOTrainer:
    """Runs GRPO steps for one stage: the learner's current weights sample, the rewards grade, the learner updates."""

    def __init__(
        self,
        learner: Learner,
        engine: RolloutEngine,
        score: ScoreFn,
        decode: Callable[[Sequence[int]], str],
        config: GRPOConfig,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
    ):
        self.learner, self.engine, self.score, self.decode, self.config = learner, engine, score, decode, config
        self.eos_token_ids, self.pad_token_id = tuple(eos_token_ids), pad_token_id

    def step(self, prompts: PromptBatch, rng: jax.Array) -> dict[str, float]:
        cfg = self.config
        start = time.perf_counter()
        ids, mask = self._pad_prompts(prompts.input_ids, prompts.attention_mask)
        out = self.engine.generate(
            self.learner.model(), ids, mask, pixel_values=prompts.pixel_values,
            image_grid_thw=prompts.image_grid_thw, max_new_tokens=cfg.max_new_tokens, n=cfg.n,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id, rng=rng,
        )  # fmt: skip
        tokens, response_mask, lengths = (np.asarray(x) for x in (out.tokens, out.mask, out.lengths))
        rollout_s = time.perf_counter() - start

        responses = [self.decode(row[: int(length)].tolist()) for row, length in zip(tokens, lengths, strict=True)]
        ground_truths = [gt for gt in prompts.ground_truths for _ in range(cfg.n)]
        scores, reward_stats = self.score(responses, ground_truths)
        overall = np.asarray([s["overall"] for s in scores], np.float32)
        advantage = np.asarray(advantages.compute(cfg.advantage, overall, cfg.n))
        reward_s = time.perf_counter() - start - rollout_s

        batch = TrainBatch(
            input_ids=np.concatenate([np.repeat(ids, cfg.n, 0), tokens], axis=1),
            attention_mask=np.concatenate([np.repeat(mask, cfg.n, 0), response_mask], axis=1),
            response_mask=response_mask,
            advantages=advantage,
        )
        if prompts.pixel_values is not None:
            batch = batch.replace(**self._per_row_images(prompts))
        train_metrics = jax.device_get(self.learner.train_step(batch))
        train_s = time.perf_counter() - start - rollout_s - reward_s

        finished = np.any(np.isin(tokens, self.eos_token_ids) & (response_mask > 0), axis=1)
        metrics = {f"reward/{key}": float(np.mean([s[key] for s in scores])) for key in scores[0]}
        metrics["reward/mean"] = metrics.pop("reward/overall")
        metrics["reward/std"] = float(overall.std())
        # Groups whose rewards are all equal carry no learning signal (DAPO's dynamic sampling drops them).
        metrics["reward/frac_zero_std_groups"] = float(np.mean(overall.reshape(-1, cfg.n).std(axis=1) == 0))
        metrics.update({k: float(v) for k, v in reward_stats.items()})
        metrics["response_length/mean"] = float(lengths.mean())
        metrics["response_length/max"] = float(lengths.max())
        metrics["response_length/clip_ratio"] = float(np.mean(~finished))
        metrics.update({k: float(v) for k, v in train_metrics.items()})
        metrics["kl"] = metrics.pop("kl_token_mean")
        metrics["time/rollout_s"], metrics["time/reward_s"], metrics["time/train_s"] = rollout_s, reward_s, train_s
        metrics["tokens/s"] = float(lengths.sum()) / max(time.perf_counter() - start, 1e-9)
        return metrics

    def _pad_prompts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Left-pads prompts to the engine's prompt bucket, so the train step's shape is the same every step."""
        batch, length = input_ids.shape
        width = bucket(length, self.engine.config.prompt_buckets)
        ids = np.full((batch, width), self.pad_token_id, np.int32)
        mask = np.zeros((batch, width), np.int32)
        ids[:, width - length :], mask[:, width - length :] = input_ids, attention_mask
        return ids, mask

    def _per_row_images(self, prompts: PromptBatch) -> dict[str, np.ndarray]:
        """Packed prompt images -> per-row layout for the learner, each prompt's images repeated for its n rows."""
        if prompts.images_per_row is None:
            raise ValueError("PromptBatch.images_per_row is required when the batch has images")
        pixels, grids = per_row_images(prompts.pixel_values, prompts.image_grid_thw, list(prompts.images_per_row))
        patches = bucket(pixels.shape[1], self.engine.config.patch_buckets)
        pixels = np.pad(pixels, [(0, 0), (0, patches - pixels.shape[1]), (0, 0)])
        n = self.config.n
        return {"pixel_values": np.repeat(pixels, n, 0), "image_grid_thw": np.repeat(grids, n, 0)}
