"""The ``staged-vlm`` command line."""

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
