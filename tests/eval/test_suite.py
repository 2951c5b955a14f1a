"""`staged-vlm eval` end to end on a tiny model: small benchmark files in VLMEvalKit's TSV layout are answered,
scored and tabled as Table 1; a rerun after losing answers (a kill) answers only those and ends with the same
scores; a bad config is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from staged_vlm_jax import cli, models
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer
from tests.eval.benchmark_files import write_mmstar, write_pope

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("suite")
    model = root / "model"
    cfg = models.tiny_config("qwen2_5_vl")
    models.save_hf(models.create(cfg), cfg, model)
    build_tiny_tokenizer(model)
    mmstar, pope = write_mmstar(root / "MMStar.tsv", 5), write_pope(root / "POPE.tsv", 4)
    config = root / "suite.py"
    config.write_text(
        "import runpy\n\n"
        f"def get_config():\n    c = runpy.run_path({str(REPO / 'configs/eval/main_suite.py')!r})['get_config']()\n"
        f"    c.benchmarks = {{'mmstar': {mmstar!r}, 'pope': {pope!r}}}\n"
        "    c.update(dtype='float32', max_new_tokens=8, batch_size=2, prompt_buckets=(256, 512, 1024),\n"
        "             min_pixels=56 * 56, max_pixels=112 * 112, mesh=dict(data=-1, fsdp=1, tensor=1))\n"
        "    return c\n"
    )
    return {"root": root, "model": model, "config": config}


def test_eval_answers_scores_and_tables_then_resumes_only_the_missing(setup, tmp_path, capsys):
    argv = ["eval", "--config", str(setup["config"]), "--model", str(setup["model"]), "--workdir", str(tmp_path)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | mmstar | pope | Perception AVG | Overall | response tokens |"
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["mmstar"]["count"] == 5 and scores["pope"]["count"] == 4
    cells = table[2].strip("| ").split(" | ")
    assert cells[0] == tmp_path.name
    assert float(cells[1]) == pytest.approx(scores["mmstar"]["accuracy"], abs=0.01)
    assert float(cells[2]) == pytest.approx(scores["pope"]["f1"], abs=0.01)
    perception = (scores["mmstar"]["accuracy"] + scores["pope"]["f1"]) / 2  # Table 1: the group mean; Overall = it
    assert float(cells[3]) == float(cells[4]) == pytest.approx(perception, abs=0.01)
    answers = (tmp_path / "mmstar.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in answers] == [0, 1, 2, 3, 4]
    assert all(0 < json.loads(line)["response_tokens"] <= 8 for line in answers)

    # A kill after two answers, mid-way through writing the third: the rerun answers records 2..4 only.
    (tmp_path / "mmstar.jsonl").write_text("\n".join(answers[:2]) + "\n" + answers[2][:15])
    assert cli.main(argv) == 0
    capsys.readouterr()
    rerun = [json.loads(line) for line in (tmp_path / "mmstar.jsonl").read_text().splitlines()[2:]]  # cut line gone
    assert [row["index"] for row in rerun] == [2, 3, 4]
    assert json.loads((tmp_path / "scores.json").read_text()) == scores  # greedy: the same answers, the same scores


def test_limit_and_a_bad_config_are_one_line(setup, tmp_path, capsys):
    base = ["eval", "--config", str(setup["config"]), "--model", str(setup["model"]), "--workdir", str(tmp_path)]
    assert cli.main([*base, "--limit", "2"]) == 0
    assert json.loads((tmp_path / "scores.json").read_text())["pope"]["count"] == 2
    capsys.readouterr()
    assert cli.main([*base, "--config.system_prompt=cot"]) == 2
    error = capsys.readouterr().err
    assert error == "staged-vlm eval: error: config.system_prompt: 'cot' is not one of ['format', 'none']\n"
    (tmp_path / "pope.jsonl").write_text("not json\n" + (tmp_path / "pope.jsonl").read_text())
    assert cli.main(base) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after mmstar's progress bar
    assert error.startswith(f"staged-vlm eval: error: {tmp_path / 'pope.jsonl'}:1: line: not an answer"), error


def test_compare_puts_runs_side_by_side_with_deltas_and_plots(setup, tmp_path, capsys):
    base = ["eval", "--config", str(setup["config"]), "--model", str(setup["model"]), "--limit", "3"]
    staged, merged = tmp_path / "staged", tmp_path / "merged" / "eval"  # an eval workdir; a run's eval/
    assert cli.main([*base, "--workdir", str(staged)]) == 0
    assert cli.main([*base, "--workdir", str(merged), "--config.system_prompt=none"]) == 0
    (tmp_path / "merged" / "metrics.jsonl").write_text("".join(
        json.dumps({"global_step": step, "stage": stage, "response_length/mean": 10.0 + step}) + "\n"
        for step, stage in [(1, "perception"), (2, "perception"), (3, "merged"), (4, "merged")]))  # fmt: skip
    capsys.readouterr()
    assert cli.main(["compare", str(staged), str(tmp_path / "merged"), "--out", str(tmp_path / "out"),
                     "--baseline", "merged"]) == 0  # fmt: skip
    report = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in report if line.startswith("| staged") or
            line.startswith("| merged")}  # fmt: skip
    assert set(rows) == {"staged", "merged"}
    scores = {name: json.loads((path / "scores.json").read_text())["table1"]
              for name, path in (("staged", staged), ("merged", merged))}  # fmt: skip
    difference = report[report.index("## Difference to merged") + 4]
    expected = scores["staged"]["Overall"] - scores["merged"]["Overall"]
    assert difference.startswith("| staged |")
    assert float(difference.strip("| ").split(" | ")[4]) == pytest.approx(expected, abs=0.01)
    assert (tmp_path / "out" / "benchmarks.png").stat().st_size > 0
    assert (tmp_path / "out" / "response_length.png").stat().st_size > 0  # the run with metrics.jsonl


def test_the_eval_configs_build_with_every_benchmark_registered():
    from staged_vlm_jax.eval import benchmarks
    from staged_vlm_jax.eval.suite import SuiteSpec
    from staged_vlm_jax.train.config import build

    groups = {"main_suite": {"visual_math", "perception"}, "extended_suite": {"extended"}}
    suites = {name: build(SuiteSpec, cli.load_config(str(REPO / f"configs/eval/{name}.py"), []), "config")
              for name in groups}  # fmt: skip
    for name, spec in suites.items():  # the main suite is Table 1, all of it; the extended suite appendix Table 9
        registered = sorted(bench for bench, b in benchmarks.BENCHMARKS.items() if b.group in groups[name])
        assert sorted(spec.benchmarks) == registered
        assert [problem.split(":")[0] for problem in spec.problems()] == [f"benchmarks.{n}" for n in spec.benchmarks]
        assert spec.judge.url is None  # rule-based unless a judge is configured
    assert len(suites["extended_suite"].benchmarks) == 10
    assert sorted({*suites["main_suite"].benchmarks, *suites["extended_suite"].benchmarks}) == sorted(
        benchmarks.BENCHMARKS
    )
    # Both VisOnlyQA benchmarks read VLMEvalKit's one file.
    extended = suites["extended_suite"].benchmarks
    assert extended["visonlyqa_real"] == extended["visonlyqa_synthetic"] == "/data/bench/visonlyqa_vlmevalkit.tsv"


def test_the_judge_is_configured_by_overrides():
    from staged_vlm_jax.eval.suite import SuiteSpec
    from staged_vlm_jax.train.config import build

    overrides = ["--config.judge.url=http://127.0.0.1:8000/v1", "--config.judge.model=Qwen/Qwen2.5-72B-Instruct"]
    spec = build(SuiteSpec, cli.load_config(str(REPO / "configs/eval/extended_suite.py"), overrides), "config")
    assert (spec.judge.url, spec.judge.model, spec.judge.api_key_env) == (
        "http://127.0.0.1:8000/v1",
        "Qwen/Qwen2.5-72B-Instruct",
        "OPENAI_API_KEY",
    )
    assert not [problem for problem in spec.problems() if problem.startswith("judge")]
    spec = build(SuiteSpec, cli.load_config(str(REPO / "configs/eval/main_suite.py"), overrides[:1]), "config")
    assert [problem for problem in spec.problems() if problem.startswith("judge")] == [
        "judge.model: required with judge.url (the model name the endpoint serves)"
    ]


def test_table_one_averages_the_extended_suite_apart_from_overall():
    from staged_vlm_jax.eval.suite import table_one_row

    scores = {"dynamath": {"accuracy": 30.0}, "mmstar": {"accuracy": 70.0}, "hallusionbench": {"overall": 50.0},
              "pope": {"f1": 80.0}, "mathvista_mini": {"accuracy": 60.0}}  # fmt: skip
    row = table_one_row(scores, [10, 20])
    assert list(row) == ["mathvista_mini", "mmstar", "pope", "dynamath", "hallusionbench", "Visual math AVG",
                         "Perception AVG", "Overall", "Extended AVG", "response tokens"]  # fmt: skip
    assert (row["Overall"], row["Extended AVG"], row["response tokens"]) == (67.5, 40.0, 15.0)
