"""The paper's merged baseline on Qwen2.5-VL-7B-Instruct: the three data sets shuffled into one GRPO stage with
the vision tower frozen and the staged run's total number of steps (same overrides as the staged config)."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct"))
