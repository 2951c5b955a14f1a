"""Multi-host training: two processes joined by ``jax.distributed`` on localhost (4 fake CPU devices each) run the
tiny staged config, are SIGKILLed after a checkpoint, resume, and end as one process with 8 devices does; two
processes branched from the one-process run's stage end end as it does too.

Every host runs the same host logic on the same global batch (prompts, sampled tokens, rewards, advantages, metrics,
evaluation) and fills only its own devices' shards, so everything decided on the host is equal to the one-process
run. Device-side floats agree up to the summation order of cross-process reductions. On the untrained model every
reward is equal, so the GRPO advantages are 0; the KL term is turned off here (``learner.kl_coef=0``) so that
the GRPO updates are exactly zero too. Otherwise its gradient, rounding noise at a stage's start, becomes
lr-sized steps under Adam's normalisation, different in each layout, and sooner or later one sampled token
differs and with it a host-decided metric. Weights and losses are compared to tolerances for the warm start's
summation-order differences.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from staged_vlm_jax import cli
from staged_vlm_jax.train.metrics import read_metrics

CONFIG = str(Path(__file__).with_name("tiny_run.py"))
REPO = Path(__file__).parents[2]
# 8 prompts per step: the batch splits over 8 devices (the tiny run's 4 would not).
BATCH = [f"--config.stages.{stage}.batch_size=8"
         for stage in ("warm_start", "perception", "text_reasoning", "visual_reasoning")] + [
    "--config.learner.kl_coef=0.0"]  # fmt: skip
HOST_DECIDED = ("reward/", "response_length/", "stage", "global_step", "data/", "lr", "skipped_updates")


def _env(devices: int) -> dict[str, str]:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(REPO)}  # fmt: skip


def _command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "staged_vlm_jax", "train", "--config", CONFIG, "--workdir", str(workdir), *BATCH,
            *extra]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir: Path, *extra: str, kill_after_checkpoint: int | None = None) -> list[str]:
    """Runs the config as 2 processes × 4 devices; optionally SIGKILLs both once that checkpoint has landed."""
    port = _free_port()
    processes = [
        subprocess.Popen(
            _command(
                workdir,
                *extra,
                "--distributed",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ),
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    if kill_after_checkpoint is not None:
        deadline = time.monotonic() + 900
        while not (workdir / "checkpoints" / str(kill_after_checkpoint)).exists():
            assert all(p.poll() is None for p in processes), "a process ended before the kill"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for process in processes:
            process.send_signal(signal.SIGKILL)
    outputs = [process.communicate(timeout=900) for process in processes]
    if kill_after_checkpoint is None:
        for process, (_, stderr) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, stderr[-3000:]
    return [stderr for _, stderr in outputs]


@pytest.mark.slow
def test_two_processes_with_a_kill_match_one_process(tmp_path: Path) -> None:
    single = tmp_path / "one_process"
    done = subprocess.run(_command(single), env=_env(8), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    workdir = tmp_path / "two_processes"
    _two_processes(workdir, kill_after_checkpoint=4)
    assert 4 <= len(read_metrics(workdir / "metrics.jsonl")) < 10
    stderr = _two_processes(workdir)
    assert "stage 2/4 perception" in stderr[0] and "stage 1/4 warm_start" not in stderr[0]  # resumed mid-stage

    _assert_same_run(workdir, single, tmp_path)

    # Branched in two processes from the one-process run after its text-reasoning stage (its checkpoint restored
    # into the other layout), the run trains only the last stage and ends as that run does.
    branched = tmp_path / "branched"
    stderr = _two_processes(branched, "--branch-from", str(single), "--branch-after", "text_reasoning")
    assert f"branched from {single}" in stderr[0] and "branched from" not in stderr[1]  # process 0 copies
    assert "stage 4/4 visual_reasoning" in stderr[0] and "stage 3/4" not in stderr[0]
    _assert_same_run(branched, single, tmp_path)


def _assert_same_run(workdir: Path, single: Path, tmp_path: Path) -> None:
    """Host-decided metrics and evaluations equal to the one-process run's, device floats and weights within the
    tolerances of the module docstring."""
    rows, expected_rows = read_metrics(workdir / "metrics.jsonl"), read_metrics(single / "metrics.jsonl")
    assert [row["global_step"] for row in rows] == list(range(1, 11))
    for row, expected in zip(rows, expected_rows, strict=True):
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            if key.startswith(HOST_DECIDED) or isinstance(value, str):
                assert row[key] == value, (row["global_step"], key)
            elif key in ("nll", "entropy") or (key == "loss" and row["stage"] == "warm_start"):  # not noise-sized
                np.testing.assert_allclose(row[key], value, rtol=1e-2, err_msg=f"{row['global_step']} {key}")
    # Evaluations: greedy generations of the same prompts, scored on the host.
    assert (workdir / "eval.jsonl").read_text() == (single / "eval.jsonl").read_text()
    weights = {}
    for name, run in ((workdir.name, workdir), ("one", single)):
        out = tmp_path / f"{name}_hf"
        if not out.exists():
            assert cli.main(["export", "--checkpoint", str(run / "checkpoints"), "--out", str(out)]) == 0
        weights[name] = load_file(out / "model.safetensors")
    assert weights[workdir.name].keys() == weights["one"].keys()
    for key, value in weights["one"].items():  # lr-sized noise steps (see the module docstring) at most
        np.testing.assert_allclose(weights[workdir.name][key], value, atol=2e-2, rtol=0, err_msg=key)
