"""Flax NNX vision-language models, Hugging Face checkpoint I/O and sharding.

Public API: ``load_hf``, ``save_hf``, ``tiny_config``, ``create`` (random init), ``get_family``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from staged_vlm_jax.models.hf_io import CheckpointError, load_hf, read_config, save_hf
from staged_vlm_jax.models.layers import KVCache
from staged_vlm_jax.models.qwen2_5_vl import ConfigError, ImageTokenMismatchError
from staged_vlm_jax.models.registry import FAMILIES, get_family, tiny_config


def create(cfg, dtype="float32", seed: int = 0):
    """A randomly initialised model for ``cfg`` (any registered family's config)."""
    return get_family(cfg.model_type).model_cls(cfg, dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed))


__all__ = [
    "FAMILIES",
    "CheckpointError",
    "ConfigError",
    "ImageTokenMismatchError",
    "KVCache",
    "create",
    "get_family",
    "load_hf",
    "read_config",
    "save_hf",
    "tiny_config",
]
