"""The paper's main suite (Table 1): four visual-math and four perception benchmarks, scored officially.

    staged-vlm eval --config configs/eval/main_suite.py --model runs/qwen_staged --workdir runs/qwen_staged/eval \
        --config.benchmarks.mathvista_mini=/data/bench/MathVista_MINI.tsv ...

Each benchmark is a local file (the VLMEvalKit TSV, or the official parquet); the paths below are placeholders.
Trained models answer with the paper's think/boxed instruction as the system prompt; evaluate a base model with
--config.system_prompt=none. Scoring is rule-based unless judge.url names an OpenAI-compatible endpoint (with
judge.model, the model it serves), whose LLM then reads the responses the rules cannot, as VLMEvalKit's judge did
for the paper (staged_vlm_jax/eval/judge.py); the API key, if the endpoint needs one, is read from the environment
variable judge.api_key_env.
"""

from ml_collections import ConfigDict, config_dict

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


def judge() -> ConfigDict:
    """The LLM judge, off (url None) by default; the eval configs share it."""
    return ConfigDict(
        dict(
            url=config_dict.placeholder(str),  # e.g. http://127.0.0.1:8000/v1
            model="",
            api_key_env="OPENAI_API_KEY",
            timeout_s=60.0,
            retries=3,
            backoff_s=1.0,
            max_concurrency=8,
            max_tokens=2048,
        )
    )


def get_config(root: str = "/data/bench", files: dict[str, str] = BENCHMARK_FILES) -> ConfigDict:
    return ConfigDict(
        dict(
            benchmarks={name: f"{root}/{file}" for name, file in files.items()},
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
            judge=judge(),
        )
    )
