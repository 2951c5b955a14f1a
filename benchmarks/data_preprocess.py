"""Image preprocessing speed of our `images.qwen_preprocess` against transformers' Qwen2-VL image processor.

Both turn the same 20 random 512x512 RGB uint8 images into Qwen2.5-VL patches with the hub defaults
(`images.QWEN2_VL`: 14 px patches, 2x2 merge, CLIP mean/std; each image becomes 504x504 -> 1296 rows of 1176).
Ours processes one image per call, as the data pipeline does; transformers gets the 20 images in one call (its
best case: its torchvision backend batches same-shape images). Each backend is compared with its own HF class:
``pil`` with ``Qwen2VLImageProcessorPil`` (what ``AutoImageProcessor`` gives without torchvision) and, when
torchvision is installed, ``torchvision`` with ``Qwen2VLImageProcessor``. Outputs are checked equal first.
Reported: images/s from the median of ``--iters`` timed passes over all images after ``--warmup`` passes.

Run from the repository root (with the package installed, ``pip install -e .``, or with ``PYTHONPATH=.``)::

    python benchmarks/data_preprocess.py [--images 20] [--size 512] [--iters 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform

import numpy as np
import torch
import transformers
from harness import median_seconds

from staged_vlm_jax.data import images


def hf_processor(backend: str) -> transformers.image_processing_utils.BaseImageProcessor | None:
    """transformers' processor class for ``backend`` with the Qwen2.5-VL hub settings; None if not installed."""
    if backend == "torchvision" and importlib.util.find_spec("torchvision") is None:
        return None
    cls = transformers.Qwen2VLImageProcessor if backend == "torchvision" else transformers.Qwen2VLImageProcessorPil
    s = images.QWEN2_VL
    return cls(
        patch_size=s.patch_size,
        merge_size=s.merge_size,
        temporal_patch_size=s.temporal_patch_size,
        min_pixels=s.min_pixels,
        max_pixels=s.max_pixels,
        image_mean=s.image_mean,
        image_std=s.image_std,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{args.images} images of {args.size}x{args.size} RGB, median of {args.iters} after {args.warmup} warm-up")
    print()
    print("| backend | ours (images/s) | HF transformers (images/s) | speed-up (ours / HF) |")
    print("|---|---:|---:|---:|")
    for backend in ("pil", "torchvision"):
        processor = hf_processor(backend)

        def ours(backend: str = backend) -> list[tuple[np.ndarray, np.ndarray]]:
            return [images.qwen_preprocess(image, backend=backend) for image in batch]

        ours_rate = args.images / median_seconds(ours, args.iters, args.warmup)
        if processor is None:
            print(f"| {backend} | {ours_rate:.1f} | n/a (torchvision not installed) | - |")
            continue

        def hf(processor=processor) -> transformers.BatchFeature:
            return processor(batch, return_tensors="np", input_data_format="channels_last")

        expected = hf()
        got = ours()
        np.testing.assert_array_equal(np.concatenate([pixels for pixels, _ in got]), expected["pixel_values"])
        np.testing.assert_array_equal(np.stack([grid for _, grid in got]), expected["image_grid_thw"])
        hf_rate = args.images / median_seconds(hf, args.iters, args.warmup)
        print(f"| {backend} | {ours_rate:.1f} | {hf_rate:.1f} | {ours_rate / hf_rate:.2f}x |")


if __name__ == "__main__":
    main()
