"""The paper's main suite (Table 1): four visual-math and four perception benchmarks, scored officially.

    staged-vlm eval --config configs/eval/main_suite.py --model runs/qwen_staged --workdir runs/qwen_staged/eval \
        --config.benchmarks.mathvista_mini=/data/bench/MathVista_MINI.tsv ...

Each benchmark is a local file (the VLMEvalKit TSV, or the official parquet); the paths below are placeholders.
Trained models answer with the paper's think/boxed instruction as the system prompt; evaluate a base model with
--config.system_prompt=none.
"""

from ml_collections import ConfigDict

BENCHMARK_FILES = {
    "mathvista_mini": "MathVista_MINI.tsv",
    "mathvision_mini": "MathVision_MINI.tsv",
    "mathverse_mini_vi": "MathVerse_MINI_Vision_Intensive.tsv",
    "wemath": "WeMath.tsv",
    "a_okvqa": "A-OKVQA.tsv",
    "realworldqa": "RealWorldQA.tsv",
    "mmstar": "MMStar.tsv",
    "pope": "POPE.tsv",
}


def get_config(root: str = "/data/bench") -> ConfigDict:
    return ConfigDict(
        dict(
            benchmarks={name: f"{root}/{file}" for name, file in BENCHMARK_FILES.items()},
            dtype="bfloat16",
            system_prompt="format",
            max_new_tokens=2048,
            batch_size=32,
            prompt_buckets=(1024, 2048, 4096, 8192),
            min_pixels=512 * 512,
            max_pixels=2048 * 2048,
            image_resize="easyr1",
            image_backend="pil",
            mesh=dict(data=-1, fsdp=1, tensor=1),
        )
    )
