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
``reward/timeouts``. If the reward function raises (MemoryError included) or returns no breakdown, the item
scores 0 and counts in ``reward/errors``, and the worker goes on. If the worker dies mid-item (killed by its CPU
limit, the kernel's OOM killer, a crash in a C extension), it is replaced, and the item scores 0 and counts in
``reward/crashes``. The first failure message of the batch is logged. Other items keep running meanwhile. So
every item is answered within ``timeout_s`` of its dispatch, and dispatch only waits for a free worker
(``start_timeout_s`` bounds the wait for a new one). An exception escaping :meth:`RewardPool.score` (a worker
that cannot start, Ctrl-C) closes the pool, so no stale reply can leak into a later batch.

Resource limits: the timeout is the parent's clock, and it only runs while the parent is inside ``score``. Each
worker also sets kernel limits on itself before serving (soft rlimits, which the kernel enforces whatever the
parent does): ``RLIMIT_AS`` caps its address space at ``memory_limit_mb``, so an answer whose evaluation would
take the host's memory raises MemoryError in that worker instead of bringing in the OOM killer; ``RLIMIT_CPU``
caps the CPU seconds of each item at ``cpu_limit_s``, which also stops a computation whose parent can no
longer stop it (a trainer killed mid-batch leaves its workers orphaned, and a worker inside sympy never reads
the EOF that would end it) and counts every thread of a reward function that uses several. RLIMIT_CPU counts
the process's whole life, so a fixed limit would be a budget for all the items a worker ever scores; instead
the worker moves its soft limit to (CPU used so far + ``cpu_limit_s``) before each item (a process may move
its soft limit freely below its hard limit), which bounds every item alike without restarting workers. The
kernel counts whole seconds, so an item gets at least ``cpu_limit_s`` and less than one second more. Past it
the kernel sends SIGXCPU, which ends the worker; its default action also dumps core, so workers switch core
dumps off (each such death would write a file the size of the worker's memory, often into the working directory).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import multiprocessing
import pickle
import resource
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


def _set_soft_limit(kind: int, value: int) -> None:
    """Sets the soft rlimit ``kind`` to ``value``, or to the hard limit if that is lower (it cannot be raised)."""
    _, hard = resource.getrlimit(kind)
    resource.setrlimit(kind, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


def _serve(connection: Connection, reward_fn: RewardFn, memory_limit_mb: int | None, cpu_limit_s: float | None) -> None:
    """Worker loop: answer ``(index, response, ground_truth)`` requests with ``(index, scores, error)``."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_soft_limit(resource.RLIMIT_CORE, 0)  # no core file when the CPU limit ends the worker
    if memory_limit_mb is not None:
        _set_soft_limit(resource.RLIMIT_AS, int(memory_limit_mb * 2**20))
    connection.send(_READY)
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent is gone
            return
        if request is None:
            return
        index, response, ground_truth = request
        if cpu_limit_s is not None:  # this item's budget on top of what the worker has used (see the module doc)
            _set_soft_limit(resource.RLIMIT_CPU, math.ceil(time.process_time() + cpu_limit_s))
        try:
            result = reward_fn(response, ground_truth)
            reply = (index, {key: float(result[key]) for key in SCORE_KEYS}, None)
        except Exception as error:  # any failure of the reward function (MemoryError too) is the item's zero score
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

    ``memory_limit_mb`` caps each worker's address space (a worker starts at about 65 MB with sympy, mathruler
    and math_verify imported) and ``cpu_limit_s`` the CPU seconds of each item; None lifts a limit. A worker
    uses one thread, so its CPU time never exceeds the wall-clock time of an item: the CPU limit stops an item
    first only if it is below ``timeout_s``, or for a reward function that runs several threads, or when the
    parent is gone. The default of 60 s is a backstop well above the default timeout; a ``timeout_s`` above it
    wants a higher limit too.
    """

    def __init__(
        self,
        reward: str | RewardFn,
        num_workers: int = 4,
        timeout_s: float = 5.0,
        start_timeout_s: float = 60.0,
        memory_limit_mb: int | None = 4096,
        cpu_limit_s: float | None = 60.0,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"RewardPool needs num_workers >= 1, got {num_workers}")
        if timeout_s <= 0 or start_timeout_s <= 0:
            raise ValueError(
                f"RewardPool timeouts must be > 0, got timeout_s={timeout_s}, start_timeout_s={start_timeout_s}"
            )
        for name, limit in (("memory_limit_mb", memory_limit_mb), ("cpu_limit_s", cpu_limit_s)):
            if limit is not None and not limit > 0:
                raise ValueError(f"RewardPool needs {name} > 0 (or None for no limit), got {limit}")
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
        self.memory_limit_mb, self.cpu_limit_s = memory_limit_mb, cpu_limit_s
        self._context = multiprocessing.get_context("forkserver")
        # Process-wide; takes effect when the server first starts (a server already running keeps its own list).
        self._context.set_forkserver_preload(["staged_vlm_jax.rl.rewards"])
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop, self._workers)
        self._workers.extend(self._start_worker() for _ in range(num_workers))

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=_serve,
            args=(child_end, self._fn, self.memory_limit_mb, self.cpu_limit_s),
            daemon=True,
            name="reward-worker",
        )
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
        """Scores of every pair, in order, and the batch's ``reward/{timeouts,errors,crashes}`` and ``time/reward_s``.

        A timed-out, failed or crashed item scores ``{"overall": 0.0, "format": 0.0, "accuracy": 0.0}``.
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
        failures = {"reward/timeouts": 0, "reward/errors": 0, "reward/crashes": 0}
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
                            fail(worker, "reward/crashes", f"worker died ({self._death(exit_code)})")
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
                "reward %r: %d timeouts, %d errors, %d crashes in a batch of %d; first: %s",
                self._fn,
                failures["reward/timeouts"],
                failures["reward/errors"],
                failures["reward/crashes"],
                len(responses),
                first_error,
            )
        return results, {**failures, "time/reward_s": time.monotonic() - began}

    def _death(self, exit_code: int | None) -> str:
        """How a worker ended, in words; a negative exit code is the signal that killed it."""
        if exit_code is None or exit_code >= 0:
            return f"exit code {exit_code}"
        name = signal.Signals(-exit_code).name
        if name == "SIGXCPU":
            return f"killed by SIGXCPU: the item used more than cpu_limit_s={self.cpu_limit_s} s of CPU"
        return f"killed by {name}"

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
