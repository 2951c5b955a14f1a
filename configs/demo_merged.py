"""CPU testbed, merged baseline: the same warm start, then one GRPO stage of one epoch over all three data sets,
shuffled together, vision tower frozen (one epoch each in configs/demo.py, so the same total steps: 3 x 32)."""

from staged_vlm_jax.train import recipes


def get_config():
    return recipes.merged(recipes.demo(), epochs=1)
