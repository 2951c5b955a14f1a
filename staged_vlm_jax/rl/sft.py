"""Supervised fine-tuning stage: the paper's caption-SFT ablation and the CPU testbed's warm start.

SFT runs through the very `Learner.train_step` GRPO uses (same jitted program, shardings, micro-batching,
frozen-parameter mask and NaN guard) with the learner's ``nll`` objective: the token-mean negative log-likelihood
of the targets. `sft_learner_config` sets it, with one update per batch and no reference pass.

Targets are ``response_template.format(answer=row answer)`` followed by EOS, so a row's answer field can hold a
caption (caption SFT) or a final answer that the template wraps in the paper's ``<think>…</think> \\boxed{}``
format (warm start).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax.data.batch import PromptBatch, bucket
from staged_vlm_jax.rl.learner import Learner, LearnerConfig, TrainBatch
from staged_vlm_jax.rl.rollout import RolloutEngine


def sft_learner_config(config: LearnerConfig) -> LearnerConfig:
    """``config`` for SFT: the token-mean NLL objective, one update per batch, no KL reference pass."""
    return dataclasses.replace(config, objective="nll", num_minibatches=1, kl_coef=0.0, loss_agg="token-mean")


def response_tokens(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], eos_token_id: int, pad_token_id: int, buckets
) -> tuple[np.ndarray, np.ndarray]:
    """Target ids (text + EOS) right-padded to a bucket, and their mask, both [B, L]."""
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_token_id] for text in texts]
    width = bucket(max(len(row) for row in ids), buckets)
    tokens = np.full((len(ids), width), pad_token_id, np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for row, target in enumerate(ids):
        tokens[row, : len(target)] = target
        mask[row, : len(target)] = 1
    return tokens, mask


class SFTTrainer:
    """Runs SFT steps: prompt batch -> templated targets -> one learner update."""

    def __init__(
        self,
        learner: Learner,
        engine: RolloutEngine,
        tokenizer: PreTrainedTokenizerFast,
        response_template: str,
        *,
        eos_token_id: int,
        pad_token_id: int,
    ):
        if learner.config != sft_learner_config(learner.config):
            raise ValueError("the SFT learner needs sft_learner_config(...): the nll objective, one mini-batch, no KL")
        self.learner, self.engine, self.tokenizer = learner, engine, tokenizer
        self.response_template = response_template
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id

    def batch(self, prompts: PromptBatch) -> TrainBatch:
        ids, mask, pixels, grids = self.engine.model_inputs(self.learner.model_config, prompts, self.pad_token_id)
        targets = [self.response_template.format(answer=answer) for answer in prompts.ground_truths]
        tokens, response_mask = response_tokens(
            self.tokenizer, targets, self.eos_token_id, self.pad_token_id, self.engine.config.new_token_buckets
        )
        return TrainBatch(
            input_ids=np.concatenate([ids, tokens], axis=1),
            attention_mask=np.concatenate([mask, response_mask], axis=1),
            response_mask=response_mask,
            advantages=np.ones((ids.shape[0],), np.float32),
            pixel_values=pixels,
            image_grid_thw=grids,
        )

    def step(self, prompts: PromptBatch) -> dict[str, float]:
        start = time.perf_counter()
        batch = self.batch(prompts)
        metrics = {k: float(v) for k, v in self.learner.train_step(batch).items()}
        elapsed = time.perf_counter() - start
        metrics["time/train_s"] = elapsed
        metrics["response_length/mean"] = float(batch.response_mask.sum(1).mean())
        metrics["tokens/s"] = float(batch.response_mask.sum()) / max(elapsed, 1e-9)
        return metrics
