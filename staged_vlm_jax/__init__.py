"""staged_vlm_jax: staged GRPO post-training of vision-language models (perception -> text -> visual reasoning)."""

__version__ = "0.1.0"
