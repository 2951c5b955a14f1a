"""Ablation: stage order 2 -> 1 -> 3 (text reasoning, then perception, then visual reasoning)."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    config.schedule = ("text_reasoning", "perception", "visual_reasoning")
    return config
