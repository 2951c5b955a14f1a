"""The paper's merged baseline on Qwen2.5-VL-7B-Instruct: one GRPO stage of 15 epochs over the union of the three
data sets, reshuffled every epoch, vision tower frozen (15 · ⌊32,100 / 512⌋ = 930 steps on the paper's data, against
96 + 375 + 465 staged; same overrides as the staged config)."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.paper(model_path="/ckpt/Qwen2.5-VL-7B-Instruct"))
