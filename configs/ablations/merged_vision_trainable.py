"""Ablation: the merged baseline with the vision tower trained (the paper's merged run freezes it): one stage of 15
epochs over the union of the three data sets, every parameter trainable."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct"), trainable=recipes.ALL_PARAMETERS)
