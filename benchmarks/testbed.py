"""The CPU testbed over seeds: staged vs merged (vs 3 → 2 → 1) with 95 % confidence intervals.

One testbed run (configs/demo.py) scores 128 held-out prompts per capability once: its accuracies are within about
±8 points of their expectation, and a single seed says little about which arm is ahead. This script runs each arm
for seeds 0..K-1 (the run's ``seed`` and the synthetic data's seed both set to it, so each seed is a new model
init, data set, data order and sampling) through the real `StagedRun`, reads each run's final held-out accuracy
per capability, and prints:

* per arm and capability, the mean over seeds ± the half-width of its 95 % confidence interval (t-distribution,
  K − 1 degrees of freedom), and the same for the mean over the three capabilities;
* the paired difference staged − merged (and staged − reverse) per capability and overall: seed k of both arms
  shares the init and the data, so the per-seed differences cancel what the seeds share, and their CI is tighter
  than the two arms' CIs suggest.

A row "most common answer" (and its difference from staged) scores a model that ignores the question and always
gives the held-out set's most common answer: a tiny model that has learnt only the answer prior of each kind of
prompt lands there, and an arm is only learning the task where it beats that row.

Every arm uses the demo recipe's settings (`recipes.demo`); only the stage layout differs. Every arm starts with
the same SFT warm start, so with the staged arm in the set the others branch from its run of the seed after that
stage (`train.branch`: they resume from its warm-start checkpoint, as from an interrupted run of their own) instead
of training it again: the same result, a third less time. Runs live in ``WORKDIR/<arm>/seed<k>``; a finished run
leaves ``testbed.json`` (its accuracies and wall time) and is not run again, and an interrupted one resumes from its
checkpoints. All runs share one compilation cache (``WORKDIR/jax_cache``), so only the first run of each arm
compiles. The table is also written to ``WORKDIR/testbed.md``.

    python benchmarks/testbed.py --seeds 5 [--arms staged,merged,reverse] [--workdir runs/testbed] [--jobs 2]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import importlib.util
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARMS = {
    "staged": "configs/demo.py",
    "merged": "configs/demo_merged.py",
    "reverse": "configs/demo_reverse.py",
}
CAPABILITIES = ("perception", "text_reasoning", "visual_reasoning")
SOURCE_ARM, SHARED_STAGE = "staged", "warm_start"  # the other arms of a seed branch from this arm's run after it
RESULT_FILE = "testbed.json"
# Two-sided 95 % quantiles of Student's t (0.975 quantile) by degrees of freedom. Past 30 the 30 value is used:
# the quantile falls with the degrees of freedom, so that overstates the interval a little, never understates it.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of its two-sided 95 % confidence interval) from the t-distribution with n − 1 degrees of
    freedom; the half-width is NaN for one value, which says nothing about its spread."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    t = T_975[min(len(values) - 1, len(T_975)) - 1]
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def paired_differences(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """``first[k] − second[k]`` for each seed k: the two arms' runs of seed k share the init and the data."""
    if len(first) != len(second):
        raise ValueError(f"paired values need the same seeds, got {len(first)} and {len(second)}")
    return [a - b for a, b in zip(first, second, strict=True)]


def overall(accuracy: dict[str, float]) -> float:
    """A run's mean accuracy over the capabilities (the README's "mean" column)."""
    return statistics.fmean(accuracy[capability] for capability in CAPABILITIES)


def format_ci(values: Sequence[float]) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.1f}" if math.isnan(half) else f"{mean:.1f} ± {half:.1f}"


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """The Markdown report: per arm and capability, accuracy (%) as mean ± 95 % CI over seeds; then the paired
    differences of staged against each other arm. ``results[arm][k]`` is seed k's run: capability -> accuracy %."""
    columns = [*CAPABILITIES, "mean"]
    per_run = {arm: [{**run, "mean": overall(run)} for run in runs] for arm, runs in results.items()}
    seeds = min(len(runs) for runs in per_run.values())
    lines = [f"Held-out accuracy (%, greedy), mean ± 95 % CI over {seeds} seeds (t, {seeds - 1} df):", "",
             "| arm | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]  # fmt: skip
    for arm, runs in per_run.items():
        lines.append(f"| {arm} | " + " | ".join(format_ci([run[c] for run in runs[:seeds]]) for c in columns) + " |")
    others = [arm for arm in per_run if arm != "staged"]
    if "staged" in per_run and others:
        lines += ["", "Paired difference (points), mean ± 95 % CI over seeds:", "",
                  "| difference | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]  # fmt: skip
        for arm in others:
            cells = [
                format_ci(paired_differences([r[c] for r in per_run["staged"][:seeds]], [r[c] for r in runs[:seeds]]))
                for c, runs in ((c, per_run[arm]) for c in columns)
            ]
            lines.append(f"| staged − {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_config(arm: str):
    """The arm's config, as `staged-vlm train --config` reads it (the file's ``get_config()``)."""
    spec = importlib.util.spec_from_file_location(f"testbed_{arm}", REPO / ARMS[arm])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run_arm(arm: str, seed: int, root: str, branch: bool = False) -> dict[str, float]:
    """One run of ``arm`` at ``seed`` to its end (resumed if interrupted; with ``branch``, from the end of the
    source arm's `SHARED_STAGE` of the seed), or its recorded result if it finished before; returns capability ->
    final held-out accuracy in %, and ``wall_s`` (the run's own wall time)."""
    workdir = Path(root) / arm / f"seed{seed}"
    done = workdir / RESULT_FILE
    if done.exists():
        return json.loads(done.read_text())
    from staged_vlm_jax.train.stages import StagedRun

    config = load_config(arm)
    config.seed = seed
    config.data.synthetic.seed = seed
    config.compilation_cache = str(Path(root) / "jax_cache")
    start = time.perf_counter()
    source = (Path(root) / SOURCE_ARM / f"seed{seed}", SHARED_STAGE) if branch else None
    final = StagedRun(config, workdir, branch_from=source).run()[-1]
    result = {c: 100.0 * final[f"heldout_{c}"]["accuracy"] for c in CAPABILITIES}
    result["wall_s"] = time.perf_counter() - start
    done.write_text(json.dumps(result, sort_keys=True) + "\n")
    return result


def most_common_share(path: Path) -> float:
    """% of a held-out set (jsonl) whose answer is the set's most common answer."""
    answers = collections.Counter(json.loads(line)["answer"] for line in path.read_text().splitlines())
    return 100.0 * answers.most_common(1)[0][1] / answers.total()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..K-1 per arm")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--workdir", default="runs/testbed")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, each in its own process (two on 2 "
                        "cores: one run's host work overlaps the other's compute)")  # fmt: skip
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or args.seeds < 1:
        parser.error(f"unknown arms {unknown}" if unknown else "--seeds must be at least 1")
    root = str(Path(args.workdir).resolve())
    # A fresh process per run (spawned: JAX does not survive a fork) keeps runs from sharing JAX state or memory.
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {arm: [None] * args.seeds for arm in arms}

    def record(arm: str, seed: int, future: concurrent.futures.Future) -> None:
        result = results[arm][seed] = future.result()
        accuracies = ", ".join(f"{c} {result[c]:.1f}" for c in CAPABILITIES)
        print(f"{arm} seed {seed}: {accuracies} ({result['wall_s'] / 60:.1f} min)", file=sys.stderr, flush=True)

    # The source arm's runs go first; a seed's other arms are queued once its run is done (they branch from it).
    branch = SOURCE_ARM in arms
    first = [SOURCE_ARM] if branch else arms
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        sources = {(arm, seed): pool.submit(run_arm, arm, seed, root) for seed in range(args.seeds) for arm in first}
        others = {}
        for (arm, seed), future in sources.items():
            record(arm, seed, future)
            for other in (a for a in arms if a not in first):
                others[other, seed] = pool.submit(run_arm, other, seed, root, branch)
        for (arm, seed), future in others.items():
            record(arm, seed, future)
    print(f"{len(arms) * args.seeds} runs in {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)
    # Every arm of a seed holds the same held-out sets (the data seed is the run's).
    held_out = [Path(root) / arms[0] / f"seed{seed}" / "data" / "eval" for seed in range(args.seeds)]
    results["most common answer"] = [{c: most_common_share(d / f"{c}.jsonl") for c in CAPABILITIES} for d in held_out]
    report = table(results)
    (Path(root) / "testbed.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
