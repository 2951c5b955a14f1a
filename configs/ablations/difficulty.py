"""Ablation (curriculum grid, Sec. 4.5): difficulty only — the merged data sorted easy -> hard by pass_rate (ties
shuffled), vision tower frozen. Set --config.stages.merged.drop_solved=True to drop pass_rate == 1 rows."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct"), order="difficulty")
