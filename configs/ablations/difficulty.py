"""Ablation (curriculum grid, Sec. 4.5): difficulty only — one run of 15 passes over the union of the three data
sets sorted easy -> hard by pass_rate (ties shuffled; the same order every pass, as the paper's sorted file with
data.shuffle=false), vision tower frozen. Set --config.stages.merged.drop_solved=True to drop pass_rate == 1 rows."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct"), order="difficulty")
