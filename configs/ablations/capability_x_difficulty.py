"""Ablation (curriculum grid, Sec. 4.5): capability x difficulty — the staged order, each stage sorted easy ->
hard by pass_rate (ties shuffled), vision tower frozen throughout as in the paper's grid."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    for name in recipes.CAPABILITY_STAGES:
        config.stages[name].order = "difficulty"
        config.stages[name].trainable = recipes.VISION_FROZEN
    return config
