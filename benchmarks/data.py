"""Throughput of the Grain prompt pipeline: examples/s with 0 worker processes vs N, on 512x512 images.

Writes ``--rows`` random 512x512 PNG images and an EasyR1-schema jsonl (one ``<image>`` question per row), builds
the offline tiny Qwen tokenizer, and drains ``--batches`` batches of ``--batch-size`` prompts from
`pipeline.prompt_pipeline` (image decode + Qwen preprocessing + chat template + image-pad expansion + batching)
three ways, side by side: in the main process, with ``--threads`` threads, and with ``--workers`` worker processes
(Grain's ``mp_prefetch``; its start-up is reported separately). The HF-processor comparison of the preprocessing
itself is ``benchmarks/data_preprocess.py``.

Run from the repository root (with the package installed, ``pip install -e .``, or with ``PYTHONPATH=.``)::

    python benchmarks/data.py [--rows 64] [--batch-size 8] [--batches 6] [--workers 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags
from PIL import Image

from staged_vlm_jax.data import pipeline, tokenizer


def write_rows(out: Path, rows: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True)
    with open(out / "rows.jsonl", "w") as f:
        for i in range(rows):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(out / "images" / f"{i}.png")
            f.write(json.dumps({"problem": f"<image>How many shapes are there in picture {i}?", "answer": "3",
                                "images": [f"images/{i}.png"]}) + "\n")  # fmt: skip
    return out / "rows.jsonl"


def drain(config: pipeline.PipelineConfig, tok, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, examples/s over the following batches)."""
    start = time.perf_counter()
    stream = pipeline.prompt_pipeline(config, tok)
    iterator = iter(stream)
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * config.batch_size / (time.perf_counter() - start)
    stream.close()
    return first, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    flags.FLAGS(["benchmark"])  # Grain's worker processes read absl flags
    if (args.batches + 1) * args.batch_size > args.rows:
        parser.error("--rows must cover (--batches + 1) * --batch-size examples (one epoch)")
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_rows(Path(tmp) / "data", args.rows, args.size)
        tok = tokenizer.build_tiny_tokenizer(Path(tmp) / "tok")
        base = dict(sources=(pipeline.DataSource(str(rows), "visual_reasoning"),), batch_size=args.batch_size,
                    prompt_buckets=(512, 1024, 2048), max_prompt_length=2048, seed=0)  # fmt: skip
        runs = {
            "main process": pipeline.PipelineConfig(**base),
            f"{args.threads} threads": pipeline.PipelineConfig(**base, worker_threads=args.threads),
            f"{args.workers} worker processes": pipeline.PipelineConfig(**base, worker_count=args.workers),
        }
        results = {name: drain(config, tok, args.batches) for name, config in runs.items()}
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()}, os.cpu_count() = {os.cpu_count()}")
    print(
        f"{args.rows} rows of one {args.size}x{args.size} PNG each, batch {args.batch_size}, {args.batches} batches\n"
    )
    print("| pipeline | first batch (s) | examples/s | vs main process |")
    print("|---|---:|---:|---:|")
    baseline = results["main process"][1]
    for name, (first, rate) in results.items():
        print(f"| {name} | {first:.2f} | {rate:.1f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
