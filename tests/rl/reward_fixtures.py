"""Reward functions for the RewardPool tests; they live in an importable module because spawned workers import
them by name (a function defined inside a test module's body could not be sent to a worker)."""

from __future__ import annotations

import os
import time

from staged_vlm_jax.rl import rewards


@rewards.register("test_scripted")
def scripted_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Misbehaves on command: response "sleep" hangs for a minute, "raise" raises, "exit" kills its process,
    "not a dict" returns a string; any other response is scored by the math reward."""
    if response == "sleep":
        time.sleep(60)
    if response == "raise":
        raise RuntimeError("scripted failure")
    if response == "exit":
        os._exit(3)
    if response == "not a dict":
        return "oops"  # type: ignore[return-value]
    return rewards.math_score(response, ground_truth)
