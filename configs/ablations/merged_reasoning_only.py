"""Ablation ("Res only"): the merged baseline without perception data — one stage of 15 epochs over text and visual
reasoning, vision tower frozen. Its counterpart "Per + Res" is the merged baseline itself,
configs/qwen2_5_vl_7b_merged.py."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    config = recipes.merged(config, names=("text_reasoning", "visual_reasoning"))
    config.schedule = ("merged",)
    return config
