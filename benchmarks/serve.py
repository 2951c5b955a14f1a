"""Load test of `staged-vlm serve` on localhost: requests/s, tokens/s and p50/p99 latency, side by side.

Starts the server in a subprocess (``--model`` an HF directory; by default rollout.py's small random Qwen2.5-VL
with the tests' tiny tokenizer, written to a temporary directory) and sends ``--requests`` chat completions, each a
different question (with one random 224x224 PNG as a data URL under ``--images``), greedy, up to ``--max-tokens``
new tokens (tokens/s counts the tokens really generated). Three ways, each after a warm-up that compiles:

- ``engine``: the same prompts in batches of ``--clients`` through `RolloutEngine.generate` in this process, no
  HTTP: the ceiling the server's batching can approach;
- ``server xN``: ``--clients`` concurrent OpenAI clients;
- ``server x1``: one client, one request at a time (no batching possible).

Batches of every bucket size up to ``--clients`` are compiled first (a server compiles a bucket on first use), and
prints each one's requests/s, completion tokens/s, p50/p99 latency and the ratios to ``server x1``.

    python benchmarks/serve.py [--clients 16] [--requests 64] [--max-tokens 32] [--images] [--model DIR]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import datetime
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jax
import numpy as np
import openai
from PIL import Image
from rollout import bench_config

from staged_vlm_jax import models
from staged_vlm_jax.data.images import image_inputs
from staged_vlm_jax.data.pipeline import PromptBuilder, PromptCollator
from staged_vlm_jax.data.schema import ImageRef
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer
from staged_vlm_jax.models.hf_io import read_config
from staged_vlm_jax.rl.rollout import RolloutEngine

PIXELS = (224 * 224, 224 * 224)


def small_model(directory: Path) -> Path:
    """rollout.py's small model, with the tiny tokenizer's vocabulary."""
    cfg = bench_config(512)
    models.save_hf(models.create(cfg, seed=0), cfg, directory)
    build_tiny_tokenizer(directory)
    return directory


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def requests(count: int, images: bool) -> list[tuple[list[dict], list[bytes]]]:
    """(OpenAI messages, image bytes) per request."""
    out = []
    for i in range(count):
        text = {"type": "text", "text": f"Question {i}: what is {i} plus {2 * i + 1}?"}
        if images:
            data = png(i)
            url = "data:image/png;base64," + base64.b64encode(data).decode()
            out.append(
                ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, text]}], [data])
            )
        else:
            out.append(([{"role": "user", "content": [text]}], []))
    return out


def summary(latencies: list[float], tokens: int, seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"req/s": len(latencies) / seconds, "tok/s": tokens / seconds, "p50 s": statistics.median(ordered),
            "p99 s": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]}  # fmt: skip


def load(client: openai.OpenAI, name: str, batch: list, clients: int, max_tokens: int) -> dict[str, float]:
    def ask(item):
        start = time.perf_counter()
        reply = client.chat.completions.create(model=name, messages=item[0], temperature=0, max_tokens=max_tokens)
        return time.perf_counter() - start, reply.usage.completion_tokens

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(ask, batch))
    return summary([r[0] for r in results], sum(r[1] for r in results), time.perf_counter() - start)


def engine_rows(model_dir: Path, batch: list, clients: int, max_tokens: int) -> dict[str, float]:
    """The prompts through the engine in batches of ``clients``, as the server would batch them at best."""
    model, _ = models.load_hf(model_dir, dtype="float32")
    tokenizer = load_tokenizer(model_dir)
    family, _ = read_config(model_dir)
    builder = PromptBuilder(tokenizer, image_inputs(family.name, "easyr1", *PIXELS, "pil"), "raise")
    engine = RolloutEngine()
    collate = PromptCollator(tokenizer.pad_token_id, engine.config.prompt_buckets)
    prompts = []
    for i, (messages, images) in enumerate(batch):
        converted = [{"role": "user", "content": [{"type": "image"} if p["type"] == "image_url" else p
                                                  for p in messages[0]["content"]]}]  # fmt: skip
        prompts.append(builder.chat(str(i), converted, [ImageRef(d, "bench", "image", "png") for d in images]))

    def run(group):
        prompts_batch = collate(group)
        out = engine.generate(model, prompts_batch.input_ids, prompts_batch.attention_mask,
                              pixel_values=prompts_batch.pixel_values, image_grid_thw=prompts_batch.image_grid_thw,
                              max_new_tokens=max_tokens, greedy=True,
                              eos_token_ids=(tokenizer.eos_token_id, tokenizer.pad_token_id),
                              pad_token_id=tokenizer.pad_token_id, rng=jax.random.key(0))  # fmt: skip
        return int(np.asarray(out.lengths).sum())

    groups = [prompts[i : i + clients] for i in range(0, len(prompts), clients)]
    run(groups[0])  # compiles
    latencies, tokens, start = [], 0, time.perf_counter()
    for group in groups:
        began = time.perf_counter()
        tokens += run(group)
        latencies += [time.perf_counter() - began] * len(group)
    return summary(latencies, tokens, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF directory (default: a small random model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--images", action="store_true", help="one 224x224 image per request")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else small_model(Path(scratch.name) / "small-vlm")
    name = model_dir.name
    port = args.port
    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    command = [sys.executable, "-m", "staged_vlm_jax", "serve", "--model", str(model_dir), "--port", str(port),
               "--dtype", "float32", "--max-batch", str(args.clients), "--min-pixels", str(PIXELS[0]),
               "--max-pixels", str(PIXELS[1])]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
        batch = requests(args.requests, args.images)
        warmup = requests(args.clients, args.images)
        rows = {}
        for size in sorted({min(2**i, args.clients) for i in range(args.clients.bit_length() + 1)}) * 2:
            load(client, name, warmup[:size], size, args.max_tokens)  # compiles the batch buckets the runs meet
        rows[f"server x{args.clients}"] = load(client, name, batch, args.clients, args.max_tokens)
        rows["server x1"] = load(client, name, batch[: max(4, args.requests // args.clients)], 1, args.max_tokens)
    finally:
        server.terminate()
        server.wait(timeout=60)
    rows["engine"] = engine_rows(model_dir, batch, args.clients, args.max_tokens)

    base = rows["server x1"]
    print(f"# serve load test, {datetime.date.today()}, {platform.node()}, {jax.devices()[0].device_kind}, "
          f"{args.requests} requests x {args.max_tokens} tokens, images={args.images}")  # fmt: skip
    print("| way | req/s | tok/s | p50 s | p99 s | tok/s vs server x1 |")
    print("|---|---|---|---|---|---|")
    for way, row in rows.items():
        print(f"| {way} | {row['req/s']:.2f} | {row['tok/s']:.1f} | {row['p50 s']:.3f} | {row['p99 s']:.3f} | "
              f"{row['tok/s'] / base['tok/s']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
