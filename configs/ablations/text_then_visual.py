"""Ablation: stage subset 2 -> 3 (text reasoning, then visual reasoning; no perception stage)."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    config.schedule = ("text_reasoning", "visual_reasoning")
    return config
