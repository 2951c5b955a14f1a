"""CPU testbed: tiny VLM, synthetic data, SFT warm start, then GRPO perception -> text -> visual reasoning."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.demo()
