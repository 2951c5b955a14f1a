"""The paper's merged baseline on InternVL3.5-8B (HF format), as configs/internvl3_8b_merged.py: vision tower
trainable, images pre-resized into at most 500,000 pixels, prompts within 2048 tokens."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.internvl_merged(model_path="/ckpt/InternVL3_5-8B-HF")
