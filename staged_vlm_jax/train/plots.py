"""PNG plots of a run's metrics.jsonl (reward, accuracy, response length, loss), with stage boundaries marked.

Meant for a quick look at a finished or running staged run without starting TensorBoard. Uses
`matplotlib.figure.Figure` directly (Agg canvas, no pyplot global state), so it is safe to call from the trainer.
"""

from __future__ import annotations

import fnmatch

from etils import epath
from matplotlib.figure import Figure

from staged_vlm_jax.paths import PathLike, as_path
from staged_vlm_jax.train.metrics import METRICS_FILE, read_metrics

# Output file name -> metric keys drawn on it; a key absent from every row is left out, a plot with none is skipped.
PLOTS: dict[str, tuple[str, ...]] = {
    "reward.png": ("reward/mean", "reward/accuracy", "reward/format"),
    "accuracy.png": ("reward/accuracy",),
    "response_length.png": ("response_length/mean",),
    "loss.png": ("loss",),
    "validation.png": ("val/*/accuracy",),  # every held-out set's accuracy (eval.every_steps, stage ends)
}


def stage_spans(rows: list[dict]) -> list[tuple[str, int, int]]:
    """Splits rows into runs of the same `stage`: (name, first global_step, last global_step), in row order."""
    spans: list[tuple[str, int, int]] = []
    for row in rows:
        stage, step = row["stage"], row["global_step"]
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], step)
        else:
            spans.append((stage, step, step))
    return spans


def plot_run(workdir: PathLike) -> list[epath.Path]:
    """Writes `workdir/plots/*.png` from `workdir/metrics.jsonl`; returns the paths written."""
    path = as_path(workdir) / METRICS_FILE
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}")
    rows = read_metrics(path)
    if not rows:
        raise ValueError(f"{path} has no rows to plot")
    spans = stage_spans(rows)
    out_dir = as_path(workdir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys in PLOTS.items():
        names = [key for pattern in keys for key in sorted({k for r in rows for k in r if fnmatch.fnmatch(k, pattern)})]
        curves = {key: [(r["global_step"], r[key]) for r in rows if key in r] for key in names}
        curves = {key: points for key, points in curves.items() if points}
        if not curves:
            continue
        fig = Figure(figsize=(8, 4.5))
        ax = fig.subplots()
        for key, points in curves.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=key)
        # Same x range on every plot, so stages line up even where a stage has no points (e.g. SFT on reward).
        first, last = rows[0]["global_step"], rows[-1]["global_step"]
        if first < last:
            ax.set_xlim(first, last)
        for i, (stage, start, _) in enumerate(spans):
            if i > 0:
                ax.axvline(start, color="gray", linestyle="--", linewidth=1)
            # x in data coordinates, y in axes coordinates: the label sits near the top whatever the y range.
            ax.text(start, 0.98, f" {stage}", transform=ax.get_xaxis_transform(), va="top", ha="left", fontsize=9)
        ax.set_xlabel("global step")
        ax.set_title(name.removesuffix(".png"))
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with (out_dir / name).open("wb") as file:
            fig.savefig(file, format="png", dpi=100)
        written.append(out_dir / name)
    return written
