"""Ablation: stage 3 alone (visual-reasoning GRPO from the base model; no perception or text-reasoning stage)."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    config.schedule = ("visual_reasoning",)
    return config
