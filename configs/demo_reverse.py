"""CPU testbed, order ablation: the same warm start, then GRPO visual reasoning -> text reasoning -> perception."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.demo_reverse()
