"""Ablation (curriculum grid, Sec. 4.5): capability only — one continuous run of 15 passes over the three data sets
concatenated in stage order (perception, text reasoning, visual reasoning), each in its file's order (no shuffle),
vision tower frozen. The grid's other cells: difficulty.py, capability_x_difficulty.py, and random order, the merged
baseline (configs/qwen2_5_vl_7b_merged.py)."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct"), order="sequential")
