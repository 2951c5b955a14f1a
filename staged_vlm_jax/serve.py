"""`staged-vlm serve`: OpenAI-compatible chat completions over the rollout engine that trains the model.

VLMEvalKit, lmms-eval and any OpenAI client talk to a checkpoint unchanged, on the accelerator it was trained on:
``GET /v1/models``, ``POST /v1/chat/completions`` (text and images as ``image_url`` data URLs, or local paths
when allowed; ``max_tokens``, ``temperature``, ``top_p``, ``n``, ``seed``, ``stop``, ``stream``), ``GET /health``
and ``GET /metrics`` (Prometheus text). Prompts are built by the training pipeline's own `PromptBuilder` (the
model's chat template, its image processor), tokens drawn by `RolloutEngine.start`.

The ASGI stack is Starlette on uvicorn: FastAPI is Starlette plus schema-driven validation and OpenAPI docs, and
neither is wanted here — requests are checked by hand so that every refusal is an OpenAI-style error body naming
the field (FastAPI's would be 422s in its own shape).

Batching (`Scheduler`, one thread that owns the device): a request waits at most ``max_wait_ms`` for others with
the same sampling settings (greedy, temperature, top_p, n), then up to ``max_batch`` rows (prompts × n) decode as
one `DecodeStream`, ``segment`` tokens per device call. Between calls, text is detokenised and streamed, rows
that hit a stop string, their own ``max_tokens`` or a disconnected client are ended, and the batch stops once
every row is done. A request with a ``seed`` decodes in a batch of its own from ``jax.random.key(seed)``, so the
same seed and request give the same completion. Requests join at batch boundaries (not between steps of a
running batch). A full queue answers 429, a prompt over the context 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax.data.images import ImageInputs
from staged_vlm_jax.data.pipeline import Prompt, PromptBuilder, PromptCollator
from staged_vlm_jax.data.schema import DataError, ImageRef
from staged_vlm_jax.paths import as_path
from staged_vlm_jax.rl.rollout import RolloutEngine

log = logging.getLogger("staged_vlm_jax.serve")

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class ServeSpec:
    """What the server accepts and how it batches (the `staged-vlm serve` flags)."""

    model_name: str
    max_batch: int = 32  # rows (prompts × n) per decode batch
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_model_len: int = 8192  # prompt + completion tokens
    max_tokens: int = 2048  # a request's default max_tokens (less where the context leaves less)
    segment: int = 16  # tokens per device call between host checks
    allow_local_images: bool = False


class ApiError(Exception):
    """A request the server refuses, as the OpenAI error body ``{"error": {message, type, param, code}}``."""

    TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error", 500: "server_error",
             503: "server_error"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                "param": self.param, "code": self.code}  # fmt: skip
        return JSONResponse({"error": body}, status_code=self.status)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """A request's sampling settings; requests batch together when their `key`s are equal."""

    max_tokens: int
    temperature: float
    top_p: float
    n: int
    seed: int | None
    stop: tuple[str, ...]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key(self, request_id: str) -> tuple:
        sampling = (1.0, 1.0) if self.greedy else (self.temperature, self.top_p)
        return (self.greedy, *sampling, self.n, request_id if self.seed is not None else None)


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated chat-completions request: the conversation in the chat template's form (``{"type": "image"}``
    entries), its images, and how to sample."""

    model: str
    messages: list[dict[str, Any]]
    images: list[ImageRef]
    sampling: Sampling
    stream: bool
    include_usage: bool


def _number(body: dict, key: str, default, kind: type, low: float, high: float):
    value = body.get(key, default)
    if value is None:
        value = default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float) if kind is float else int)
        or not (low <= value <= high)
    ):
        raise ApiError(400, f"{key} must be {'a number' if kind is float else 'an integer'} in [{low}, {high}], "
                       f"got {value!r}", key)  # fmt: skip
    return kind(value)


def parse_chat(body: Any, spec: ServeSpec, request_id: str) -> ChatRequest:
    """Checks a chat-completions body and converts its messages; raises `ApiError` (400, or 404 for another
    model) naming the offending field. Fields this server does not implement (tools, logprobs, …) are refused
    rather than silently ignored, except those that do not change the completion (user, metadata, …)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model != spec.model_name:
        raise ApiError(404, f"The model {model!r} does not exist; this server serves {spec.model_name!r}", "model",
                       "model_not_found")  # fmt: skip
    for key in ("tools", "functions", "logprobs", "top_logprobs", "response_format", "logit_bias"):
        if body.get(key) not in (None, False, [], {}):
            raise ApiError(400, f"{key} is not supported by staged-vlm serve", key)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    messages, images = [], []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"{where}: a message is an object with role one of {ROLES}", where)
        content = message.get("content")
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise ApiError(400, f"{where}.content must be a string or a list of parts", f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            field = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url" and message["role"] == "user":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                images.append(_image(url, field, request_id, spec))
                parts.append({"type": "image"})
            else:
                raise ApiError(400, f"{field}: expected {{'type': 'text', 'text': ...}} or (in a user message) "
                               "{'type': 'image_url', 'image_url': {'url': ...}}", field)  # fmt: skip
        messages.append({"role": message["role"], "content": parts})
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not both", "max_tokens")
    max_key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a non-empty string or a list of at most 4 of them", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"seed must be an integer, got {seed!r}", "seed")
    sampling = Sampling(
        max_tokens=_number(body, max_key, 0, int, 1, spec.max_model_len) if body.get(max_key) is not None else 0,
        temperature=_number(body, "temperature", 1.0, float, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, float, 1e-6, 1.0),
        n=_number(body, "n", 1, int, 1, spec.max_batch),
        seed=seed,
        stop=tuple(stop),
    )
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be a boolean, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return ChatRequest(model, messages, images, sampling, stream, include_usage)


def _image(url: Any, field: str, request_id: str, spec: ServeSpec) -> ImageRef:
    """An ``image_url`` as an `ImageRef` (decoded later, so an undecodable image is a 400 naming ``field``):
    a base64 data URL, or with ``allow_local_images`` a local path or ``file://`` URL. Remote URLs are refused:
    the server never downloads."""
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{field}.image_url.url must be a string", field)
    where = f"request {request_id}"
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if not header.endswith(";base64"):
            raise ApiError(400, f"{field}: a data URL must be base64 encoded (data:image/...;base64,...)", field)
        try:
            return ImageRef(base64.b64decode(data, validate=True), where, field, header.removesuffix(";base64"))
        except (binascii.Error, ValueError) as error:
            raise ApiError(400, f"{field}: invalid base64 in the data URL ({error})", field) from error
    if url.startswith(("http://", "https://")):
        raise ApiError(400, f"{field}: remote image URLs are not fetched; send the image as a base64 data URL",
                       field)  # fmt: skip
    if not spec.allow_local_images:
        raise ApiError(400, f"{field}: local image paths are refused (start the server with --allow-local-images)",
                       field)  # fmt: skip
    path = url.removeprefix("file://")
    return ImageRef(as_path(path), where, field, path)


@dataclasses.dataclass
class Job:
    """A request in the scheduler: its prompt and sampling, where its events go (``emit`` is thread-safe: the
    events land in ``events`` on the request's event loop), and whether its client has gone."""

    id: str
    prompt: Prompt
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    enqueued: float = dataclasses.field(default_factory=time.monotonic)

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclasses.dataclass
class Choice:
    """One row of a running batch: the tokens drawn for choice ``index`` of ``job`` and the text sent so far."""

    job: Job
    index: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    sent: int = 0  # characters of the text already emitted
    finish_reason: str | None = None


class Metrics:
    """Counters for ``GET /metrics`` (Prometheus text exposition), updated under one lock."""

    HELP = {
        "requests_total": "chat completion requests answered (any status)",
        "requests_rejected_total": "requests refused with 429 (queue full)",
        "request_errors_total": "requests answered with a 4xx/5xx error",
        "requests_cancelled_total": "requests whose client went away before the end",
        "batches_total": "decode batches run",
        "batch_rows_total": "rows (prompts x n) over all batches",
        "batch_rows_max": "largest batch run, in rows",
        "decode_steps_total": "decode steps run over all batches (each step draws a token for every row)",
        "prompt_tokens_total": "prompt tokens of finished requests",
        "generation_tokens_total": "completion tokens of finished requests",
        "queue_depth": "requests waiting for a batch",
    }

    def __init__(self) -> None:
        self.values = dict.fromkeys(self.HELP, 0)
        self.lock = threading.Lock()

    def add(self, name: str, value: int = 1) -> None:
        with self.lock:
            self.values[name] += value

    def set(self, name: str, value: int) -> None:
        with self.lock:
            self.values[name] = value

    def maximum(self, name: str, value: int) -> None:
        with self.lock:
            self.values[name] = max(self.values[name], value)

    def text(self) -> str:
        with self.lock:
            values = dict(self.values)
        lines = []
        for name, value in values.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP staged_vlm_{name} {self.HELP[name]}", f"# TYPE staged_vlm_{name} {kind}",
                      f"staged_vlm_{name} {value}"]  # fmt: skip
        return "\n".join(lines) + "\n"


class Scheduler:
    """The thread that owns the model: forms batches from queued jobs and decodes them (module docstring)."""

    def __init__(self, spec: ServeSpec, model: nnx.Module, tokenizer: PreTrainedTokenizerFast,
                 engine: RolloutEngine, metrics: Metrics, seed: int = 0) -> None:  # fmt: skip
        self.spec, self.model, self.tokenizer, self.engine, self.metrics = spec, model, tokenizer, engine, metrics
        self.eos_token_ids = tuple(dict.fromkeys([tokenizer.eos_token_id, tokenizer.pad_token_id]))
        self.collate = PromptCollator(tokenizer.pad_token_id, engine.config.prompt_buckets)
        self.rng, self.batches = jax.random.key(seed), itertools.count()
        self.jobs: collections.deque[Job] = collections.deque()
        self.condition = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="staged-vlm-scheduler", daemon=True)

    def submit(self, job: Job) -> None:
        """Queues ``job``; a full queue is `ApiError` 429."""
        with self.condition:
            if len(self.jobs) >= self.spec.max_queue:
                self.metrics.add("requests_rejected_total")
                raise ApiError(429, f"the server's queue is full ({self.spec.max_queue} requests); retry later")
            self.jobs.append(job)
            self.metrics.set("queue_depth", len(self.jobs))
            self.condition.notify()

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify()
        self.thread.join(timeout=60)

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            if not jobs:
                continue
            try:
                self._run(jobs)
            except Exception as error:  # a failed batch fails its requests, not the server
                log.error("batch of %d request(s) failed:\n%s", len(jobs), traceback.format_exc())
                for job in jobs:
                    job.emit("error", ApiError(500, f"generation failed: {type(error).__name__}: {error}"))

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and, after waiting up to ``max_wait_ms`` from its arrival for company,
        the later jobs of the same sampling key that fit ``max_batch`` rows. None once stopping."""
        with self.condition:
            while not self.jobs and not self.stopping:
                self.condition.wait()
            if self.stopping:
                return None
            while self.jobs and self.jobs[0].cancelled.is_set():
                self.jobs.popleft()
            if not self.jobs:
                return []
            first = self.jobs[0]
            key = first.sampling.key(first.id)
            deadline = first.enqueued + self.spec.max_wait_ms / 1000
            while True:
                batch, rows = [], 0
                for job in self.jobs:
                    if job.sampling.key(job.id) == key and rows + job.sampling.n <= self.spec.max_batch:
                        batch.append(job)
                        rows += job.sampling.n
                wait = deadline - time.monotonic()
                if rows + first.sampling.n > self.spec.max_batch or wait <= 0 or first.sampling.seed is not None:
                    break
                self.condition.wait(wait)
            for job in batch:
                self.jobs.remove(job)
            self.metrics.set("queue_depth", len(self.jobs))
        return [job for job in batch if not job.cancelled.is_set()]

    def _run(self, jobs: list[Job]) -> None:
        sampling = jobs[0].sampling
        batch = self.collate([job.prompt for job in jobs])
        max_new = max(job.sampling.max_tokens for job in jobs)
        fits = self.engine.prompts_per_call(self.model, len(jobs), batch.input_ids.shape[1], max_new, sampling.n)
        if fits < len(jobs):  # the KV cache bound: the rest go back to the front of the queue
            with self.condition:
                self.jobs.extendleft(reversed(jobs[fits:]))
            jobs = jobs[:fits]
            batch = self.collate([job.prompt for job in jobs])
            max_new = max(job.sampling.max_tokens for job in jobs)
        index = next(self.batches)
        rng = jax.random.key(sampling.seed) if sampling.seed is not None else jax.random.fold_in(self.rng, index)
        stream = self.engine.start(
            self.model, batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw, max_new_tokens=max_new, n=sampling.n, greedy=sampling.greedy,
            temperature=sampling.temperature or 1.0, top_p=sampling.top_p, eos_token_ids=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id, rng=rng,
        )  # fmt: skip
        self.metrics.add("batches_total")
        self.metrics.add("batch_rows_total", len(jobs) * sampling.n)
        self.metrics.maximum("batch_rows_max", len(jobs) * sampling.n)
        choices = [Choice(job, i) for job in jobs for i in range(sampling.n)]
        ended: list[int] = []
        while not stream.finished and any(choice.finish_reason is None for choice in choices):
            tokens, mask = stream.advance(self.spec.segment, ended)
            ended = []
            for row, choice in enumerate(choices):
                if choice.finish_reason is None and self._step(choice, tokens[row][mask[row] > 0], stream.done[row]):
                    ended.append(row)
        self.metrics.add("decode_steps_total", stream.step)
        for choice in choices:
            if choice.finish_reason is None:
                self._finish(choice, "length")
        for job in jobs:
            job.emit("done")

    def _step(self, choice: Choice, new: np.ndarray, done: bool) -> bool:
        """Takes a row's new tokens: emits the text that is final, and decides whether the row ends here (EOS,
        a stop string, its request's max_tokens, a gone client). Returns whether it ended."""
        job, sampling = choice.job, choice.job.sampling
        if job.cancelled.is_set():
            choice.finish_reason = "cancelled"
            return True
        choice.tokens += new.tolist()[: sampling.max_tokens - len(choice.tokens)]
        eos = bool(choice.tokens) and choice.tokens[-1] in self.eos_token_ids and done
        text = self.tokenizer.decode(choice.tokens, skip_special_tokens=True)
        cut = min((text.find(stop) for stop in sampling.stop if stop in text), default=-1)
        reason = "stop" if eos or cut >= 0 else "length" if len(choice.tokens) >= sampling.max_tokens else None
        if cut >= 0:
            text = text[:cut]
        elif reason is None:  # hold back what may still become a stop string or a multi-byte character
            text = text[: max(len(text) - max((len(stop) - 1 for stop in sampling.stop), default=0), 0)]
            text = text.rstrip("\ufffd")
        if len(text) > choice.sent:
            job.emit("delta", choice.index, text[choice.sent :])
            choice.sent = len(text)
        if reason is not None:
            self._finish(choice, reason)
        return reason is not None

    def _finish(self, choice: Choice, reason: str) -> None:
        choice.finish_reason = reason
        if reason != "cancelled":
            choice.job.emit("finish", choice.index, reason, len(choice.tokens))


class Server:
    """The HTTP side: request parsing and prompt building off the event loop, jobs to the `Scheduler`, events
    back to clients as one JSON body or server-sent events."""

    def __init__(self, spec: ServeSpec, model: nnx.Module, tokenizer: PreTrainedTokenizerFast, images: ImageInputs,
                 engine: RolloutEngine) -> None:  # fmt: skip
        self.spec = spec
        self.metrics = Metrics()
        self.builder = PromptBuilder(tokenizer, images, "raise")
        self.scheduler = Scheduler(spec, model, tokenizer, engine, self.metrics)
        self.created = int(time.time())

    def app(self) -> Starlette:
        routes = [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.scheduler.thread.start()
        yield
        self.scheduler.stop()

    async def models(self, request: Request) -> Response:
        card = {"id": self.spec.model_name, "object": "model", "created": self.created, "owned_by": "staged-vlm",
                "max_model_len": self.spec.max_model_len}  # fmt: skip
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self, request: Request) -> Response:
        alive = self.scheduler.thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "scheduler stopped"}, status_code=200 if alive else 503)

    async def prometheus(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.text(), media_type="text/plain; version=0.0.4")

    async def chat(self, request: Request) -> Response:
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        started = time.monotonic()
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ApiError(400, f"the request body is not valid JSON ({error})") from error
            chat = parse_chat(body, self.spec, request_id)
            prompt = await asyncio.to_thread(self._prompt, request_id, chat)
            sampling = self._limits(chat.sampling, len(prompt.input_ids))
            loop = asyncio.get_running_loop()
            job = Job(request_id, prompt, sampling, loop, asyncio.Queue())
            self.scheduler.submit(job)
        except ApiError as error:
            self._log(request_id, error.status, started, error.message)
            self.metrics.add("request_errors_total")
            return error.response()
        if chat.stream:
            return StreamingResponse(self._stream(job, chat, started), media_type="text/event-stream")
        return await self._complete(request, job, chat, started)

    def _prompt(self, request_id: str, chat: ChatRequest) -> Prompt:
        try:
            return self.builder.chat(request_id, chat.messages, chat.images)
        except DataError as error:
            raise ApiError(400, str(error).removeprefix(f"{error.where}: "), error.field) from error
        except ValueError as error:  # e.g. a chat template that refuses the conversation
            raise ApiError(400, f"cannot build the prompt: {error}", "messages") from error

    def _limits(self, sampling: Sampling, prompt_tokens: int) -> Sampling:
        """The request's max_tokens (default: the server's, within the context) checked against the context."""
        room = self.spec.max_model_len - prompt_tokens
        if room < 1:
            raise ApiError(400, f"This model's maximum context length is {self.spec.max_model_len} tokens; the "
                           f"messages take {prompt_tokens}", "messages", "context_length_exceeded")  # fmt: skip
        if sampling.max_tokens > room:
            raise ApiError(400, f"This model's maximum context length is {self.spec.max_model_len} tokens. However, "
                           f"you requested {prompt_tokens + sampling.max_tokens} tokens ({prompt_tokens} in the "
                           f"messages, {sampling.max_tokens} in the completion)", "max_tokens",
                           "context_length_exceeded")  # fmt: skip
        return sampling if sampling.max_tokens else dataclasses.replace(sampling, max_tokens=min(self.spec.max_tokens,
                                                                                                 room))  # fmt: skip

    async def _events(self, job: Job) -> AsyncIterator[tuple]:
        """The job's events up to its end ("done"); an "error" event raises its `ApiError`."""
        while True:
            event = await job.events.get()
            if event[0] == "error":
                raise event[1]
            if event[0] == "done":
                return
            yield event

    async def _complete(self, request: Request, job: Job, chat: ChatRequest, started: float) -> Response:
        """Waits for the whole completion, or for the client to go (which cancels the job)."""
        texts = [""] * chat.sampling.n
        finishes: dict[int, tuple[str, int]] = {}

        async def collect() -> None:
            async for event in self._events(job):
                if event[0] == "delta":
                    texts[event[1]] += event[2]
                else:
                    finishes[event[1]] = event[2:]

        collecting = asyncio.ensure_future(collect())
        disconnect = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait([collecting, disconnect], return_when=asyncio.FIRST_COMPLETED)
        disconnect.cancel()
        if not collecting.done():
            self._cancel(job)
            collecting.cancel()
            self._log(job.id, 499, started, "client disconnected")
            return Response(status_code=499)
        try:
            collecting.result()
        except ApiError as error:
            self._log(job.id, error.status, started, error.message)
            self.metrics.add("request_errors_total")
            return error.response()
        usage = self._usage(job, finishes)
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "finish_reason": finishes[i][0], "logprobs": None} for i in range(chat.sampling.n)]  # fmt: skip
        self._log(job.id, 200, started, f"finish={[finishes[i][0] for i in range(chat.sampling.n)]}", usage)
        return JSONResponse({"id": job.id, "object": "chat.completion", "created": int(time.time()),
                             "model": chat.model, "choices": choices, "usage": usage})  # fmt: skip

    async def _stream(self, job: Job, chat: ChatRequest, started: float) -> AsyncIterator[str]:
        """Server-sent events: a role chunk per choice, content deltas, a finish chunk per choice, optionally a
        usage chunk, then ``[DONE]``. A client that goes away cancels the job."""
        created = int(time.time())

        def chunk(choices: list[dict], **extra) -> str:
            body = {"id": job.id, "object": "chat.completion.chunk", "created": created, "model": chat.model,
                    "choices": choices, **extra}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        finishes: dict[int, tuple[str, int]] = {}
        answered = False
        try:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                         for i in range(chat.sampling.n)])  # fmt: skip
            async for event in self._events(job):
                if event[0] == "delta":
                    yield chunk([{"index": event[1], "delta": {"content": event[2]}, "finish_reason": None}])
                else:
                    finishes[event[1]] = event[2:]
                    yield chunk([{"index": event[1], "delta": {}, "finish_reason": event[2]}])
            usage = self._usage(job, finishes)
            if chat.include_usage:
                yield chunk([], usage=usage)
            answered = True
            yield "data: [DONE]\n\n"
            self._log(job.id, 200, started, "stream", usage)
        except ApiError as error:
            answered = True
            self.metrics.add("request_errors_total")
            self._log(job.id, error.status, started, error.message)
            yield f"data: {json.dumps({'error': {'message': error.message, 'type': 'server_error'}})}\n\n"
        finally:
            if not answered:
                self._cancel(job)

    def _cancel(self, job: Job) -> None:
        """The client went away: the scheduler drops the job, or ends its rows at the next segment."""
        job.cancelled.set()
        self.metrics.add("requests_cancelled_total")

    def _usage(self, job: Job, finishes: dict[int, tuple[str, int]]) -> dict[str, int]:
        prompt, completion = len(job.prompt.input_ids), sum(tokens for _, tokens in finishes.values())
        self.metrics.add("prompt_tokens_total", prompt)
        self.metrics.add("generation_tokens_total", completion)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _log(self, request_id: str, status: int, started: float, detail: str, usage: dict | None = None) -> None:
        self.metrics.add("requests_total")
        tokens = "" if usage is None else f" prompt={usage['prompt_tokens']} completion={usage['completion_tokens']}"
        log.info("%s %d %.0fms%s %s", request_id, status, (time.monotonic() - started) * 1000, tokens, detail)


async def _disconnected(request: Request) -> None:
    """Returns when the client of ``request`` (whose body was read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def serve(server: Server, host: str, port: int) -> None:
    """Runs ``server`` with uvicorn until interrupted."""
    import uvicorn

    handler = logging.StreamHandler()  # request logs on stderr beside uvicorn's, whatever the root logger has
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    uvicorn.run(server.app(), host=host, port=port, log_level="info")
