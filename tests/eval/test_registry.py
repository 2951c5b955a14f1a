"""The benchmark registry: the paper's eight Table-1 benchmarks, registered by importing the package."""

import pytest

from staged_vlm_jax.eval import benchmarks

VISUAL_MATH = ["mathverse_mini_vi", "mathvision_mini", "mathvista_mini", "wemath"]
PERCEPTION = ["a_okvqa", "mmstar", "pope", "realworldqa"]


def test_table_one_is_registered_with_its_groups_and_headlines():
    groups = {name: bench.group for name, bench in benchmarks.BENCHMARKS.items()}
    assert sorted(name for name, group in groups.items() if group == "visual_math") == VISUAL_MATH
    assert sorted(name for name, group in groups.items() if group == "perception") == PERCEPTION
    assert benchmarks.get("wemath").headline == "score_strict" and benchmarks.get("pope").headline == "f1"
    for name in VISUAL_MATH + PERCEPTION:  # each headline is a key its scorer returns
        assert benchmarks.get(name).headline in {"accuracy", "score_strict", "f1"}


def test_unknown_and_duplicate_names_are_errors():
    with pytest.raises(KeyError, match=r"unknown benchmark 'mathvista'; registered: \['a_okvqa'"):
        benchmarks.get("mathvista")
    with pytest.raises(ValueError, match="registered twice"):
        benchmarks.register(benchmarks.get("pope"))
