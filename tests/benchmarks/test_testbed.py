"""benchmarks/testbed.py's statistics: means, t-based 95 % intervals, paired differences and the report table."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "testbed", Path(__file__).resolve().parents[2] / "benchmarks" / "testbed.py"
)
testbed = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(testbed)


@pytest.mark.parametrize(
    ("values", "mean", "half_width"),
    [
        ([0.0, 2.0], 1.0, 12.706),  # sd √2, t(1 df) 12.706, √2 / √2
        ([1.0, 2.0, 3.0], 2.0, 4.303 / math.sqrt(3)),  # sd 1
        ([1.0, 2.0, 3.0, 4.0], 2.5, 3.182 * math.sqrt(5 / 3) / 2),  # sd √(5/3)
        ([2.0, 4.0, 4.0, 4.0, 6.0], 4.0, 2.776 * math.sqrt(2) / math.sqrt(5)),  # sd √2
    ],
)
def test_mean_ci_is_the_t_interval(values, mean, half_width):
    assert testbed.mean_ci(values) == pytest.approx((mean, half_width))


def test_one_seed_has_a_mean_and_no_interval():
    mean, half_width = testbed.mean_ci([7.0])
    assert mean == 7.0 and math.isnan(half_width)
    assert testbed.format_ci([7.0]) == "7.0"


def test_past_thirty_degrees_of_freedom_the_thirty_quantile_is_used():
    values = [0.0, 1.0] * 20  # 40 values, sd 0.5064
    assert testbed.mean_ci(values)[1] == pytest.approx(2.042 * 0.5064 / math.sqrt(40), rel=1e-3)


def test_paired_differences_are_per_seed_and_need_the_same_seeds():
    assert testbed.paired_differences([3.0, 5.0, 1.0], [1.0, 4.0, 2.0]) == [2.0, 1.0, -1.0]
    with pytest.raises(ValueError, match="same seeds"):
        testbed.paired_differences([1.0], [1.0, 2.0])


def test_table_reports_arms_and_paired_differences():
    def run(perception, text, visual):
        return {"perception": perception, "text_reasoning": text, "visual_reasoning": visual, "wall_s": 60.0}

    report = testbed.table({"staged": [run(30, 10, 40), run(40, 20, 50)], "merged": [run(20, 10, 40), run(20, 20, 44)]})
    assert "over 2 seeds (t, 1 df)" in report
    # staged perception 35 ± 12.706 · 5 = 63.5; mean per seed 26.67 and 36.67 -> 31.7 ± 63.5
    assert "| staged | 35.0 ± 63.5 | 15.0 ± 63.5 | 45.0 ± 63.5 | 31.7 ± 63.5 |" in report
    # differences per seed: perception 10, 20; text 0, 0; visual 0, 6; mean 3.33, 8.67
    assert "| staged − merged | 15.0 ± 63.5 | 0.0 ± 0.0 | 3.0 ± 38.1 | 6.0 ± 33.9 |" in report


def test_most_common_share_is_the_score_of_always_giving_the_modal_answer(tmp_path):
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(f'{{"answer": "{answer}"}}\n' for answer in "ABAACD3A"))
    assert testbed.most_common_share(path) == 50.0
