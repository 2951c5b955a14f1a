"""Score a batch of responses in worker processes, with a per-item timeout, so no answer can stall a step.

Why processes and not threads: mathruler and math_verify hand answers to sympy, and some short answers
(``9**9**9`` passes both mathruler's and the paper's guards) make it compute for minutes. A Python thread cannot
be interrupted while it is inside such a call, and ``signal.alarm`` only works on a main thread and only between
bytecodes; a process can always be killed. The trainer's process holds JAX (and its thread pools), and forking
a multi-threaded process is unsafe, so workers come from multiprocessing's ``forkserver``: a single-threaded
server started by exec, which imports this package (sympy, mathruler, math_verify) once and forks a worker on
demand, so replacing a killed worker costs milliseconds instead of a second of imports. As with ``spawn``, a
script that creates a pool needs the ``if __name__ == "__main__":`` guard.

Semantics, per item: the item's clock starts when it is handed to an idle worker. If the worker has not
answered after ``timeout_s``, it is killed and replaced, and the item scores 0 on every key and counts in
``reward/timeouts``. If the reward function raises (or the worker dies), the item scores 0 and counts in
``reward/errors``; the first error message of the batch is logged. Other items keep running meanwhile. So
every item is answered within ``timeout_s`` of its dispatch, and dispatch only waits for a free worker
(``start_timeout_s`` bounds the wait for a new one). An exception escaping :meth:`RewardPool.score` (a worker
that cannot start, Ctrl-C) closes the pool, so no stale reply can leak into a later batch.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import pickle
import signal
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from staged_vlm_jax.rl.rewards.registry import SCORE_KEYS, RewardFn, get

logger = logging.getLogger(__name__)

_READY = "ready"


def _serve(connection: Connection, reward_fn: RewardFn) -> None:
    """Worker loop: answer ``(index, response, ground_truth)`` requests with ``(index, scores, error)``."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection.send(_READY)
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent is gone
            return
        if request is None:
            return
        index, response, ground_truth = request
        try:
            result = reward_fn(response, ground_truth)
            reply = (index, {key: float(result[key]) for key in SCORE_KEYS}, None)
        except Exception as error:  # any failure of the reward function is the item's zero score
            reply = (index, None, f"{type(error).__name__}: {error}")
        connection.send(reply)


@dataclass
class _Worker:
    process: BaseProcess
    connection: Connection
    started_at: float
    ready: bool = False
    item: int | None = None
    deadline: float = 0.0


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        with contextlib.suppress(OSError):  # already dead
            worker.connection.send(None)
    for worker in workers:
        worker.process.join(timeout=1.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.connection.close()
    workers.clear()


class RewardPool:
    """A fixed number of worker processes scoring ``(response, ground_truth)`` pairs with one reward function.

    ``reward`` is a registered name (see :func:`staged_vlm_jax.rl.rewards.get`) or a picklable function, e.g.
    ``functools.partial(math_score, format_weight=0.2)``. Workers start in the background at construction;
    :meth:`score` waits (at most ``start_timeout_s``) for them. Use as a context manager or call :meth:`close`;
    the workers are also stopped when the pool is garbage-collected or the process exits.
    """

    def __init__(
        self, reward: str | RewardFn, num_workers: int = 4, timeout_s: float = 5.0, start_timeout_s: float = 60.0
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"RewardPool needs num_workers >= 1, got {num_workers}")
        if timeout_s <= 0 or start_timeout_s <= 0:
            raise ValueError(
                f"RewardPool timeouts must be > 0, got timeout_s={timeout_s}, start_timeout_s={start_timeout_s}"
            )
        self._fn = get(reward) if isinstance(reward, str) else reward
        try:
            pickle.dumps(self._fn)
        except Exception as error:
            raise TypeError(
                f"reward function {self._fn!r} cannot be sent to a worker process ({error}); use a module-level "
                "function or a functools.partial of one"
            ) from error
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._context = multiprocessing.get_context("forkserver")
        # Process-wide; takes effect when the server first starts (a server already running keeps its own list).
        self._context.set_forkserver_preload(["staged_vlm_jax.rl.rewards"])
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop, self._workers)
        self._workers.extend(self._start_worker() for _ in range(num_workers))

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(child_end, self._fn), daemon=True, name="reward-worker")
        process.start()
        child_end.close()  # so the worker's death reads as EOF on parent_end
        return _Worker(process, parent_end, started_at=time.monotonic())

    def _replace(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join()
        worker.connection.close()
        self._workers[self._workers.index(worker)] = self._start_worker()

    def score(
        self, responses: Sequence[str], ground_truths: Sequence[str]
    ) -> tuple[list[dict[str, float]], dict[str, float]]:
        """Scores of every pair, in order, and ``{"reward/timeouts", "reward/errors", "time/reward_s"}``.

        A timed-out or failed item scores ``{"overall": 0.0, "format": 0.0, "accuracy": 0.0}``.
        """
        if len(responses) != len(ground_truths):
            raise ValueError(f"RewardPool.score got {len(responses)} responses but {len(ground_truths)} ground truths")
        if not self._workers:
            raise RuntimeError("RewardPool.score called after close()")
        try:
            return self._score(responses, ground_truths)
        except BaseException:
            self.close()
            raise

    def _score(
        self, responses: Sequence[str], ground_truths: Sequence[str]
    ) -> tuple[list[dict[str, float]], dict[str, float]]:
        began = time.monotonic()
        results: list[dict[str, float] | None] = [None] * len(responses)
        pending = collections.deque(range(len(responses)))
        failures = {"reward/timeouts": 0, "reward/errors": 0}
        first_error: str | None = None

        def fail(worker: _Worker, kind: str, message: str) -> None:
            nonlocal first_error
            results[worker.item] = dict.fromkeys(SCORE_KEYS, 0.0)
            failures[kind] += 1
            first_error = first_error or message[:500]

        while pending or any(worker.item is not None for worker in self._workers):
            for worker in list(self._workers):
                if worker.ready and worker.item is None and pending:
                    index = pending.popleft()
                    try:
                        worker.connection.send((index, responses[index], ground_truths[index]))
                    except OSError:  # died while idle; the item never ran, so it goes back in line
                        pending.appendleft(index)
                        self._replace(worker)
                        continue
                    worker.item, worker.deadline = index, time.monotonic() + self.timeout_s
            now = time.monotonic()
            deadlines = [w.deadline for w in self._workers if w.item is not None]
            deadlines += [w.started_at + self.start_timeout_s for w in self._workers if not w.ready]
            readable = wait([w.connection for w in self._workers], timeout=max(0.0, min(deadlines, default=now) - now))
            for worker in list(self._workers):
                if worker.connection in readable:
                    try:
                        message = worker.connection.recv()
                    except (EOFError, OSError):
                        worker.process.join(timeout=1.0)
                        exit_code = worker.process.exitcode
                        if not worker.ready:
                            raise RuntimeError(
                                f"reward worker for {self._fn!r} exited (code {exit_code}) before it was ready; its "
                                "stderr says why (usually the function's module cannot be imported in a fresh process)"
                            ) from None
                        if worker.item is not None:
                            fail(worker, "reward/errors", f"worker died (exit code {exit_code})")
                        self._replace(worker)
                        continue
                    if message == _READY:
                        worker.ready = True
                        continue
                    index, scores, error = message
                    if error is None:
                        results[index] = scores
                    else:
                        fail(worker, "reward/errors", error)
                    worker.item = None
                elif worker.ready and worker.item is not None and time.monotonic() >= worker.deadline:
                    fail(worker, "reward/timeouts", f"timed out after {self.timeout_s} s")
                    self._replace(worker)
                elif not worker.ready and time.monotonic() >= worker.started_at + self.start_timeout_s:
                    raise RuntimeError(f"reward worker for {self._fn!r} did not start within {self.start_timeout_s} s")
        if first_error is not None:
            logger.warning(
                "reward %r: %d timeouts, %d errors in a batch of %d; first: %s",
                self._fn,
                failures["reward/timeouts"],
                failures["reward/errors"],
                len(responses),
                first_error,
            )
        return results, {**failures, "time/reward_s": time.monotonic() - began}

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
