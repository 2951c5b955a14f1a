"""Small benchmark files in VLMEvalKit's TSV layout (base64 PNG images), for the eval tests."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def _image_b64(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (56, 56, 3), np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, format="PNG")
    return base64.b64encode(data.getvalue()).decode()


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> str:
    path.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n")
    return str(path)


def write_mmstar(path: Path, rows: int) -> str:
    """An MMStar-shaped TSV of ``rows`` four-option questions; returns its path."""
    return _tsv(path, ["index", "question", "A", "B", "C", "D", "answer", "category", "image"],
                [[str(i), f"How many shapes are there? ({i})", "1", "2", "3", "4", "ABCD"[i % 4], "coarse perception",
                  _image_b64(i)] for i in range(rows)])  # fmt: skip


def write_pope(path: Path, rows: int) -> str:
    """A POPE-shaped TSV of ``rows`` yes/no questions over two splits; returns its path."""
    return _tsv(path, ["index", "question", "answer", "category", "image"],
                [[str(i), "Is there a cat in the image?", ["yes", "no"][i % 2], ["adversarial", "random"][i % 2],
                  _image_b64(10 + i)] for i in range(rows)])  # fmt: skip
