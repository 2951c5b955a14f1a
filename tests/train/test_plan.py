"""`staged-vlm plan`: the stage table from the data's row counts, and ahead-of-time sizing of every program on a
target topology from the model's config.json alone (the paper recipe's shapes on a reduced-depth 7B)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from staged_vlm_jax import cli
from staged_vlm_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
from staged_vlm_jax.train.stages import StagedRun

REPO = Path(__file__).parents[2]
DEMO = str(REPO / "configs" / "demo.py")
PAPER = str(REPO / "configs" / "qwen2_5_vl_7b_staged.py")
needs_8 = pytest.mark.skipif(len(__import__("jax").devices()) != 8, reason="needs the 8-device CPU mesh")


def _plan(capsys, *argv: str) -> tuple[int, list[str]]:
    status = cli.main(["plan", *argv])
    captured = capsys.readouterr()
    return status, (captured.out.strip() or captured.err.strip()).splitlines()  # the report, or the error


def test_the_stage_table_counts_the_data_as_training_does(tmp_path, capsys):
    status, lines = _plan(capsys, "--config", DEMO)
    assert status == 0
    run = StagedRun(cli.load_config(DEMO, []), tmp_path)  # the run screens its data: its plan is the truth
    expected = [f"stage {p.name}: {p.steps} steps" for p in run.plan]
    assert [line.split(" (")[0] for line in lines] == expected
    match = re.fullmatch(r"stage perception: (\d+) steps \(1 epochs x (\d+) batches of 8; (\d+) rows per epoch, the "
                         r"last partial batch dropped\)", lines[1])  # fmt: skip
    assert match and int(match[1]) == int(match[2]) == int(match[3]) // 8, lines


def test_data_files_that_are_not_there_are_named(capsys):
    status, lines = _plan(capsys, "--config", PAPER)
    assert status == 0
    assert lines[0] == "stage perception: ? steps (/data/staged_vlm/perception.jsonl: not found), batch 512"


def _reduced_7b(directory: Path) -> Path:
    """Qwen2.5-VL-7B's config.json (configs/models/qwen2_5_vl_7b) at full width, 2 decoder layers and 2 vision
    blocks (one full-attention): every shape of the recipe but the depth, which scanned layers make irrelevant to
    compiling."""
    config = json.loads((REPO / "configs" / "models" / "qwen2_5_vl_7b" / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 2
    config["vision_config"].update(depth=2, fullatt_block_indexes=[1])
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_the_shipped_7b_config_is_qwen2_5_vl_7b():
    config = json.loads((REPO / "configs" / "models" / "qwen2_5_vl_7b" / "config.json").read_text())
    assert Qwen2_5_VLConfig.from_hf(config) == Qwen2_5_VLConfig()  # the 7B-Instruct architecture


@needs_8
@pytest.mark.slow
def test_the_paper_recipe_is_sized_on_h100x8_and_the_verdict_follows_the_memory(tmp_path, capsys):
    model = _reduced_7b(tmp_path / "qwen2_5_vl_7b_2_layers")
    # Shorter sequences than the recipe's 2048 + 2048 keep this CPU test's compile small; the shapes still are 7B's.
    overrides = [f"--config.model.path={model}", "--config.rollout.max_new_tokens=256", "--config.learner.remat=full",
                 "--config.data.max_prompt_length=512", "--config.data.min_pixels=50176",
                 "--config.data.max_pixels=200704"]  # fmt: skip
    status, lines = _plan(capsys, "--config", PAPER, "--topology", "h100-80gb:8", *overrides)
    assert lines[3].startswith("topology h100-80gb:8: 8 devices of 79.6 GiB, mesh {'data': 1, 'fsdp': 8, 'tensor': 1}")
    programs = [line for line in lines if line.startswith(("perception ", "text_reasoning ", "visual_reasoning "))]
    assert [line.split(":")[0] for line in programs] == [f"{stage} {program}" for stage in (
        "perception", "text_reasoning", "visual_reasoning") for program in ("rollout", "train")]  # fmt: skip
    assert "512 prompts x n 5, 1 program(s) per step, prompt 512 + 256 new tokens" in programs[0]
    assert "2560 rows of 512 + 256 tokens, 4 mini-batches of micro-batches of 40, prompts shared by 5" in programs[1]
    totals = [float(re.search(r"= ([\d.]+) GiB of 79.6 GiB", line).group(1)) for line in programs]
    # FSDP over 8 devices: the bf16 weights, Kahan buffers and moments of the 2-layer model are well under a GiB
    # per device, and each program needs some memory.
    assert all(0 < total < 79.6 for total in totals), totals
    assert status == 0 and lines[-1].startswith("plan: fits (largest: "), lines[-1]
    status, lines = _plan(capsys, "--config", PAPER, "--topology", "h100-80gb:8", "--headroom", "0.001", *overrides)
    assert status == 1 and lines[-1].startswith("plan: does not fit (6 program(s) over 0% of device memory"), lines


def test_a_topology_needs_a_known_kind_and_a_count(capsys):
    status, lines = _plan(capsys, "--config", DEMO, "--topology", "a100:8")
    assert status == 2
    assert lines[-1] == ("staged-vlm plan: error: --topology 'a100:8': expected KIND:DEVICES with KIND one of cpu, "
                         "h100-80gb, h200-141gb, tpu-v5p, tpu-v5e, e.g. h100-80gb:8")  # fmt: skip


@needs_8
def test_a_process_that_already_runs_jax_cannot_become_another_topology(capsys):
    status, lines = _plan(capsys, "--config", DEMO, "--topology", "tpu-v5e:16")
    assert status == 2
    assert lines[-1] == ("staged-vlm plan: error: this process already runs JAX on 8 cpu device(s); plan a "
                         "16-device topology in a fresh process")  # fmt: skip


@pytest.mark.slow
def test_a_pod_topology_is_planned_on_as_many_host_devices(tmp_path):
    """tpu-v5e:16 in a fresh process: the CLI makes JAX start with 16 host devices before anything else runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "", "XLA_FLAGS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "staged_vlm_jax", "plan", "--config", DEMO, "--topology", "tpu-v5e:16",
         "--config.stages.perception.batch_size=16", "--config.stages.text_reasoning.batch_size=16",
         "--config.stages.visual_reasoning.batch_size=16", "--config.stages.warm_start.batch_size=16"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert "topology tpu-v5e:16: 16 devices of 16.0 GiB, mesh {'data': 16, 'fsdp': 1, 'tensor': 1}" in lines[4]
    assert lines[-1].startswith("plan: fits")
