"""The paper's extended suite (appendix Table 9): ten benchmarks beyond Table 1, scored officially.

    staged-vlm eval --config configs/eval/extended_suite.py --model runs/qwen_staged --workdir runs/qwen_staged/eval \
        --config.benchmarks.dynamath=/data/bench/DynaMath.tsv ...

Each benchmark is VLMEvalKit's TSV (the paths below are placeholders); both VisOnlyQA benchmarks read the one
visonlyqa_vlmevalkit.tsv (its Eval_Real and Eval_Synthetic rows). Everything else (system prompt, generation, the
optional LLM judge) is the main suite's (configs/eval/main_suite.py). table1.md lists the ten headline scores and
their mean ("Extended AVG", kept apart from Table 1's Overall); give the run its own workdir, as scores.json and
table1.md describe the benchmarks of one run.
"""

import os
import runpy

from ml_collections import ConfigDict

BENCHMARK_FILES = {
    "mathverse_mini_vo": "MathVerse_MINI_Vision_Only.tsv",
    "dynamath": "DynaMath.tsv",
    "hallusionbench": "HallusionBench.tsv",
    "blink": "BLINK.tsv",
    "visonlyqa_synthetic": "visonlyqa_vlmevalkit.tsv",
    "visonlyqa_real": "visonlyqa_vlmevalkit.tsv",
    "cv_bench_2d": "CV-Bench-2D.tsv",
    "vstarbench": "VStarBench.tsv",
    "chartqa_test": "ChartQA_TEST.tsv",
    "textvqa_val": "TextVQA_VAL.tsv",
}


def get_config(root: str = "/data/bench") -> ConfigDict:
    main_suite = runpy.run_path(os.path.join(os.path.dirname(__file__), "main_suite.py"))
    return main_suite["get_config"](root, BENCHMARK_FILES)
