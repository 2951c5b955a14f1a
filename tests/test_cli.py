"""The ``staged-vlm`` command line."""

from pathlib import Path

import pytest

from staged_vlm_jax import cli, models


def test_inspect_prints_parameter_counts(tmp_path, capsys):
    cfg = models.tiny_config("qwen2_5_vl")
    models.save_hf(models.create(cfg), cfg, tmp_path)
    assert cli.main(["inspect", "--model", str(tmp_path), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "model_type: qwen2_5_vl" in out
    counts = {
        line.split(": ")[0]: int(line.split(": ")[1].replace(",", ""))
        for line in out.splitlines()
        if line.startswith("parameters/")
    }
    assert counts["parameters/total"] == sum(v for k, v in counts.items() if k != "parameters/total") > 0


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["trian"])
    assert "invalid choice: 'trian'" in capsys.readouterr().err


def _failures(tmp_path):
    """Each documented user error (README "When something goes wrong") that needs no training: argv and a piece
    of the one line it must print. Training-time ones (collapse, changed data, damaged checkpoints, bad rows,
    corrupt metrics) are run through the CLI in tests/train/test_stages.py."""
    demo = "configs/demo.py"
    convert = ["data", "convert", "--capability", "text_reasoning"]
    return {
        "missing config": (["train", "--config", "nope.py", "--workdir", "w"], "--config nope.py: no such config file"),
        "config typo": (["train", "--config", demo, "--workdir", str(tmp_path / "w"), "--config.rollout.nn=4"],
                        "rollout.nn"),
        "workdir under a file": (["train", "--config", demo, "--workdir", str(tmp_path / "a_file" / "w")],
                                 "Not a directory"),
        "convert an empty file": ([*convert, "--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o")],
                                  "empty.jsonl: rows: no usable row"),
        "convert a missing file": ([*convert, "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")],
                                   "nope.jsonl"),
        "convert into a full directory": ([*convert, "--input", str(tmp_path / "one.jsonl"), "--out",
                                           str(tmp_path / "full")], "full is not an empty directory"),
        "plot without metrics": (["plot", "--workdir", str(tmp_path)], "no metrics file at"),
        "export without checkpoints": (["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "hf")],
                                       "config.json: not found"),
        "inspect a missing model": (["inspect", "--model", str(tmp_path / "nope")], "config.json not found"),
        "plan for an unknown device": (["plan", "--config", demo, "--topology", "h800:8"], "--topology 'h800:8'"),
        "eval without the benchmark files": (["eval", "--config", "configs/eval/main_suite.py", "--model", "m",
                                              "--workdir", str(tmp_path / "e")],
                                             "benchmarks.a_okvqa: /data/bench/A-OKVQA.tsv not found"),
        "compare a run without scores": (["compare", str(tmp_path), "--out", str(tmp_path / "c")], "no scores.json"),
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(_failures(Path())))
def test_every_documented_failure_is_one_line_and_exit_status_2(name, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "one.jsonl").write_text('{"problem": "1 + 1?", "answer": "2"}\n')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    (tmp_path / "a_file").write_text("")
    monkeypatch.chdir(Path(__file__).parents[1])  # the repository: the configs' paths are relative to it
    argv, expected = _failures(tmp_path)[name]
    assert cli.main(argv) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith(f"staged-vlm {argv[0]}: error: "), stderr
    assert expected in stderr, stderr


def test_debug_shows_the_traceback(capsys):
    from staged_vlm_jax.train.config import ConfigKeyError

    with pytest.raises(ConfigKeyError, match="no such config file"):
        cli.main(["--debug", "train", "--config", "nope.py", "--workdir", "w"])
