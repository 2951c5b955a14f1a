"""Reward functions for the RewardPool tests; they live in an importable module because spawned workers import
them by name (a function defined inside a test module's body could not be sent to a worker)."""

from __future__ import annotations

import os
import signal
import time

from staged_vlm_jax.rl import rewards

FULL_MARKS = {"overall": 1.0, "format": 1.0, "accuracy": 1.0}


@rewards.register("test_scripted")
def scripted_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Misbehaves on command: response "sleep" hangs for a minute, "raise" raises, "exit" kills its process,
    "kill" has the kernel kill it (SIGKILL, as the OOM killer does), "not a dict" returns a string. "allocate"
    allocates 2 GiB and "spin <s>" burns <s> seconds of CPU, then each gives full marks (so they score 0 only if
    a limit stopped them); "pid" puts the worker's process id in "overall". Any other response is scored by the
    math reward."""
    if response == "sleep":
        time.sleep(60)
    if response == "raise":
        raise RuntimeError("scripted failure")
    if response == "exit":
        os._exit(3)
    if response == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if response == "not a dict":
        return "oops"  # type: ignore[return-value]
    if response == "allocate":
        bytearray(2 * 2**30)
        return FULL_MARKS
    if response.startswith("spin "):
        end = time.process_time() + float(response.removeprefix("spin "))
        while time.process_time() < end:
            pass
        return FULL_MARKS
    if response == "pid":
        return {"overall": float(os.getpid()), "format": 0.0, "accuracy": 0.0}
    return rewards.math_score(response, ground_truth)
