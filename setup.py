"""Installable package for staged_vlm_jax: staged GRPO post-training of vision-language models in JAX."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="staged_vlm_jax",
    version="0.1.0",
    description="JAX/Flax NNX staged RL post-training (perception -> text reasoning -> visual reasoning) of VLMs",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["staged_vlm_jax", "staged_vlm_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.0,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "etils[epath]>=1.7,<2",  # local and gs:// paths (staged_vlm_jax/paths.py), as Orbax uses
        "fsspec>=2024.6",  # epath's backend for gs://; the tests' GCS stand-in
        "grain>=0.2.18,<0.3",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1,<3",  # ml-collections' command-line config overrides
        "tensorboard>=2.16,<3",  # event files only (no TensorFlow)
        "matplotlib>=3.8,<4",  # staged-vlm plot
        "transformers>=5.0,<6",
        "safetensors>=0.6,<1",
        "tokenizers>=0.22,<1",
        "numpy>=2.0,<3",
        "pillow>=10,<14",
        "array-record>=0.8.6,<0.9",
        # Converted data sets are TFDS data sets (data/array_record.py), written and read without TensorFlow.
        "tensorflow-datasets>=4.9.10,<4.10",
        "importlib-resources>=6,<8",  # imported by tfds' DatasetBuilder, declared by tfds only for Python < 3.9
        "pyarrow>=20,<27",  # parquet data sets (EasyR1 / HF schema)
        # Rewards: mathruler declares none of its own dependencies (sympy, pylatexenc, tqdm).
        "mathruler>=0.1.0,<0.2",
        "math-verify>=0.9.0,<0.10",
        "sympy>=1.13,<2",
        "pylatexenc>=2.10,<3",
        "tqdm>=4.66,<5",
        # staged-vlm serve: Starlette (ASGI routing, streaming responses) on uvicorn; see serve.py for why not FastAPI.
        "starlette>=1.0,<2",
        "uvicorn>=0.34,<1",
    ],
    extras_require={
        # torch is the parity oracle only; 2.13.0 exactly (a looser pin pulls a multi-GB CUDA build).
        # openai: the official client the server is tested against (tests/test_serve.py, benchmarks/serve.py).
        "test": ["pytest>=8,<10", "ruff>=0.15,<1", "torch==2.13.0", "openai>=3,<4"],
        "gpu": ["jax[cuda12]>=0.10.0,<0.11"],
        "tpu": ["jax[tpu]>=0.10.0,<0.11"],
        # gs:// workdirs and data: gcsfs for etils.epath / TensorBoard, the GCS client Orbax calls.
        "gcs": ["gcsfs>=2024.6", "google-cloud-storage>=2.14,<4"],
    },
    entry_points={"console_scripts": ["staged-vlm=staged_vlm_jax.cli:main"]},
)
