"""results.md: a run's stages and its held-out evaluations after each stage, as Markdown tables."""

from __future__ import annotations

from typing import Any

from etils import epath

from staged_vlm_jax.paths import PathLike, as_path

RESULTS_FILE = "results.md"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def accuracy_table(evaluations: list[dict[str, Any]], sets: list[str], key: str = "accuracy") -> list[str]:
    """One row per evaluation (after which stage), one column per held-out set plus their mean, in %."""
    rows = []
    for row in evaluations:
        values = [100.0 * row[name][key] for name in sets]
        cells = [f"{value:.1f}" for value in values] + [f"{sum(values) / len(values):.1f}"]
        rows.append([row["after"], str(row["global_step"]), *cells])
    return markdown_table(["after", "step", *sets, "mean"], rows)


def write_results(
    workdir: PathLike, evaluations: list[dict[str, Any]], sets: list[str], plan: list[dict[str, Any]]
) -> epath.Path:
    """Writes ``workdir/results.md``: the stage plan, held-out accuracy, format rate and response length."""
    lines = ["# Results", "", f"Workdir: `{as_path(workdir)}`", "", "## Stages", ""]
    lines += markdown_table(
        ["#", "stage", "kind", "steps", "trainable"],
        [[str(i + 1), p["stage"], p["kind"], str(p["steps"]), ", ".join(f"`{t}`" for t in p["trainable"])]
         for i, p in enumerate(plan)],
    )  # fmt: skip
    if evaluations and sets:
        lines += ["", "## Held-out accuracy (%, greedy)", "", *accuracy_table(evaluations, sets)]
        lines += ["", "## Format reward (%)", "", *accuracy_table(evaluations, sets, "format")]
        lengths = [[row["after"], *(f"{row[name]['response_length']:.1f}" for name in sets)] for row in evaluations]
        lines += ["", "## Mean response length (tokens)", "", *markdown_table(["after", *sets], lengths)]
    path = as_path(workdir) / RESULTS_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
