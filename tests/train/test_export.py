"""Export of a run's checkpoint on a machine with another device count than the run's: a pod's checkpoint is
exported on one host, so a checkpoint written on 8 devices must export from a 1-device process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.cli import load_config
from staged_vlm_jax.models.sharding import make_mesh
from staged_vlm_jax.rl.learner import Learner
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train.checkpoint import Checkpointer
from staged_vlm_jax.train.export import model_config
from staged_vlm_jax.train.workdir import CONFIG_FILE

REPO = Path(__file__).parents[2]
CONFIG = str(Path(__file__).with_name("tiny_run.py"))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_an_8_device_checkpoint_exports_in_a_1_device_process(tmp_path: Path) -> None:
    config = load_config(CONFIG, [])
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / CONFIG_FILE).write_text(config_lib.canonical(config))
    spec = config_lib.resolve(config, workdir)
    model = models.create(model_config(spec), seed=3)
    expected = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model))}
    learner = Learner(model, spec.stage_learner("perception"), make_mesh({"data": 2, "fsdp": 4}))
    assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(learner.state.params))
    checkpointer = Checkpointer(workdir / "checkpoints", keep=1, stage_end_steps=(), async_save=False)
    checkpointer.save(7, learner, {"global_step": 7})
    checkpointer.close()

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    out = tmp_path / "hf"
    command = [sys.executable, "-m", "staged_vlm_jax", "export", "--checkpoint", str(workdir / "checkpoints"), "--out",
               str(out)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported step 7" in done.stdout
    exported, _ = models.load_hf(out)
    got = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(exported))}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=str(name))
