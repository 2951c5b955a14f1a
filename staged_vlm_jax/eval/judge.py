"""An optional LLM judge for answer extraction, reached through an OpenAI-compatible chat-completions endpoint.

The paper scored with VLMEvalKit, which asks a judge model (Claude-Haiku-4.5 there) to read the responses its rules
cannot (MathVista, MathVision, MathVerse extraction; option matching for the MCQ benchmarks and WeMath; yes/no
matching; DynaMath's short answer). `staged-vlm eval` does the same when ``config.judge.url`` names an endpoint (a
local vLLM / SGLang server, or any OpenAI-compatible API): rules first, the judge only for a record whose response
has no ``\\boxed{}`` and no rule match (`benchmarks.JudgeTask.wanted`), with VLMEvalKit's prompt for it
(`benchmarks.judge_prompts`), greedily (temperature 0). ``url`` None, the default, leaves scoring rule-based.

Requests use the standard library only (``urllib.request``): ``POST {url}/chat/completions`` with ``model``,
``messages``, ``temperature`` 0 and ``max_tokens``, the key from the environment variable ``api_key_env`` (if set)
as a bearer token, at most ``max_concurrency`` at a time. A connection error, a timeout, HTTP 429 or 5xx, or a
reply that is not a chat completion is retried ``retries`` times, waiting ``backoff_s`` seconds doubled each time;
any other HTTP error is not. Once a request has failed to reach the endpoint after its retries, the endpoint is
taken to be down and the run's remaining requests fail at once rather than each waiting through its retries.

A failed request never loses an answer: `judge_records` records the failure on the row (the verdict ``{"model",
"error"}``), the record keeps its rule-based score, and the counts go into ``scores.json``; a rerun asks again. A
usable reply is cached on the row (``{"model", "reply", "extraction"}``) and reused while the judge model is the
same, so a resumed evaluation asks nothing twice.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from staged_vlm_jax.eval.benchmarks import JUDGED, JudgeTask

# A predictions row's key for its judge verdict.
VERDICT = "judge"
# HTTP statuses worth retrying: rate limiting and server errors.
_RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    """``config.judge``: the endpoint (``url``, e.g. ``http://127.0.0.1:8000/v1``; None: no judge), the served
    ``model`` name, the environment variable holding the API key (unset: no key sent), and how requests are made."""

    url: str | None = None
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    retries: int = 3
    backoff_s: float = 1.0
    max_concurrency: int = 8
    max_tokens: int = 2048  # VLMEvalKit's OpenAIWrapper default

    def problems(self) -> list[str]:
        """What is wrong with the spec, as ``judge.key: message`` lines (none when ``url`` is None)."""
        if self.url is None:
            return []
        problems = []
        if not self.url.startswith(("http://", "https://")):
            problems.append(f"judge.url: {self.url!r} is not an http(s) URL")
        if not self.model:
            problems.append("judge.model: required with judge.url (the model name the endpoint serves)")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.retries < 0:
            problems.append("judge.timeout_s must be > 0, judge.backoff_s and judge.retries >= 0")
        if self.max_concurrency < 1 or self.max_tokens < 1:
            problems.append("judge.max_concurrency and judge.max_tokens must be >= 1")
        return problems


class JudgeError(Exception):
    """A judge request that failed (after its retries, where retried)."""


class Judge:
    """A chat-completions client for one judge model (module docstring); thread-safe."""

    def __init__(self, spec: JudgeSpec) -> None:
        if spec.url is None:
            raise ValueError("Judge needs spec.url")
        self.spec = spec
        self.endpoint = spec.url.rstrip("/") + "/chat/completions"
        self.unreachable: str | None = None  # why the endpoint is taken to be down, once it is

    @property
    def model(self) -> str:
        return self.spec.model

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.spec.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, body: bytes) -> str:
        """One request: the reply's text (urllib's errors, or a reply that is not a chat completion, raise)."""
        request = urllib.request.Request(self.endpoint, data=body, headers=self._headers(), method="POST")
        with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as response:
            payload = json.loads(response.read())
        content = payload["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"message content is {content!r:.80}, not text")
        return content

    def complete(self, messages: Sequence[dict[str, str]]) -> str:
        """The judge's reply to ``messages`` (greedy); JudgeError once retries are spent or not worth it."""
        if self.unreachable is not None:
            raise JudgeError(f"not sent: the endpoint is down ({self.unreachable})")
        body = json.dumps({"model": self.spec.model, "messages": list(messages), "temperature": 0,
                           "max_tokens": self.spec.max_tokens}).encode()  # fmt: skip
        for attempt in range(self.spec.retries + 1):
            if attempt:
                time.sleep(self.spec.backoff_s * 2 ** (attempt - 1))
            try:
                return self._post(body)
            except urllib.error.HTTPError as error:
                detail = error.read()[:200].decode(errors="replace")
                failure = f"HTTP {error.code} from {self.endpoint}: {detail}"
                if error.code not in _RETRIED_STATUS:
                    raise JudgeError(failure) from error
                unreachable = False
            except urllib.error.URLError as error:  # refused, unresolvable, no route: the endpoint is not there
                failure, unreachable = f"cannot reach {self.endpoint}: {error.reason}", True
            except OSError as error:  # a timeout or a dropped connection while the judge answered
                failure, unreachable = f"no reply from {self.endpoint}: {error!r}", False
            except (ValueError, KeyError, IndexError, TypeError) as error:  # not a chat completion
                failure, unreachable = f"not a chat completion from {self.endpoint}: {error!r:.200}", False
        if unreachable:
            self.unreachable = failure
        raise JudgeError(f"{failure} (after {self.spec.retries + 1} attempts)")


def ask(judge: Judge, task: JudgeTask, record: dict[str, Any]) -> dict[str, str]:
    """The judge's verdict on one record: ``{"model", "reply", "extraction"}``, or ``{"model", "error"}`` for a
    failed request or a reply the benchmark cannot use."""
    try:
        reply = judge.complete(task.messages(record))
    except JudgeError as error:
        return {"model": judge.model, "error": str(error)}
    extraction = task.parse(reply, record)
    if extraction is None:
        return {"model": judge.model, "error": f"unusable reply: {reply!r:.200}"}
    return {"model": judge.model, "reply": reply, "extraction": extraction}


def judge_records(
    judge: Judge, task: JudgeTask, records: Sequence[dict[str, Any]], save: Callable[[int, dict[str, str]], None],
    progress: Callable[[int], None] = lambda done: None,
) -> dict[str, float]:  # fmt: skip
    """Asks ``judge`` about every record ``task`` wants (the rules cannot read it) and hands each usable extraction
    to the scorer under `benchmarks.JUDGED`.

    A record whose row already holds a usable verdict of this judge model (``record[VERDICT]``) reuses it; the others
    are asked, ``max_concurrency`` at a time, and each new verdict is passed to ``save(position, verdict)`` as it
    arrives (in this thread). Returns the counts for ``scores.json``: ``judge/wanted`` (records the rules could not
    read), ``judge/cached``, ``judge/asked``, ``judge/failed`` (asked, without a usable reply: they keep their
    rule-based score).
    """
    wanted = [position for position, record in enumerate(records) if task.wanted(record, position)]
    todo = []
    for position in wanted:
        verdict = records[position].get(VERDICT)
        if isinstance(verdict, dict) and verdict.get("model") == judge.model and "extraction" in verdict:
            records[position][JUDGED] = verdict["extraction"]
        else:
            todo.append(position)
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(judge.spec.max_concurrency) as pool:
        futures = {pool.submit(ask, judge, task, records[position]): position for position in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            position, verdict = futures[future], future.result()
            save(position, verdict)
            if "extraction" in verdict:
                records[position][JUDGED] = verdict["extraction"]
            else:
                failed += 1
            progress(done)
    return {"judge/wanted": float(len(wanted)), "judge/cached": float(len(wanted) - len(todo)),
            "judge/asked": float(len(todo)), "judge/failed": float(failed)}  # fmt: skip
