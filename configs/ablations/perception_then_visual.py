"""Ablation: stage subset 1 -> 3 (perception, then visual reasoning; no text-reasoning stage)."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    config.schedule = ("perception", "visual_reasoning")
    return config
