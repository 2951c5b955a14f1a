"""Ablation variant: capability x difficulty as three stages (perception -> text reasoning -> visual reasoning),
each sorted easy -> hard by pass_rate (ties shuffled) with its own optimizer and KL reference, vision tower frozen.
The paper's grid runs it as one continuous run instead: configs/ablations/capability_x_difficulty.py."""

from staged_vlm_jax.train import recipes


def get_config():
    config = recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct")
    for name in recipes.CAPABILITY_STAGES:
        config.stages[name].order = "difficulty"
        config.stages[name].trainable = recipes.VISION_FROZEN
    return config
