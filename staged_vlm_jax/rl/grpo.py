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

from staged_vlm_jax.data.batch import PromptBatch, pad_axis
from staged_vlm_jax.models.sharding import same_in_every_process
from staged_vlm_jax.rl import advantages
from staged_vlm_jax.rl.learner import Learner, TrainBatch
from staged_vlm_jax.rl.rollout import RolloutEngine

# (responses, ground_truths) -> (per-response {"overall", ...} dicts, stats such as reward/timeouts)
ScoreFn = Callable[[Sequence[str], Sequence[str]], tuple[list[dict[str, float]], dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """The run config's ``rollout`` section: how a GRPO step samples its groups and turns their rewards into
    advantages (the paper: n=5, temperature 1, grpo advantages, no length penalty, no dynamic sampling). ``n`` is
    the group size everywhere (`Rollouts.n`, `advantages.compute`'s ``group_size``, `TrainBatch.group_size` when
    the learner shares prompts). The engine's shape buckets are `rollout.EngineConfig` (section ``engine``).

    ``overlong_buffer`` > 0 turns on DAPO's soft overlong penalty (in tokens, see `overlong_penalty`).
    ``dynamic_sampling`` drops groups whose rewards are all equal (no learning signal) and refills from the
    prompt stream, at most ``max_sampling_batches`` rollout batches per step; if still short, the step is filled
    with dropped groups (zero advantage) and the shortfall is reported.
    """

    n: int = 5
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    advantage: str = "grpo"
    overlong_buffer: int = 0
    overlong_penalty_factor: float = 1.0
    dynamic_sampling: bool = False
    max_sampling_batches: int = 4


def overlong_penalty(lengths: np.ndarray, max_length: int, buffer: int, factor: float = 1.0) -> np.ndarray:
    """DAPO's soft overlong punishment, in tokens: 0 up to max_length − buffer, then falling linearly to −factor
    at max_length: min(0, −(length − (max_length − buffer)) / buffer) · factor."""
    expected = max_length - buffer
    return np.minimum(0.0, -(np.asarray(lengths, np.float32) - expected) / buffer) * factor


@dataclasses.dataclass
class Rollouts:
    """Host-side results of sampling and scoring, one row per response (groups of n contiguous rows).

    Images are kept once per prompt, not repeated to its n rows: the learner's shared-prompt pass takes them so.
    """

    prompt_ids: np.ndarray  # [R, P] left-padded
    prompt_mask: np.ndarray
    tokens: np.ndarray  # [R, L]
    response_mask: np.ndarray
    lengths: np.ndarray  # [R]
    scores: dict[str, np.ndarray]  # per key [R]; "overall" includes any length penalty
    pixel_values: np.ndarray | None = None  # per prompt [R / n, N, ·]
    image_grid_thw: np.ndarray | None = None  # per prompt [R / n, I, 3]
    n: int = 1

    def take(self, rows: np.ndarray) -> Rollouts:
        """The given rows, which must be whole groups in order (as `group_rows` gives)."""
        groups = rows[:: self.n] // self.n
        pick = lambda x: None if x is None else x[groups]
        return Rollouts(
            self.prompt_ids[rows], self.prompt_mask[rows], self.tokens[rows], self.response_mask[rows],
            self.lengths[rows], {k: v[rows] for k, v in self.scores.items()}, pick(self.pixel_values),
            pick(self.image_grid_thw), self.n,
        )  # fmt: skip


def group_rows(selected: np.ndarray, n: int) -> np.ndarray:
    """Row indices of the selected groups (groups of n contiguous rows)."""
    return (np.flatnonzero(selected)[:, None] * n + np.arange(n)).reshape(-1)


def concatenate(parts: Sequence[Rollouts], pad_token_id: int) -> Rollouts:
    """Rows of several rollout batches in one, prompts left-padded and per-prompt images padded to common sizes."""
    width = max(p.prompt_ids.shape[1] for p in parts)
    joined = lambda get, axis=1: np.concatenate([pad_axis(get(p), axis, max(get(q).shape[axis] for q in parts))
                                                 for p in parts])  # fmt: skip
    images = parts[0].pixel_values is not None
    return Rollouts(
        prompt_ids=np.concatenate([pad_axis(p.prompt_ids, 1, width, left=True, value=pad_token_id) for p in parts]),
        prompt_mask=np.concatenate([pad_axis(p.prompt_mask, 1, width, left=True) for p in parts]),
        tokens=np.concatenate([p.tokens for p in parts]),
        response_mask=np.concatenate([p.response_mask for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        scores={k: np.concatenate([p.scores[k] for p in parts]) for k in parts[0].scores},
        pixel_values=joined(lambda p: p.pixel_values) if images else None,
        image_grid_thw=joined(lambda p: p.image_grid_thw) if images else None,
        n=parts[0].n,
    )


class GRPOTrainer:
    """Runs GRPO steps for one stage: the learner's current weights sample, the rewards grade, the learner updates."""

    def __init__(
        self,
        learner: Learner,
        engine: RolloutEngine,
        score: ScoreFn,
        decode: Callable[[Sequence[int]], str],
        config: RolloutConfig,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
    ):
        self.learner, self.engine, self.score, self.decode, self.config = learner, engine, score, decode, config
        self.eos_token_ids, self.pad_token_id = tuple(eos_token_ids), pad_token_id

    def step(
        self, prompts: PromptBatch, rng: jax.Array, refill: Callable[[], PromptBatch] | None = None
    ) -> dict[str, float]:
        """One GRPO step on ``prompts``; with dynamic sampling, ``refill`` supplies further prompt batches."""
        cfg = self.config
        start = time.perf_counter()
        groups_wanted = prompts.input_ids.shape[0]
        kept, dropped, reward_stats, timing = [], [], {}, {"rollout_s": 0.0, "reward_s": 0.0}
        sampled = []
        for attempt in range(cfg.max_sampling_batches if cfg.dynamic_sampling else 1):
            if attempt:
                if refill is None:
                    break
                prompts = refill()
            rollouts = self._sample(prompts, jax.random.fold_in(rng, attempt), reward_stats, timing)
            sampled.append(rollouts)
            informative = rollouts.scores["overall"].reshape(-1, cfg.n).std(axis=1) > 0
            if cfg.dynamic_sampling:
                kept.append(rollouts.take(group_rows(informative, cfg.n)))
                dropped.append(rollouts.take(group_rows(~informative, cfg.n)))
            else:
                kept.append(rollouts)
            if sum(len(k.lengths) for k in kept) >= groups_wanted * cfg.n:
                break
        batch = concatenate(kept + dropped, self.pad_token_id).take(np.arange(groups_wanted * cfg.n))
        train_start = time.perf_counter()
        train_metrics = self.learner.train_step(self._train_batch(batch))  # host values
        train_s = time.perf_counter() - train_start

        every = concatenate(sampled, self.pad_token_id)
        metrics = self._rollout_metrics(every)
        metrics.update({k: float(v) for k, v in reward_stats.items()})
        if cfg.dynamic_sampling:
            kept_groups = sum(len(k.lengths) for k in kept) // cfg.n
            metrics["dynamic_sampling/batches"] = float(len(sampled))
            metrics["dynamic_sampling/shortfall_groups"] = float(max(0, groups_wanted - kept_groups))
        metrics.update({k: float(v) for k, v in train_metrics.items()})
        metrics["kl"] = metrics.pop("kl_token_mean")
        metrics["time/rollout_s"], metrics["time/reward_s"] = timing["rollout_s"], timing["reward_s"]
        metrics["time/train_s"] = train_s
        metrics["rollout/chunks"] = float(self.engine.last_chunks)  # programs per rollout call (KV-cache bound)
        metrics["tokens/s"] = float(every.lengths.sum()) / max(time.perf_counter() - start, 1e-9)
        return metrics

    def _sample(self, prompts: PromptBatch, rng: jax.Array, reward_stats: dict, timing: dict) -> Rollouts:
        """Rollout and scoring of one prompt batch (accumulating reward stats and timings)."""
        cfg = self.config
        start = time.perf_counter()
        # One conversion to the per-row image layout serves both the sampler and the learner.
        ids, mask, pixels, grids = self.engine.model_inputs(self.learner.model_config, prompts, self.pad_token_id)
        out = self.engine.generate(
            self.learner.model(), ids, mask, pixel_values=pixels,
            image_grid_thw=grids, max_new_tokens=cfg.max_new_tokens, n=cfg.n,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id, rng=rng,
        )  # fmt: skip
        tokens, response_mask, lengths = (np.asarray(x) for x in (out.tokens, out.mask, out.lengths))
        timing["rollout_s"] += time.perf_counter() - start

        start = time.perf_counter()
        responses = [self.decode(row[: int(length)].tolist()) for row, length in zip(tokens, lengths, strict=True)]
        ground_truths = [gt for gt in prompts.ground_truths for _ in range(cfg.n)]
        # Every process scores the whole batch; process 0's scores rule (a reward timeout can differ between hosts).
        scores, stats = same_in_every_process(self.score(responses, ground_truths))
        for key, value in stats.items():
            reward_stats[key] = reward_stats.get(key, 0.0) + value
        scores = {key: np.asarray([s[key] for s in scores], np.float32) for key in scores[0]}
        if cfg.overlong_buffer:
            scores["overlong_penalty"] = overlong_penalty(
                lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty_factor
            )
            scores["overall"] = scores["overall"] + scores["overlong_penalty"]
        timing["reward_s"] += time.perf_counter() - start
        repeat = lambda x: np.repeat(x, cfg.n, 0)
        return Rollouts(repeat(ids), repeat(mask), tokens, response_mask, lengths, scores, pixels, grids, cfg.n)

    def _train_batch(self, rollouts: Rollouts) -> TrainBatch:
        group = self.learner.group_size(len(rollouts.lengths), self.config.n)
        # Rollouts keep images per prompt; only the row-by-row fallback needs them repeated to every row.
        images = lambda x: x if x is None or group > 1 else np.repeat(x, rollouts.n, 0)
        return TrainBatch(
            input_ids=np.concatenate([rollouts.prompt_ids, rollouts.tokens], axis=1),
            attention_mask=np.concatenate([rollouts.prompt_mask, rollouts.response_mask], axis=1),
            response_mask=rollouts.response_mask,
            advantages=np.asarray(advantages.compute(self.config.advantage, rollouts.scores["overall"], self.config.n)),
            pixel_values=images(rollouts.pixel_values),
            image_grid_thw=images(rollouts.image_grid_thw),
            group_size=group,
        )

    def _rollout_metrics(self, rollouts: Rollouts) -> dict[str, float]:
        overall = rollouts.scores["overall"]
        metrics = {f"reward/{key}": float(value.mean()) for key, value in rollouts.scores.items()}
        metrics["reward/mean"] = metrics.pop("reward/overall")
        metrics["reward/std"] = float(overall.std())
        # Groups whose rewards are all equal carry no learning signal (what dynamic sampling drops).
        metrics["reward/frac_zero_std_groups"] = float(np.mean(overall.reshape(-1, self.config.n).std(axis=1) == 0))
        finished = np.any(np.isin(rollouts.tokens, self.eos_token_ids) & (rollouts.response_mask > 0), axis=1)
        metrics["response_length/mean"] = float(rollouts.lengths.mean())
        metrics["response_length/max"] = float(rollouts.lengths.max())
        metrics["response_length/clip_ratio"] = float(np.mean(~finished))
        return metrics
