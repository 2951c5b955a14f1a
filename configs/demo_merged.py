"""CPU testbed, merged baseline: the same warm start, then one GRPO stage over all three data sets shuffled
together, vision tower frozen, same total steps as configs/demo.py."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.demo())
