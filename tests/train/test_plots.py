"""plot_run: which PNGs get written from a staged run's metrics.jsonl, and stage-boundary detection."""

import json

import pytest

from staged_vlm_jax.train.plots import plot_run, stage_spans

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_rows(workdir, rows):
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _staged_rows():
    """An SFT stage (loss only) followed by two RL stages (rewards, lengths, loss; no reward/format)."""
    rows = [{"global_step": s, "stage": "sft", "loss": 2.0 / s} for s in range(1, 4)]
    for stage, steps in [("rl_easy", range(4, 7)), ("rl_hard", range(7, 9))]:
        for s in steps:
            rows.append(
                {
                    "global_step": s,
                    "stage": stage,
                    "loss": 0.1,
                    "reward/mean": 0.1 * s,
                    "reward/accuracy": 0.05 * s,
                    "response_length/mean": 100.0 + s,
                }
            )
    return rows


def test_stage_spans():
    assert stage_spans(_staged_rows()) == [("sft", 1, 3), ("rl_easy", 4, 6), ("rl_hard", 7, 8)]
    rows = [{"global_step": 1, "stage": "a"}, {"global_step": 2, "stage": "b"}, {"global_step": 3, "stage": "a"}]
    assert stage_spans(rows) == [("a", 1, 1), ("b", 2, 2), ("a", 3, 3)]
    assert stage_spans([]) == []


def test_plot_run_writes_pngs_for_present_keys(tmp_path):
    _write_rows(tmp_path, _staged_rows())
    paths = plot_run(tmp_path)
    names = ["reward.png", "accuracy.png", "response_length.png", "loss.png"]
    assert paths == [tmp_path / "plots" / name for name in names]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plot_run_skips_plots_whose_keys_never_appear(tmp_path):
    _write_rows(tmp_path, [{"global_step": s, "stage": "sft", "loss": 1.0 / s} for s in range(1, 4)])
    assert plot_run(tmp_path) == [tmp_path / "plots" / "loss.png"]
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["loss.png"]


def test_plot_run_missing_or_empty_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "metrics.jsonl")):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no rows"):
        plot_run(tmp_path)
