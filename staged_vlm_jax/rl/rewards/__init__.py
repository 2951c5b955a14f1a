r"""Rewards for GRPO: rule-based scorers of ``<think>…</think> … \boxed{answer}`` responses, by name.

    s = rewards.math_score(response, ground_truth)      # {"overall", "format", "accuracy"}, the paper's reward
    fn = rewards.get("mcq")                              # registry lookup; REWARDS maps names to functions
    with rewards.RewardPool("math", num_workers=4, timeout_s=5.0) as pool:
        scores, stats = pool.score(responses, ground_truths)   # stats: reward/timeouts, reward/errors, ...

Registered: ``math`` (EasyR1 + the paper's guard, mathruler), ``mcq`` (option letter), ``math_verify``
(HuggingFace math_verify); any other as ``FILE.py:FUNCTION`` (`registry.FileReward`). The training loop scores
through a RewardPool, never in-process, because sympy can hang on adversarial answers.
"""

from staged_vlm_jax.rl.rewards.pool import RewardPool
from staged_vlm_jax.rl.rewards.registry import REWARDS, SCORE_KEYS, FileReward, RewardFn, get, problem, register
from staged_vlm_jax.rl.rewards.scores import math_score, math_verify_score, mcq_score

__all__ = [
    "REWARDS",
    "SCORE_KEYS",
    "FileReward",
    "RewardFn",
    "RewardPool",
    "get",
    "math_score",
    "math_verify_score",
    "mcq_score",
    "problem",
    "register",
]
