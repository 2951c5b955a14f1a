"""Stage kinds: what ``config.stages.NAME.kind`` may name, and what each kind means to the stage loop.

A kind maps to its learner objective (through `StageKind.learner_config`), how many training rows one prompt of
its batches becomes (which the config check needs to validate the batch split before training), and the trainer
that runs one step of it. Adding a kind (e.g. DPO) is one entry here; the loop and the config check do not change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax

from staged_vlm_jax.data.batch import PromptBatch
from staged_vlm_jax.rl import rewards
from staged_vlm_jax.rl.advantages import ADVANTAGES
from staged_vlm_jax.rl.grpo import GRPOTrainer, RolloutConfig
from staged_vlm_jax.rl.learner import Learner, LearnerConfig
from staged_vlm_jax.rl.sft import SFTTrainer, sft_learner_config

StepFunction = Callable[[jax.Array], dict[str, Any]]  # the step's rng -> its metrics


class StageRun(Protocol):
    """What a trainer factory needs of the run (`stages.StagedRun` provides it)."""

    engine: Any
    tokenizer: Any
    eos_token_ids: tuple[int, ...]

    def score_function(self, stage: str) -> Callable: ...

    def decode(self, ids) -> str: ...


@dataclasses.dataclass(frozen=True)
class StageKind:
    """``learner_config``: the run's learner config for the stage -> the one this kind trains with;
    ``rows_per_prompt``: training rows per prompt given the stage's rollout config;
    ``make_step``: (run, stage name, stage spec, rollout config, learner, prompt stream) -> the step function;
    ``problems``: (rollout config, reward name) -> what is wrong with them for this kind, as ``key: message``
    lines (checked before training starts)."""

    learner_config: Callable[[LearnerConfig], LearnerConfig]
    rows_per_prompt: Callable[[RolloutConfig], int]
    make_step: Callable[[StageRun, str, Any, RolloutConfig, Learner, Iterator[PromptBatch]], StepFunction]
    problems: Callable[[RolloutConfig, str], list[str]] = lambda rollout, reward: []


def _grpo_problems(rollout: RolloutConfig, reward: str) -> list[str]:
    """GRPO needs a registered reward and advantage estimator, and groups: every estimator compares a prompt's n
    responses, so n = 1 gives zero advantages (no learning signal) forever."""
    problems = []
    if reward_problem := rewards.problem(reward):
        problems.append(f"reward.name: {reward_problem}")
    if rollout.advantage not in ADVANTAGES:
        problems.append(f"rollout.advantage: {rollout.advantage!r} is not one of {sorted(ADVANTAGES)}")
    if rollout.n < 2:
        problems.append(f"rollout.n: {rollout.n}; GRPO compares a prompt's n responses, so n must be >= 2")
    return problems


def _grpo_step(run: StageRun, name: str, stage, rollout: RolloutConfig, learner: Learner, prompts) -> StepFunction:
    pad = run.tokenizer.pad_token_id
    trainer = GRPOTrainer(learner, run.engine, run.score_function(name), run.decode, rollout,
                          eos_token_ids=run.eos_token_ids, pad_token_id=pad)  # fmt: skip
    return lambda rng: trainer.step(next(prompts), rng, refill=lambda: next(prompts))


def _sft_step(run: StageRun, name: str, stage, rollout: RolloutConfig, learner: Learner, prompts) -> StepFunction:
    tokenizer = run.tokenizer
    trainer = SFTTrainer(learner, run.engine, tokenizer, stage.response_template,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return lambda rng: trainer.step(next(prompts))


STAGE_KINDS: dict[str, StageKind] = {
    "grpo": StageKind(learner_config=lambda config: config, rows_per_prompt=lambda rollout: rollout.n,
                      make_step=_grpo_step, problems=_grpo_problems),
    "sft": StageKind(learner_config=sft_learner_config, rows_per_prompt=lambda rollout: 1, make_step=_sft_step),
}  # fmt: skip
