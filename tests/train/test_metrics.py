"""MetricsWriter: JSON lines round-trip, TensorBoard scalars, resume truncation and corrupt-file errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from staged_vlm_jax.train.metrics import MetricsWriter, read_metrics, truncate_metrics


def _record(step, reward, stage="rl"):
    return {"global_step": step, "stage": stage, "stage_index": 1, "stage_step": step - 1, "reward/mean": reward}


def _scalars(workdir, tag):
    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    return acc, [(e.step, e.value) for e in acc.Scalars(tag)]


def test_json_round_trip_with_numpy_and_jax_scalars(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write({"global_step": np.int64(1), "stage": "sft", "loss": np.float32(0.25), "lr": jnp.asarray(1e-3)})
        writer.write({"global_step": 2, "stage": "sft", "loss": 0.125, "done": True})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert rows == [
        {"global_step": 1, "stage": "sft", "loss": 0.25, "lr": pytest.approx(1e-3)},
        {"global_step": 2, "stage": "sft", "loss": 0.125, "done": True},
    ]
    assert type(rows[0]["global_step"]) is int and type(rows[0]["loss"]) is float
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        assert line == json.dumps(json.loads(line), sort_keys=True)


def test_numeric_values_become_tensorboard_scalars(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step, reward in [(1, 0.5), (2, 0.75), (3, 1.0)]:
            writer.write(_record(step, np.float32(reward)))
    acc, reward = _scalars(tmp_path, "reward/mean")
    assert reward == [(1, 0.5), (2, 0.75), (3, 1.0)]
    tags = set(acc.Tags()["scalars"])
    assert tags == {"reward/mean", "stage_index", "stage_step"}  # no strings, no global_step (it is the TB step)


def test_write_requires_int_global_step(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="global_step"):
            writer.write({"stage": "rl", "loss": 1.0})
        with pytest.raises(ValueError, match="global_step"):
            writer.write({"global_step": 1.5, "loss": 1.0})


def test_truncate_keeps_steps_up_to_checkpoint_and_drops_partial_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.write(_record(step, 0.1 * step))
    with open(path, "a") as f:
        f.write('{"global_step": 6, "reward/me')  # killed mid-write

    with MetricsWriter(tmp_path) as writer:  # the resumed run, from the checkpoint at step 3
        assert writer.truncate(3) == 3
        assert [r["global_step"] for r in read_metrics(path)] == [1, 2, 3]
        assert path.read_text().endswith("}\n")
        for step in (4, 5):
            writer.write(_record(step, 10.0 * step))

    assert [(r["global_step"], r["reward/mean"]) for r in read_metrics(path)] == [
        (1, 0.1),
        (2, 0.2),
        (3, pytest.approx(0.3)),
        (4, 40.0),
        (5, 50.0),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "tensorboard"]  # no temp file left
    # TensorBoard drops the old run's steps 4 and 5 and shows only the re-run's values.
    _, reward = _scalars(tmp_path, "reward/mean")
    assert [(s, pytest.approx(v)) for s, v in reward] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 40.0), (5, 50.0)]


def test_truncate_missing_file_is_a_no_op(tmp_path):
    assert truncate_metrics(tmp_path / "metrics.jsonl", 10) == 0
    assert not (tmp_path / "metrics.jsonl").exists()


def test_read_ignores_partial_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"global_step": 1}\n{"global_step": 2}\n{"global_st')
    assert read_metrics(path) == [{"global_step": 1}, {"global_step": 2}]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"global_step": 1}\n{"global_st\n{"global_step": 3}\n')
    with pytest.raises(ValueError, match=f"{path}:2"):
        read_metrics(path)
    with pytest.raises(ValueError, match=f"{path}:2"):
        truncate_metrics(path, 3)


def test_a_tensorboard_failure_warns_once_and_metrics_go_on(tmp_path, monkeypatch, caplog):
    """An event filesystem TensorBoard cannot write (gcsfs cannot append) must not stop training or lose rows."""
    calls = []

    def fail(self, event):
        calls.append(event)
        raise OSError("append not supported")

    monkeypatch.setattr("tensorboard.summary.writer.event_file_writer.EventFileWriter.add_event", fail)
    with MetricsWriter(tmp_path) as writer, caplog.at_level("WARNING"):
        for step in (1, 2, 3):
            writer.write({"global_step": step, "loss": 0.5})
        assert writer.truncate(2) == 2
        writer.write({"global_step": 3, "loss": 0.25})
    assert [(row["global_step"], row["loss"]) for row in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 0.5), (2, 0.5), (3, 0.25)
    ]  # fmt: skip
    assert len(calls) == 1
    assert [r.message for r in caplog.records if "TensorBoard" in r.message] == [
        f"TensorBoard events for {tmp_path} stop here (metrics.jsonl goes on): append not supported"
    ]


def test_results_md_is_written_for_a_run_without_held_out_sets(tmp_path):
    """The CLI's last line points at results.md; with ``eval.sources={}`` it must still exist (the stage table)."""
    from staged_vlm_jax.train import config as config_lib
    from staged_vlm_jax.train import recipes
    from staged_vlm_jax.train.evaluation import HeldOutEvaluation

    config = recipes.demo()
    config.eval.sources = {}
    table = [{"stage": "perception", "kind": "grpo", "steps": 4, "trainable": [".*"]}]
    evaluation = HeldOutEvaluation(config_lib.resolve(config, tmp_path), tmp_path, table)
    assert evaluation.run(None, "perception", 0, 4, engine=None, score=None, decode=None, prompts=None,
                          eos_token_ids=(), pad_token_id=0) == {}  # fmt: skip
    evaluation.write()
    assert "| 1 | perception | grpo | 4 | `.*` |" in (tmp_path / "results.md").read_text()
