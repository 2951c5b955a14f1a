"""`staged-vlm compare`: runs side by side as the paper's Table 1, with deltas against a baseline, and plots.

Each directory given is an evaluation workdir (`staged-vlm eval`'s ``scores.json``) or a training run whose
evaluation was written into ``<run>/eval``; its Table-1 row is the one `suite.table_one_row` stored. The report
(``<out>/compare.md``) has the rows as they are, then each row minus the baseline's (the first directory unless
named), which is how "staged vs merged" reads. ``benchmarks.png`` draws each benchmark's headline score per run;
``response_length.png`` the mean response length over training steps of every run that has metrics.jsonl, its
stage boundaries dashed in the run's colour (the paper's shorter responses after staged training).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from etils import epath
from matplotlib.figure import Figure

from staged_vlm_jax.eval.suite import RESPONSE_TOKENS, TABLE_ONE, table_one
from staged_vlm_jax.paths import PathLike, as_path
from staged_vlm_jax.train.metrics import METRICS_FILE, read_metrics
from staged_vlm_jax.train.plots import stage_spans

SCORES_FILE = "scores.json"


def eval_dir(directory: epath.Path) -> epath.Path:
    """Where a directory's scores are: itself (an evaluation workdir) or its ``eval/`` (a training run)."""
    for candidate in (directory, directory / "eval"):
        if (candidate / SCORES_FILE).exists():
            return candidate
    raise FileNotFoundError(f"{directory}: no {SCORES_FILE} (run `staged-vlm eval --workdir {directory}` first)")


def run_dir(directory: epath.Path) -> epath.Path | None:
    """The training run a directory belongs to (its own or its parent's metrics.jsonl), if any."""
    for candidate in (directory, directory.parent):
        if (candidate / METRICS_FILE).exists():
            return candidate
    return None


def compare(directories: Sequence[PathLike], out: PathLike, baseline: str | None = None) -> epath.Path:
    """Writes compare.md, benchmarks.png and (for training runs) response_length.png into ``out``; returns the
    report's path. Rows are labelled by directory name; ``baseline`` names the row the deltas subtract."""
    paths = [as_path(directory) for directory in directories]
    rows = {path.name: json.loads((eval_dir(path) / SCORES_FILE).read_text())[TABLE_ONE] for path in paths}
    if len(rows) < len(paths):
        raise ValueError(f"directories must have distinct names (rows are labelled by them): {[p.name for p in paths]}")
    baseline = baseline or paths[0].name
    if baseline not in rows:
        raise ValueError(f"--baseline {baseline!r} is not one of the compared runs {list(rows)}")
    deltas = {label: {key: value - rows[baseline][key] for key, value in row.items() if key in rows[baseline]}
              for label, row in rows.items() if label != baseline}  # fmt: skip
    out = as_path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ["# Comparison", "", *table_one(rows), "", f"## Difference to {baseline}", "", *table_one(deltas)]
    (out / "compare.md").write_text("\n".join(report) + "\n")
    _bars(rows, out / "benchmarks.png")
    runs = {path.name: run for path in paths if (run := run_dir(path)) is not None}
    if runs:
        _lengths(runs, out / "response_length.png")
    return out / "compare.md"


def _save(fig: Figure, path: epath.Path) -> None:
    fig.tight_layout()
    with path.open("wb") as file:
        fig.savefig(file, format="png", dpi=100)


def _bars(rows: dict[str, dict[str, float]], path: epath.Path) -> None:
    columns = [key for key in dict.fromkeys(k for row in rows.values() for k in row) if key != RESPONSE_TOKENS]
    fig = Figure(figsize=(max(8.0, 1.2 * len(columns)), 4.5))
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for index, (label, row) in enumerate(rows.items()):
        ax.bar([i + index * width for i in range(len(columns))], [row.get(key, 0.0) for key in columns], width,
               label=label)  # fmt: skip
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))], columns, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _lengths(runs: dict[str, epath.Path], path: epath.Path) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for label, run in runs.items():
        metrics = [row for row in read_metrics(run / METRICS_FILE) if "response_length/mean" in row]
        if not metrics:
            continue
        (line,) = ax.plot([row["global_step"] for row in metrics], [row["response_length/mean"] for row in metrics],
                          label=label)  # fmt: skip
        for _, start, _ in stage_spans(metrics)[1:]:
            ax.axvline(start, color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_xlabel("global step")
    ax.set_ylabel("mean response length (tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)
