"""The paper's merged baseline on InternVL3-8B (HF format) as the official script runs it: one GRPO stage of 15
epochs over the union of the three data sets with the vision tower trainable (frozen in the Qwen runs), images
pre-resized into at most 500,000 pixels, prompts within 2048 tokens."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.internvl_merged(model_path="/ckpt/InternVL3-8B-hf")
