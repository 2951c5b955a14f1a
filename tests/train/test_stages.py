"""End-to-end staged runs of tests/train/tiny_run.py through the real CLI: kill/resume exactness, per-stage
freezing and KL reference, export, and the one-line errors of bad configs, paths and checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from staged_vlm_jax import cli
from staged_vlm_jax.train.metrics import read_metrics
from staged_vlm_jax.train.stages import StagedRun

CONFIG = str(Path(__file__).with_name("tiny_run.py"))
REPO = Path(__file__).parents[2]
# Wall-clock measurements differ between any two runs; every other metric must match exactly.
WALL_CLOCK = ("time/", "tokens/s", "compile/")  # and process history: traces per process


def _env() -> dict[str, str]:
    # One device, as `staged-vlm train` on a laptop; the shared compilation cache makes the repeated runs cheap.
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(REPO)}  # fmt: skip


# The suite's persistent compilation cache (tests/conftest.py), for in-process and subprocess runs alike.
CACHE = f"--config.compilation_cache={os.path.expanduser('~/.cache/staged_vlm_jax/jax_cache')}"


def _train_command(workdir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "staged_vlm_jax", "train", "--config", CONFIG, "--workdir", str(workdir), CACHE,
            *overrides]  # fmt: skip


def _train(workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_train_command(workdir, *overrides), env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(WALL_CLOCK)} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _train(workdir)
    return workdir


def _weights(workdir: Path, out: Path, step: int | None = None) -> dict[str, np.ndarray]:
    assert cli.main(["export", "--checkpoint", str(workdir / "checkpoints"), "--out", str(out),
                     *([] if step is None else ["--step", str(step)])]) == 0  # fmt: skip
    return load_file(out / "model.safetensors")


@pytest.mark.slow
def test_run_writes_the_workdir(uninterrupted: Path) -> None:
    rows = read_metrics(uninterrupted / "metrics.jsonl")
    assert [row["global_step"] for row in rows] == list(range(1, 11))
    assert [row["stage"] for row in rows] == ["warm_start"] * 2 + ["perception"] * 4 + ["text_reasoning"] * 2 + [
        "visual_reasoning"
    ] * 2
    required = {"stage", "stage_step", "global_step", "reward/mean", "reward/accuracy", "reward/format",
                "response_length/mean", "loss", "kl", "time/rollout_s", "time/train_s"}  # fmt: skip
    assert all(required <= row.keys() for row in rows if row["stage"] != "warm_start")
    assert all("nll" in row for row in rows)
    # Programs traced per stage: at least the first step's; a rise mid-stage would be a recompile.
    for stage in ("warm_start", "perception", "text_reasoning", "visual_reasoning"):
        train = [row["compile/train_traces"] for row in rows if row["stage"] == stage]
        rollout = [row["compile/rollout_traces"] for row in rows if row["stage"] == stage]
        assert train[0] >= 1 and train == sorted(train), (stage, train)
        assert rollout == sorted(rollout) and (stage != "warm_start" or rollout[0] == 0), (stage, rollout)
        # The first GRPO stage traces the sampler; a later one may reuse its programs (same buckets: stage 3's MCQ
        # rows are shaped as stage 1's), which is no recompile.
        assert stage != "perception" or rollout[0] >= 1, rollout
    assert all(row["data/read_errors"] == 0 for row in rows)
    evaluations = [json.loads(line) for line in (uninterrupted / "eval.jsonl").read_text().splitlines()]
    assert [(row["after"], row["global_step"]) for row in evaluations] == [
        ("warm_start", 2), ("perception step 1", 3), ("perception", 6), ("text_reasoning", 8),
        ("visual_reasoning step 1", 9), ("visual_reasoning", 10)]  # fmt: skip
    assert set(evaluations[0]) >= {"heldout_perception", "heldout_text_reasoning", "heldout_visual_reasoning"}
    # The same scores in the step's metrics (validation curves), and only at those steps.
    for row in rows:
        evaluation = next((e for e in evaluations if e["global_step"] == row["global_step"]), None)
        scores = {k: v for k, v in row.items() if k.startswith("val/")}
        assert scores == ({} if evaluation is None else {
            f"val/{name}/{key}": value for name in ("heldout_perception", "heldout_text_reasoning",
                                                    "heldout_visual_reasoning")
            for key, value in evaluation[name].items() if key != "examples"}), row["global_step"]  # fmt: skip
    results = (uninterrupted / "results.md").read_text()
    assert "| visual_reasoning | 10 |" in results
    for name in ("config.json", "tensorboard", "plots/reward.png", "plots/response_length.png", "plots/validation.png"):
        assert (uninterrupted / name).exists(), name
    # Stage ends are kept whatever keep= says: every stage's final weights stay exportable.
    steps = [int(p.name) for p in (uninterrupted / "checkpoints").iterdir() if p.name.isdigit()]
    assert {2, 6, 8, 10} <= set(steps)


def _kill_after_checkpoint(workdir: Path, step: int, *overrides: str) -> int:
    """Starts a run, SIGKILLs it right after checkpoint ``step`` lands, and returns how many metric rows it wrote."""
    process = subprocess.Popen(_train_command(workdir, *overrides), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (workdir / "checkpoints" / str(step)).exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return len(read_metrics(workdir / "metrics.jsonl"))


def _assert_same_run(workdir: Path, expected: Path, tmp_path: Path) -> None:
    """The same metrics (wall clock aside), evaluations and final weights as the run in ``expected``."""
    assert _deterministic(read_metrics(workdir / "metrics.jsonl")) == _deterministic(
        read_metrics(expected / "metrics.jsonl")
    )
    assert (workdir / "eval.jsonl").read_text() == (expected / "eval.jsonl").read_text()
    final = _weights(workdir, tmp_path / f"{workdir.name}_hf")
    reference = _weights(expected, tmp_path / f"{expected.name}_hf")
    assert final.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(final[name], reference[name], err_msg=name)


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_matches_uninterrupted(uninterrupted: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "killed"
    # Global step 4 is the perception stage's periodic checkpoint (stage step 2 of 4): kill right after it lands.
    killed_at = _kill_after_checkpoint(workdir, 4)
    assert 4 <= killed_at < 10, killed_at
    resumed = _train(workdir)
    assert "stage 2/4 perception" in resumed.stderr
    assert "stage 1/4 warm_start" not in resumed.stderr  # finished stages are not rerun
    assert (workdir / "eval.jsonl").read_text().count("\n") == 6  # step 3's validation restored from step 4's meta
    _assert_same_run(workdir, uninterrupted, tmp_path)


@pytest.mark.slow
def test_a_hugging_face_directory_trains_resumes_and_exports(uninterrupted: Path, tmp_path: Path) -> None:
    """The real path: ``model.path`` is an HF directory (written by `save_hf`, tokenizer inside) holding the very
    weights the random-init run starts from. Trained, SIGKILLed, resumed, it ends exactly as the random-init run;
    its export loads in transformers with the same logits as ours."""
    torch = pytest.importorskip("torch")
    import transformers

    from staged_vlm_jax import models
    from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer
    from staged_vlm_jax.train import config as config_lib
    from staged_vlm_jax.train.export import model_config

    spec = config_lib.resolve(cli.load_config(CONFIG, []), tmp_path)
    source = tmp_path / "hf_model"
    cfg = model_config(spec)
    models.save_hf(models.create(cfg, dtype=spec.model.dtype, seed=spec.seed), cfg, source)
    build_tiny_tokenizer(source)
    overrides = (f"--config.model.path={source}", "--config.model.tokenizer=")
    workdir = tmp_path / "from_hf"
    assert 4 <= _kill_after_checkpoint(workdir, 4, *overrides) < 10
    _train(workdir, *overrides)
    _assert_same_run(workdir, uninterrupted, tmp_path)

    exported = tmp_path / "from_hf_hf"  # written by _assert_same_run
    ours, _ = models.load_hf(exported)
    theirs = transformers.AutoModelForImageTextToText.from_pretrained(exported, torch_dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ids = np.asarray([tokenizer("<think> 3 + 4 </think> \\boxed{7}")["input_ids"]], np.int32)
    with torch.no_grad():
        expected = theirs(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids)), expected, atol=1e-4, rtol=0)


# The other families, each with the config lines its prompts need: a 56-px synthetic image is one InternVL tile,
# 258 prompt tokens, longer prompts than the Qwen runs' 320.
OTHER_FAMILIES = {
    "qwen3_vl": "",
    "internvl": "    c.data.max_prompt_length = 640\n    c.data.prompt_buckets = (256, 512, 640)\n",
}


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_another_family_trains_through_every_stage_exports_and_answers_benchmarks(family: str, tmp_path: Path):
    """Each other family on the whole path: a tiny HF directory of the family (written by `save_hf`, with the
    family's tiny tokenizer; InternVL's expands an image to <img> + 256 <IMG_CONTEXT> per tile + </img>) runs the
    tiny staged recipe (SFT, then the three GRPO stages: rollout with images, InternVL's tiled, learner, frozen
    vision tower), answers a benchmark at every stage end, and its export loads in transformers with our logits. A
    config naming another family for the checkpoint is refused before anything loads. (InternVL3.5 differs from
    InternVL3 only in its decoder, which tests/models/test_internvl.py runs through the same model entry points.)"""
    torch = pytest.importorskip("torch")
    import transformers

    from staged_vlm_jax import models
    from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer
    from tests.eval.benchmark_files import write_mmstar

    source = tmp_path / family
    cfg = models.tiny_config(family, vocab_size=512)
    models.save_hf(models.create(cfg, seed=0), cfg, source)
    build_tiny_tokenizer(source, family=family)
    mmstar = write_mmstar(tmp_path / "MMStar.tsv", 3)
    config = tmp_path / f"{family}_run.py"
    config.write_text(f"import runpy\n\ndef get_config():\n    c = runpy.run_path({CONFIG!r})['get_config']()\n"
                      f"    c.eval.benchmarks = {{'mmstar': {mmstar!r}}}\n"
                      f"{OTHER_FAMILIES[family]}    return c\n")  # fmt: skip
    model = (f"--config.model.path={source}", "--config.model.tokenizer=")
    train = lambda workdir, *extra: [*_train_command(workdir)[:4], "--config", str(config), "--workdir", str(workdir),
                                     CACHE, *model, *extra]  # fmt: skip
    refused = subprocess.run(train(tmp_path / "refused"), env=_env(), capture_output=True, text=True, timeout=900)
    assert refused.returncode == 2
    assert "config.model.family: 'qwen2_5_vl', but" in refused.stderr and f"{family!r} checkpoint" in refused.stderr

    workdir = tmp_path / "run"
    done = subprocess.run(train(workdir, f"--config.model.family={family}"), env=_env(), capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(workdir / "metrics.jsonl")
    assert [row["global_step"] for row in rows] == list(range(1, 11))
    assert all(np.isfinite(row["loss"]) for row in rows if "loss" in row)
    ends = [row["stage"] for row in rows if "bench/mmstar/accuracy" in row]
    assert ends == ["warm_start", "perception", "text_reasoning", "visual_reasoning"]

    exported = tmp_path / "exported"
    assert cli.main(["export", "--checkpoint", str(workdir), "--out", str(exported)]) == 0
    ours, exported_cfg = models.load_hf(exported)
    assert exported_cfg == cfg
    theirs = transformers.AutoModelForImageTextToText.from_pretrained(exported, torch_dtype=torch.float32).eval()
    ids = np.asarray([transformers.AutoTokenizer.from_pretrained(exported)("<think> 3 + 4 </think>")["input_ids"]])
    with torch.no_grad():
        expected = theirs(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids.astype(np.int32))), expected, atol=1e-4, rtol=0)


def _raw_item(workdir: Path, step: int, item: str):
    with ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        return m.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()}))[item]


def _flat(tree) -> dict[str, np.ndarray]:
    import jax

    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_frozen_vision_and_kl_reference_per_stage(uninterrupted: Path) -> None:
    # Stage ends: warm_start 2, perception 6, text_reasoning 8 (vision frozen), visual_reasoning 10.
    end = {step: _flat(_raw_item(uninterrupted, step, "model")) for step in (2, 6, 8, 10)}
    vision = [k for k in end[6] if "'visual'" in k]
    language = [k for k in end[6] if "'language_model'" in k]
    assert vision and language
    for key in vision:  # frozen through text_reasoning: bit-identical
        np.testing.assert_array_equal(end[8][key], end[6][key], err_msg=key)
    assert any(not np.array_equal(end[10][k], end[8][k]) for k in vision)  # trainable again in stage 3
    assert any(not np.array_equal(end[8][k], end[6][k]) for k in language)
    # The KL reference of each stage is the previous stage's final weights (trainable part).
    for step, previous in ((6, 2), (8, 6), (10, 8)):
        reference = _flat(_raw_item(uninterrupted, step, "optimizer")["ref_params"])
        assert reference
        for key, value in reference.items():
            np.testing.assert_array_equal(value, end[previous][key], err_msg=f"step {step}: {key}")
    text_reference = _flat(_raw_item(uninterrupted, 8, "optimizer")["ref_params"])
    assert not any("'visual'" in key for key in text_reference)  # frozen: no optimizer state, no copy


def _one_line_error(capsys, argv: list[str]) -> str:
    """The error line of a command that must fail with one (after start-up notes such as the data screen's)."""
    assert cli.main([*argv, CACHE]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.endswith("\n"), stderr
    error = stderr.splitlines()[-1]
    assert error.startswith("staged-vlm "), stderr
    return error


@pytest.mark.slow
def test_a_branch_after_a_shared_stage_ends_as_the_run_that_trained_it(uninterrupted: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "branched"
    # Where and how often checkpoints are kept may differ: it does not change what trains.
    branched = _train(workdir, "--config.checkpoint.keep=3", "--branch-from", str(uninterrupted), "--branch-after",
                      "perception")  # fmt: skip
    assert f"branched from {uninterrupted}: its stage perception ended at step 6" in branched.stderr
    assert "stage 1/4" not in branched.stderr and "stage 2/4" not in branched.stderr  # the shared stages
    assert "stage 3/4 text_reasoning" in branched.stderr
    _assert_same_run(workdir, uninterrupted, tmp_path)
    # The finished branch holds its own checkpoints: a rerun resumes it and copies nothing.
    assert "branched from" not in _train(workdir, "--config.checkpoint.keep=3", "--branch-from", str(uninterrupted),
                                         "--branch-after", "perception").stderr  # fmt: skip


REVERSED = "--config.schedule=('warm_start', 'visual_reasoning', 'text_reasoning', 'perception')"


@pytest.mark.slow
def test_another_stage_order_branches_from_the_shared_warm_start(uninterrupted: Path, tmp_path: Path) -> None:
    """The testbed's ablations: 3 -> 2 -> 1 from the staged run's warm start. The unshared stages may be set
    differently (perception runs 2 steps here, 4 in the source)."""
    workdir = tmp_path / "reversed"
    _train(workdir, REVERSED, "--config.stages.perception.steps=2", "--branch-from", str(uninterrupted),
           "--branch-after", "warm_start")  # fmt: skip
    rows, source = read_metrics(workdir / "metrics.jsonl"), read_metrics(uninterrupted / "metrics.jsonl")
    assert _deterministic(rows[:2]) == _deterministic(source[:2])  # the source's warm start, not a retrained one
    assert [row["stage"] for row in rows[2:]] == ["visual_reasoning"] * 2 + ["text_reasoning"] * 2 + ["perception"] * 2
    evaluations = (workdir / "eval.jsonl").read_text().splitlines()
    assert evaluations[0] == (uninterrupted / "eval.jsonl").read_text().splitlines()[0]  # after warm_start, step 2
    assert [json.loads(line)["after"] for line in evaluations[1:]] == [
        "visual_reasoning step 1", "visual_reasoning", "text_reasoning", "perception"]  # fmt: skip
    assert (workdir / "data").is_dir() and (workdir / "tokenizer" / "tokenizer.json").exists()  # the source's


@pytest.mark.slow
def test_a_branch_refuses_what_would_not_be_the_same_run(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    def error(*arguments: str, source: Path = uninterrupted) -> str:
        workdir = tmp_path / f"refused{len(list(tmp_path.iterdir()))}"
        line = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(workdir), *arguments,
                                        "--branch-from", str(source)])  # fmt: skip
        assert not (workdir / "checkpoints").exists(), line  # nothing copied
        return line

    changed = error("--config.stages.warm_start.learner.learning_rate=0.1", "--config.seed=3", "--branch-after",
                    "warm_start")  # fmt: skip
    assert f"{uninterrupted / 'config.json'}: the stages up to warm_start ran with another config; " in changed
    assert changed.endswith("differing keys: seed, stages.warm_start.learner.learning_rate"), changed
    assert "do not share the stages up to text_reasoning" in error(REVERSED, "--branch-after", "text_reasoning")
    assert "--branch-after merged: not a stage of this run's schedule" in error("--branch-after", "merged")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.json").write_text((uninterrupted / "config.json").read_text())
    assert error("--branch-after", "warm_start", source=unfinished).endswith(
        f"{unfinished / 'checkpoints'}: no checkpoint of the end of stage warm_start (checkpoints: none); finish "
        "that stage in the source run first")  # fmt: skip
    assert "not a run's workdir" in error("--branch-after", "warm_start", source=tmp_path)
    (unfinished / "config.json").write_text('{"schedule": [')  # cut short
    assert f"{unfinished / 'config.json'}: not a run's config (" in error("--branch-after", "warm_start",
                                                                         source=unfinished)  # fmt: skip
    assert cli.main(["train", "--config", CONFIG, "--workdir", str(tmp_path / "x"), "--branch-from", "y"]) == 2
    assert capsys.readouterr().err.strip().endswith("--branch-from and --branch-after go together")


@pytest.mark.slow
def test_resume_refuses_a_changed_config(uninterrupted: Path, capsys) -> None:
    error = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(uninterrupted),
                                     "--config.rollout.n=4", "--config.learner.learning_rate=0.1"])  # fmt: skip
    assert "differing keys: learner.learning_rate, rollout.n" in error


@pytest.mark.slow
def test_incompatible_checkpoint_names_it(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(uninterrupted), str(workdir)], check=True)
    error = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(workdir), "--allow-config-change",
                                     "--config.model.tiny.vocab_size=640"])  # fmt: skip
    assert f"{workdir / 'checkpoints'}/10: the checkpoint's model does not fit the configured model: " in error
    assert "language_model.embed_tokens.weight is (512, 64) in the checkpoint and (640, 64) in the model" in error


def _truncate_largest_file(directory: Path) -> None:
    """Damages a checkpoint item as a full disk or an interrupted copy would: its largest data file cut short."""
    largest = max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:100])


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(uninterrupted: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "damaged"
    subprocess.run(["cp", "-r", str(uninterrupted), str(workdir)], check=True)
    _truncate_largest_file(workdir / "checkpoints" / "10" / "model")
    resumed = _train(workdir)
    warnings = [line for line in resumed.stderr.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{workdir / 'checkpoints'}/10: damaged checkpoint ("), warnings
    assert (workdir / "checkpoints.damaged" / "10" / "model").is_dir()  # set aside, not deleted
    assert "stage 4/4 visual_reasoning" in resumed.stderr  # retrained from the text-reasoning stage end (step 8)
    _assert_same_run(workdir, uninterrupted, tmp_path)


@pytest.mark.slow
def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(uninterrupted: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "all_damaged"
    subprocess.run(["cp", "-r", str(uninterrupted), str(workdir)], check=True)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    for step in steps:
        (workdir / "checkpoints" / str(step) / "model" / "manifest.ocdbt").write_bytes(b"garbage")
    done = subprocess.run(_train_command(workdir), env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    listed = ", ".join(map(str, steps))
    assert last.startswith(f"staged-vlm train: error: {workdir / 'checkpoints'}: every checkpoint ({listed})"), last
    assert len(read_metrics(workdir / "metrics.jsonl")) == 10  # nothing truncated, nothing retrained


@pytest.mark.slow
def test_a_gs_workdir_trains_resumes_falls_back_and_exports_like_a_local_one(uninterrupted: Path, tmp_path: Path):
    """``--workdir gs://…`` through the real CLI, on the local stand-in for GCS (tests/fake_gcs.py): killed after a
    checkpoint, resumed, its latest checkpoint damaged and set aside, exported to ``gs://``. It ends as the local
    run, and nothing is written outside the fake bucket (a stray `pathlib` write would land in the cwd)."""
    bucket, cwd = tmp_path / "gcs", tmp_path / "cwd"
    cwd.mkdir()
    env = {**_env(), "FAKE_GCS_ROOT": str(bucket),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "fake_gcs_site"), str(REPO)])}  # fmt: skip
    run = lambda *argv: subprocess.run([sys.executable, "-m", "staged_vlm_jax", *argv], env=env, cwd=cwd,
                                       capture_output=True, text=True, timeout=900)  # fmt: skip
    workdir, local = "gs://runs/staged", bucket / "runs" / "staged"
    train = ["train", "--config", CONFIG, "--workdir", workdir, CACHE]
    process = subprocess.Popen([sys.executable, "-m", "staged_vlm_jax", *train], env=env, cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    committed = local / "checkpoints" / "4" / "commit_success.txt"  # Orbax's GCS path: no rename, a marker
    deadline = time.monotonic() + 600
    while not committed.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = run(*train)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage 1/4 warm_start" not in resumed.stderr
    _truncate_largest_file(local / "checkpoints" / "10" / "model")
    fell_back = run(*train)
    assert fell_back.returncode == 0, fell_back.stderr[-3000:]
    assert f"{workdir}/checkpoints/10: damaged checkpoint (" in fell_back.stderr
    assert (local / "checkpoints.damaged" / "10" / "model").is_dir()
    exported = run("export", "--checkpoint", f"{workdir}/checkpoints", "--out", "gs://runs/exported")
    assert exported.returncode == 0, exported.stderr[-3000:]

    assert list(cwd.iterdir()) == []
    for name in ("config.json", "eval.jsonl", "results.md", "plots/reward.png", "data", "tokenizer/tokenizer.json"):
        assert (local / name).exists(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (local / "tensorboard").iterdir())
    assert _deterministic(read_metrics(local / "metrics.jsonl")) == _deterministic(
        read_metrics(uninterrupted / "metrics.jsonl")
    )
    assert (local / "eval.jsonl").read_text() == (uninterrupted / "eval.jsonl").read_text()
    final = load_file(bucket / "runs" / "exported" / "model.safetensors")
    reference = _weights(uninterrupted, tmp_path / "local_hf")
    assert final.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(final[name], reference[name], err_msg=name)


def test_config_typo_is_one_line_naming_the_key(tmp_path: Path, capsys) -> None:
    error = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path), "--config.rollout.nn=4"])
    assert "rollout.nn" in error
    typo = tmp_path / "typo.py"
    typo.write_text(f"import runpy\n\ndef get_config():\n    c = runpy.run_path({CONFIG!r})['get_config']()\n"
                    "    c.stages.perception.epoch = 3\n    return c\n")  # fmt: skip
    error = _one_line_error(capsys, ["train", "--config", str(typo), "--workdir", str(tmp_path / "w")])
    assert "config.stages.perception.epoch: unknown config key; did you mean config.stages.perception.epochs?" in error


def test_data_with_no_usable_prompt_is_one_line_not_a_hang(tmp_path: Path, capsys) -> None:
    last = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path),
                                    "--config.data.max_prompt_length=8"])  # fmt: skip
    assert "perception.jsonl: rows: no usable row (" in last and "dropped overlong: 16)" in last, last
    assert not (tmp_path / "checkpoints").exists()  # refused at start-up, before anything trained


def test_missing_paths_are_one_line_naming_them(tmp_path: Path, capsys) -> None:
    base = ["train", "--config", CONFIG, "--config.data.synthetic.train_rows=0"]
    missing = tmp_path / "nowhere" / "perception.jsonl"
    error = _one_line_error(capsys, [*base, "--workdir", str(tmp_path / "a"),
                                     f"--config.data.sources.perception.path={missing}"])  # fmt: skip
    assert str(missing) in error
    model = tmp_path / "no_model"
    error = _one_line_error(capsys, [*base, "--workdir", str(tmp_path / "b"), f"--config.model.path={model}",
                                     f"--config.model.tokenizer={model}"])  # fmt: skip
    assert error.strip().endswith(f"config.model.path: {model / 'config.json'} not found"), error
    # An evaluation set is read only after the first stage trains; its path is checked before that.
    heldout = tmp_path / "heldout.jsonl"
    error = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path / "c"),
                                     f"--config.eval.sources.heldout_text_reasoning.path={heldout}"])  # fmt: skip
    assert error.strip().endswith(f"config.eval.sources.heldout_text_reasoning.path: {heldout} not found"), error
    assert not (tmp_path / "c" / "checkpoints").exists()


@pytest.mark.slow
def test_a_collapsed_run_stops_and_sets_its_dead_checkpoints_aside(tmp_path: Path) -> None:
    """lr 1e3 saturates the tiny policy (exactly zero gradients under a KL signal): the run exits 2 in one line
    instead of training on and checkpointing dead weights, and the latest checkpoint left is a healthy one."""
    done = subprocess.run(_train_command(tmp_path, "--config.learner.learning_rate=1e3"), env=_env(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("staged-vlm train: error: stage perception step 4 (global step 6): the gradient norm "
                           "was exactly 0 for 3 steps in a row"), last  # fmt: skip
    assert f"checkpoints [4] moved to {tmp_path / 'checkpoints'}.collapsed; a rerun resumes from step 2" in last
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    assert (tmp_path / "checkpoints.collapsed" / "4").is_dir()  # set aside, not deleted
    assert [row["grad_norm"] for row in read_metrics(tmp_path / "metrics.jsonl")][-3:] == [0.0, 0.0, 0.0]


@pytest.mark.slow
def test_resume_refuses_changed_data_unless_allowed(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(uninterrupted), str(workdir)], check=True)
    rows = workdir / "data" / "train" / "text_reasoning.jsonl"
    rows.write_text(rows.read_text() + json.dumps({"problem": "1 + 1?", "answer": "2"}) + "\n")
    error = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(workdir)])
    assert f"{workdir / 'checkpoints'}/10: the data changed since this checkpoint was written " in error
    assert "(config.data.sources.text_reasoning.path)" in error and "--allow-data-change" in error
    assert cli.main(["train", "--config", CONFIG, "--workdir", str(workdir), "--allow-data-change", CACHE]) == 0


@pytest.mark.slow
def test_a_corrupt_metrics_line_is_named_by_file_and_line(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    workdir = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(uninterrupted), str(workdir)], check=True)
    metrics = workdir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([*lines[:2], lines[2][:40], *lines[3:]]) + "\n")
    for argv in (["train", "--config", CONFIG, "--workdir", str(workdir)], ["plot", "--workdir", str(workdir)]):
        error = _one_line_error(capsys, argv) if argv[0] == "train" else _plot_error(capsys, argv)
        assert f"{metrics}:3: corrupt metrics line" in error, error
    metrics.write_text("\n".join([*lines[:2], '{"reward/mean": 0.5}', *lines[3:]]) + "\n")
    assert f"{metrics}:3: expected a JSON object with an integer global_step" in _plot_error(capsys, argv)


def _plot_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err.strip()


def test_bad_rows_stop_the_run_before_training_or_are_listed_when_skipped(tmp_path: Path, capsys) -> None:
    rows = tmp_path / "text.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in [
        *({"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)),
        {"problem": "Repeat <|im_end|> twice.", "answer": "x"},
    ]))  # fmt: skip
    source = f"--config.data.sources.text_reasoning.path={rows}"
    error = _one_line_error(capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path / "raise"), source])
    assert error.endswith(f"{rows}:9: problem: holds the control token '<|im_end|>' as text, which the chat "
                          "template would read as the token itself; remove or escape it"), error  # fmt: skip
    assert not (tmp_path / "raise" / "checkpoints").exists()
    config = cli.load_config(CONFIG, [source, "--config.data.on_error=skip"])
    StagedRun(config, tmp_path / "skip").checkpointer.close()  # a run screens every source at start-up
    logged = [json.loads(line) for line in (tmp_path / "skip" / "data_errors.jsonl").read_text().splitlines()]
    assert {"where": f"{rows}:9", "field": "problem", "reason": "control_token", "action": "skipped"}.items() <= {
        key: value for entry in logged if entry["where"] == f"{rows}:9" for key, value in entry.items()
    }.items()


@pytest.mark.slow
def test_benchmarks_are_answered_at_every_stage_end(tmp_path: Path) -> None:
    from tests.eval.benchmark_files import write_mmstar

    mmstar = write_mmstar(tmp_path / "MMStar.tsv", 4)
    config = tmp_path / "with_benchmarks.py"
    config.write_text(f"import runpy\n\ndef get_config():\n    c = runpy.run_path({CONFIG!r})['get_config']()\n"
                      f"    c.eval.benchmarks = {{'mmstar': {mmstar!r}}}\n    c.eval.benchmark_limit = 3\n"
                      "    return c\n")  # fmt: skip
    workdir = tmp_path / "run"
    done = subprocess.run([*_train_command(workdir)[:4], "--config", str(config), "--workdir", str(workdir), CACHE],
                          env=_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(workdir / "metrics.jsonl")
    ends = [row for row in rows if "bench/mmstar/accuracy" in row]
    assert [row["stage"] for row in ends] == ["warm_start", "perception", "text_reasoning", "visual_reasoning"]
    for row in ends:
        scores = json.loads((workdir / "benchmarks" / row["stage"] / "scores.json").read_text())
        assert scores["mmstar"]["count"] == 3 and scores["mmstar"]["accuracy"] == row["bench/mmstar/accuracy"]
        assert (workdir / "benchmarks" / row["stage"] / "table1.md").read_text().startswith("| model | mmstar |")
