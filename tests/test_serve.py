"""`staged-vlm serve` on localhost: a tiny exported model served in a subprocess answers the official `openai` client
with the completions `rl.rollout.generate` gives for the same prompts (text, an image, streaming), batches
concurrent clients, ends rows at stop strings and max_tokens, refuses malformed requests with OpenAI-style 4xx
bodies and keeps serving, and stops a request's work when its client goes away. Request checks and the queue bound
are also tested in-process."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from staged_vlm_jax import models
from staged_vlm_jax.data.images import image_inputs
from staged_vlm_jax.data.pipeline import PromptBuilder
from staged_vlm_jax.data.schema import ImageRef
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer
from staged_vlm_jax.rl import rollout
from staged_vlm_jax.serve import ApiError, Job, Metrics, Sampling, Scheduler, ServeSpec, parse_chat

openai = pytest.importorskip("openai")

PIXELS = (56 * 56, 112 * 112)
NAME = "tiny-vlm"


def _png(seed: int, size=(90, 60)) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = root / NAME
    cfg = models.tiny_config("qwen2_5_vl")
    models.save_hf(models.create(cfg, seed=3), cfg, model_dir)
    build_tiny_tokenizer(model_dir)
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}  # one device, as the reference
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the tiny model's programs compile in under a second
    command = [sys.executable, "-m", "staged_vlm_jax", "serve", "--model", str(model_dir), "--port", str(port),
               "--dtype", "float32", "--max-tokens", "12", "--max-wait-ms", "300", "--max-model-len", "256",
               "--segment", "4", "--allow-local-images", "--min-pixels", str(PIXELS[0]), "--max-pixels",
               str(PIXELS[1]), "--compilation-cache", str(root / "jax_cache")]  # fmt: skip
    log = (root / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start:\n{(root / 'server.log').read_text()}")
        time.sleep(0.5)
    model, _ = models.load_hf(model_dir)
    tokenizer = load_tokenizer(model_dir)
    builder = PromptBuilder(tokenizer, image_inputs("qwen2_5_vl", "easyr1", *PIXELS, "pil"), "raise")
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield {"base": base, "client": client, "model": model, "tokenizer": tokenizer, "builder": builder, "root": root,
           "process": process}  # fmt: skip
    process.terminate()
    process.wait(timeout=60)
    log.close()


def _reference(served, messages, images=(), max_new_tokens=12) -> tuple[str, int, int]:
    """(text, completion tokens, prompt tokens) of `rl.rollout.generate`, greedy, on the prompt the server builds."""
    tokenizer = served["tokenizer"]
    refs = [ImageRef(data, "test", f"image {i}", "png") for i, data in enumerate(images)]
    prompt = served["builder"].chat("reference", messages, refs)
    out = rollout.generate(
        served["model"], prompt.input_ids[None], np.ones((1, len(prompt.input_ids)), np.int32),
        pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw if images else None,
        max_new_tokens=max_new_tokens, greedy=True, eos_token_ids=(tokenizer.eos_token_id, tokenizer.pad_token_id),
        pad_token_id=tokenizer.pad_token_id, rng=jax.random.key(0),
    )  # fmt: skip
    length = int(out.lengths[0])
    return (
        tokenizer.decode(np.asarray(out.tokens)[0, :length].tolist(), skip_special_tokens=True),
        length,
        len(prompt.input_ids),
    )


def _post(served, body, raw: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(served["base"] + "/v1/chat/completions", method="POST",
                                     data=raw if raw is not None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _metrics(served) -> dict[str, float]:
    with urllib.request.urlopen(served["base"] + "/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return {line.split()[0].removeprefix("staged_vlm_"): float(line.split()[1]) for line in lines if line[0] != "#"}


QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
WITH_IMAGE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]


def _image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "How many squares?"}]}]  # fmt: skip


def test_models_health_and_metrics(served):
    assert [model.id for model in served["client"].models.list().data] == [NAME]
    with urllib.request.urlopen(served["base"] + "/health", timeout=30) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    assert {"requests_total", "batch_rows_max", "queue_depth"} <= set(_metrics(served))


def test_compiled_programs_are_kept_for_a_restart(served):
    served["client"].chat.completions.create(model=NAME, messages=QUESTION, max_tokens=2, temperature=0)
    assert len(list((served["root"] / "jax_cache").iterdir())) >= 2  # at least the decode stream's start and step


def test_greedy_completions_equal_rollout_generate(served):
    client, image = served["client"], _png(1)
    for messages, sent, images in ((QUESTION, QUESTION, ()), (WITH_IMAGE, _image_message(_data_url(image)), [image])):
        text, tokens, prompt_tokens = _reference(served, messages, images)
        reply = client.chat.completions.create(model=NAME, messages=sent, temperature=0)
        choice = reply.choices[0]
        assert choice.message.content == text and choice.message.role == "assistant"
        assert choice.finish_reason == ("length" if tokens == 12 else "stop")
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, tokens)

        chunks = list(client.chat.completions.create(model=NAME, messages=sent, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))  # fmt: skip
        deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert "".join(deltas) == text and len([d for d in deltas if d]) > 1  # streamed in pieces (segment 4)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
        assert chunks[-1].usage.completion_tokens == tokens


def test_a_local_image_path_when_allowed(served):
    path = served["root"] / "local.png"
    path.write_bytes(_png(2))
    reply = served["client"].chat.completions.create(model=NAME, messages=_image_message(str(path)), temperature=0)
    assert reply.choices[0].message.content == _reference(served, WITH_IMAGE, [_png(2)])[0]


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(served):
    questions = [[{"role": "user", "content": f"What is {i} + {i + 1}?"}] for i in range(16)]
    expected = [_reference(served, messages)[0] for messages in questions]
    before = _metrics(served)
    ask = lambda messages: served["client"].chat.completions.create(model=NAME, messages=messages, temperature=0)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(ask, questions))
    assert [reply.choices[0].message.content for reply in replies] == expected
    after = _metrics(served)
    batches = after["batches_total"] - before["batches_total"]
    assert after["batch_rows_max"] > 1 and batches < 16  # batched: fewer decode batches than requests


def test_stop_strings_max_tokens_n_and_seed(served):
    client = served["client"]
    text, _, _ = _reference(served, QUESTION)
    stop = text[3:5]
    reply = client.chat.completions.create(model=NAME, messages=QUESTION, temperature=0, stop=[stop])
    assert reply.choices[0].message.content == text[: text.find(stop)] and reply.choices[0].finish_reason == "stop"
    short = client.chat.completions.create(model=NAME, messages=QUESTION, temperature=0, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert text.startswith(short.choices[0].message.content)
    sample = lambda: client.chat.completions.create(model=NAME, messages=QUESTION, temperature=1.0, n=3, seed=11)
    first, again = sample(), sample()
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1 and first.usage.completion_tokens > 3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (None, 400, None),  # not JSON
        ({"model": "other", "messages": QUESTION}, 404, "model"),
        ({"model": NAME, "messages": _image_message(_data_url(b"not an image"))}, 400, "messages[0].content[0]"),
        ({"model": NAME, "messages": _image_message("https://example.com/cat.png")}, 400, "messages[0].content[0]"),
        ({"model": NAME, "messages": QUESTION, "max_tokens": 250}, 400, "max_tokens"),  # over the 256-token context
        ({"model": NAME, "messages": [{"role": "user", "content": "x" * 600}]}, 400, "messages"),
        ({"model": NAME, "messages": QUESTION, "n": 0}, 400, "n"),
        ({"model": NAME, "messages": []}, 400, "messages"),
    ],
)
def test_malformed_requests_get_openai_errors_and_the_server_goes_on(served, body, status, param):
    code, reply = _post(served, body, raw=b"{not json" if body is None else None)
    assert code == status and set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["param"] == param and reply["error"]["message"]
    ok = served["client"].chat.completions.create(model=NAME, messages=QUESTION, temperature=0, max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_a_client_that_goes_away_cancels_its_work(served):
    """A streaming request for 200 tokens (the tiny model says no EOS that soon) whose client closes after the
    first piece of text is cancelled, and its batch stops at the next segment instead of decoding 200 steps."""
    assert _reference(served, QUESTION, max_new_tokens=200)[1] == 200
    before = _metrics(served)
    port = int(served["base"].rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": NAME, "messages": QUESTION, "max_tokens": 200, "stream": True, "temperature": 0}
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    while b'"content": ""' in (line := response.readline()) or not line.startswith(b"data: "):
        pass  # up to the first piece of text: the batch is decoding
    response.close()
    connection.close()
    deadline = time.monotonic() + 120
    while (after := _metrics(served))["decode_steps_total"] == before["decode_steps_total"]:
        assert time.monotonic() < deadline, "the batch did not end"
        time.sleep(0.2)
    assert after["requests_cancelled_total"] == before["requests_cancelled_total"] + 1
    assert after["decode_steps_total"] - before["decode_steps_total"] < 200
    assert after["generation_tokens_total"] == before["generation_tokens_total"]  # no completion was counted


def test_parse_chat_converts_messages_and_names_bad_fields():
    spec = ServeSpec(NAME, max_batch=8)
    url = _data_url(_png(0))
    chat = parse_chat({"model": NAME, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image_url", "image_url": {"url": url}}]},
        {"role": "assistant", "content": "B"},
    ], "stop": "###", "max_completion_tokens": 7, "stream": True}, spec, "r1")  # fmt: skip
    assert chat.messages == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}]},
                             {"role": "assistant", "content": "B"}]  # fmt: skip
    assert chat.images[0].source == _png(0) and chat.images[0].field == "messages[1].content[1]"
    assert chat.sampling == Sampling(max_tokens=7, temperature=1.0, top_p=1.0, n=1, seed=None, stop=("###",))
    assert chat.stream and not chat.include_usage
    bad = {
        "temperature": ({"temperature": 3}, "temperature"),
        "n over max_batch": ({"n": 9}, "n"),
        "seed": ({"seed": "x"}, "seed"),
        "stop": ({"stop": [""]}, "stop"),
        "tools": ({"tools": [{"type": "function"}]}, "tools"),
        "role": ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]"),
        "image in assistant": (
            {"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": url}}]}]},
            "messages[0].content[0]",
        ),  # fmt: skip
        "local path": ({"messages": _image_message("/tmp/x.png")}, "messages[0].content[0]"),
        "not base64": ({"messages": _image_message("data:image/png;base64,@@@")}, "messages[0].content[0]"),
    }
    for name, (override, param) in bad.items():
        with pytest.raises(ApiError) as caught:
            parse_chat({"model": NAME, "messages": QUESTION, **override}, spec, "r2")
        assert caught.value.status == 400 and caught.value.param == param, name


def test_a_full_queue_answers_429():
    class Tokenizer:
        eos_token_id, pad_token_id = 1, 0

    scheduler = Scheduler(ServeSpec(NAME, max_queue=2), None, Tokenizer(), rollout.RolloutEngine(), Metrics())
    loop = asyncio.new_event_loop()
    job = lambda: Job("r", None, Sampling(4, 0.0, 1.0, 1, None, ()), loop, asyncio.Queue())
    scheduler.submit(job())
    scheduler.submit(job())
    with pytest.raises(ApiError) as caught:
        scheduler.submit(job())
    assert caught.value.status == 429 and scheduler.metrics.values["requests_rejected_total"] == 1
    loop.close()
