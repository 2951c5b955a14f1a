"""Rewards by name, so a stage config can say ``reward="mcq"`` instead of importing a function.

A reward function maps one response and its ground truth to a breakdown

    {"overall": float, "format": float, "accuracy": float}

``overall`` is what the advantage estimator consumes; ``format`` and ``accuracy`` are logged. Functions that run
in a :class:`~staged_vlm_jax.rl.rewards.pool.RewardPool` must be module-level (picklable by reference), so that a
fresh worker process can import them; registering happens at import time, so the worker sees the same registry.

A reward of your own needs no registration: name it as EasyR1 does, ``/path/to/my_reward.py:compute_score``
(`FileReward`), a function of ``(response, ground_truth)`` returning the breakdown above.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
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


@dataclasses.dataclass(frozen=True)
class FileReward:
    """The function ``function`` of the Python file ``path``, as a reward: pickled as the two names, so a worker
    process loads the file itself (once per process) rather than needing it importable as a module."""

    path: str
    function: str

    def load(self) -> RewardFn:
        """The function, the file loaded on first use in this process; ValueError naming what is missing."""
        if self not in _LOADED:
            spec = importlib.util.spec_from_file_location(f"staged_vlm_reward_{len(_LOADED)}", self.path)
            if spec is None or not os.path.isfile(self.path):
                raise ValueError(f"reward {self.path}:{self.function}: {self.path} is not a Python file")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            fn = getattr(module, self.function, None)
            if not callable(fn):
                raise ValueError(f"reward {self.path}:{self.function}: {self.path} defines no function {self.function}")
            _LOADED[self] = fn
        return _LOADED[self]

    def __call__(self, response: str, ground_truth: str) -> dict[str, float]:
        return self.load()(response, ground_truth)


_LOADED: dict[FileReward, RewardFn] = {}


def get(name: str) -> RewardFn:
    """The reward function registered as ``name``, or ``FILE.py:FUNCTION``'s (`FileReward`, loaded here so that a
    missing file or function is an error now, not in every worker); ValueError naming what is wrong otherwise."""
    if name in REWARDS:
        return REWARDS[name]
    path, _, function = name.rpartition(":")
    if path.endswith(".py") and function:
        reward = FileReward(os.path.abspath(os.path.expanduser(path)), function)
        reward.load()
        return reward
    raise ValueError(f"unknown reward {name!r}; registered rewards: {', '.join(sorted(REWARDS))}, or a "
                     "function of your own as FILE.py:FUNCTION")  # fmt: skip


def problem(name: str) -> str | None:
    """What is wrong with reward ``name`` (`get`'s error), or None: for checking a config before anything runs."""
    try:
        get(name)
    except ValueError as error:
        return str(error)
    return None
