"""Data sets, preprocessing and pipelines."""
