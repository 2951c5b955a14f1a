"""Data sets, preprocessing and pipelines."""

# Registers the reader of converted TFDS/array_record directories with `sources.read_rows`.
from staged_vlm_jax.data import array_record as _array_record  # noqa: F401
