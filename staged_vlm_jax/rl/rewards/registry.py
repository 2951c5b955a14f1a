"""Rewards by name, so a stage config can say ``reward="mcq"`` instead of importing a function.

A reward function maps one response and its ground truth to a breakdown

    {"overall": float, "format": float, "accuracy": float}

``overall`` is what the advantage estimator consumes; ``format`` and ``accuracy`` are logged. Functions that run
in a :class:`~staged_vlm_jax.rl.rewards.pool.RewardPool` must be module-level (picklable by reference), so that a
fresh worker process can import them; registering happens at import time, so the worker sees the same registry.
"""

from __future__ import annotations

from collections.abc import Callable

RewardFn = Callable[[str, str], dict[str, float]]

SCORE_KEYS = ("overall", "format", "accuracy")

REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward function to :data:`REWARDS` under ``name``; a name is taken only once."""

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(
                f"reward name {name!r} is already registered to {REWARDS[name].__module__}."
                f"{REWARDS[name].__qualname__}; pick another name for {fn.__module__}.{fn.__qualname__}"
            )
        REWARDS[name] = fn
        return fn

    return add


def get(name: str) -> RewardFn:
    """The reward function registered as ``name``; ValueError listing the registered names otherwise."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}") from None
