"""The paper's merged baseline on Qwen3-VL-8B-Instruct: one GRPO stage of 15 epochs over the union of the three
data sets, vision tower frozen (as configs/qwen2_5_vl_7b_merged.py; same overrides as the staged config)."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen3-VL-8B-Instruct", family="qwen3_vl"))
