"""Ablation (curriculum grid, Sec. 4.5): capability x difficulty, as the paper runs it — one continuous run of 15
passes over the three data sets concatenated in stage order (perception, text reasoning, visual reasoning), each
sorted easy -> hard by pass_rate (ties shuffled), vision tower frozen, one optimizer and KL reference throughout.
The three-stage variant is configs/ablations/capability_x_difficulty_staged.py."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct"), order="difficulty_per_source")
