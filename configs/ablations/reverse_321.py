"""Ablation: the stages in reverse order, visual reasoning -> text reasoning -> perception."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    config.schedule = ("visual_reasoning", "text_reasoning", "perception")
    return config
