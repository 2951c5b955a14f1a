"""Prompt batches and the fixed shapes they are padded to: the layer between data files and compiled programs.

XLA compiles one program per input shape, so every batch that reaches the rollout engine or the learner is padded
to a small set of bucket sizes (DESIGN Principle 4): prompt lengths to ``data.prompt_buckets``, rows to the
engine's batch buckets, image patches to its patch buckets. This module is the one place that pads, and it sits
below both ``data/`` pipelines and ``rl/`` (it imports nothing from the package):

- `PromptBatch`: tokenized prompts of one step, left-padded (as Hugging Face pads for generation), with their
  images in the processor's packed layout and the ground truths;
- `bucket`, `pad_axis`, `left_pad`: sizes and padding;
- `image_token_counts`: the one formula for how many LLM tokens an image takes, t·h·w / merge²;
- the per-row image layout (`images_per_row`, `per_row_images`, `to_per_row`): packed images re-cut so that each
  row holds its own images, zero-padded to a patch bucket — each row's vision attention then stays within its own
  images and the images shard with the batch;
- `model_inputs`: a `PromptBatch` in the shapes every step of a stage shares.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# Image slots per row in the per-row layout (a row with 3 images gets 4 slots; empty slots are (0, 0, 0) grids).
SLOT_BUCKETS = (1, 2, 4, 8)


class ImageTokenMismatchError(ValueError):
    """Image placeholder tokens and image grids / patches disagree (they would misalign vision features)."""


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Tokenized prompts of one step, left-padded, images in HF's packed layout.

    input_ids / attention_mask [B, P]; pixel_values [N, ·] and image_grid_thw [I, 3] (or None for text-only
    batches); ground_truths [B]. Which images belong to which prompt follows from the placeholders in order
    (`images_per_row`).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    ground_truths: Sequence[str]
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None


def bucket(size: int, buckets: Sequence[int], multiple_of: int = 1) -> int:
    """Smallest bucket ≥ size (a multiple of the largest beyond it), rounded up to ``multiple_of``."""
    i = bisect.bisect_left(buckets, size)
    chosen = buckets[i] if i < len(buckets) else buckets[-1] * math.ceil(size / buckets[-1])
    return multiple_of * math.ceil(chosen / multiple_of)


def pad_axis(x: np.ndarray, axis: int, size: int, *, left: bool = False, value=0) -> np.ndarray:
    """``x`` padded with ``value`` to ``size`` along ``axis`` (on the left for left-padded prompts)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (size - x.shape[axis], 0) if left else (0, size - x.shape[axis])
    return np.pad(x, pad, constant_values=value)


def left_pad(rows: Sequence[Sequence[int]], width: int, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows -> left-padded ids and attention mask, both int32 [len(rows), width]."""
    input_ids = np.full((len(rows), width), pad_token_id, np.int32)
    attention_mask = np.zeros((len(rows), width), np.int32)
    for row, ids in enumerate(rows):
        if len(ids):
            input_ids[row, width - len(ids) :] = ids
            attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def image_token_counts(image_grid_thw, merge_size: int):
    """LLM tokens of each image, t·h·w / merge² (the patch merger's output rows), over the last grid axis:
    [..., 3] -> [...]. Elementwise only, so it serves numpy on the host and jax arrays under tracing alike."""
    grid = image_grid_thw
    return grid[..., 0] * grid[..., 1] * grid[..., 2] // (merge_size * merge_size)


def images_per_row(input_ids, image_grid_thw, image_token_id: int, merge_size: int) -> list[int]:
    """How many of the packed images (in order) each row's placeholders consume; raises if they do not partition."""
    tokens_per_image = image_token_counts(np.asarray(image_grid_thw).reshape(-1, 3), merge_size)
    per_row, image = [], 0
    for row, wanted in enumerate(np.sum(np.asarray(input_ids) == image_token_id, axis=1)):
        start, taken = image, 0
        while taken < wanted and image < len(tokens_per_image):
            taken += int(tokens_per_image[image])
            image += 1
        if taken != wanted:
            raise ImageTokenMismatchError(
                f"row {row}: {int(wanted)} image placeholder tokens do not match whole images of image_grid_thw "
                f"(images {start}.. give {taken} tokens)"
            )
        per_row.append(image - start)
    if image != len(tokens_per_image):
        raise ImageTokenMismatchError(
            f"{len(tokens_per_image) - image} image(s) of image_grid_thw have no placeholders"
        )
    return per_row


def per_row_images(
    pixel_values: np.ndarray,
    image_grid_thw: np.ndarray,
    images_per_row: list[int],
    patches_per_row: int | None = None,
    slots_per_row: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Packed images (HF layout) -> the per-row layout: [B, patches_per_row, ·] zero-padded patches and
    [B, slots_per_row, 3] grids with empty slots (0, 0, 0). Defaults are the batch's maxima; pass bucket sizes to
    fix the shapes."""
    grid = np.asarray(image_grid_thw, np.int32).reshape(-1, 3)
    if sum(images_per_row) != len(grid):
        raise ValueError(
            f"images_per_row {images_per_row} sums to {sum(images_per_row)}, but there are {len(grid)} grids"
        )
    sizes = np.prod(grid, axis=1)
    image_end = np.cumsum(images_per_row)
    patch_end = np.concatenate([[0], np.cumsum(sizes)])[image_end]
    patch_start = np.concatenate([[0], patch_end[:-1]])
    patches_per_row = patches_per_row or int(max(patch_end - patch_start, default=0))
    slots_per_row = slots_per_row or max(images_per_row, default=0)
    if max(patch_end - patch_start, default=0) > patches_per_row or max(images_per_row, default=0) > slots_per_row:
        raise ValueError(f"a row needs more than {patches_per_row} patches or {slots_per_row} image slots")
    pixels = np.zeros((len(images_per_row), patches_per_row, pixel_values.shape[-1]), pixel_values.dtype)
    grids = np.zeros((len(images_per_row), slots_per_row, 3), np.int32)
    for row, (start, end, count) in enumerate(zip(patch_start, patch_end, images_per_row, strict=True)):
        pixels[row, : end - start] = pixel_values[start:end]
        grids[row, :count] = grid[image_end[row] - count : image_end[row]]
    return pixels, grids


def to_per_row(
    input_ids: np.ndarray,
    pixel_values: np.ndarray,
    image_grid_thw: np.ndarray,
    rows: int,
    *,
    image_token_id: int,
    merge_size: int,
    patch_buckets: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``input_ids``'s rows -> the per-row layout padded to the patch / slot buckets and to ``rows`` rows
    (batch-bucket padding rows get no images). Already per-row images ([B, N, ·]) are only re-padded."""
    if pixel_values.ndim == 2:
        per_row = images_per_row(input_ids, image_grid_thw, image_token_id, merge_size)
        sizes = np.split(np.prod(image_grid_thw.reshape(-1, 3), axis=1), np.cumsum(per_row)[:-1])
        patches = bucket(max(int(s.sum()) for s in sizes), patch_buckets)
        slots = bucket(max(per_row), SLOT_BUCKETS)
        pixel_values, image_grid_thw = per_row_images(pixel_values, image_grid_thw, per_row, patches, slots)
    else:
        pixel_values = pad_axis(pixel_values, 1, bucket(pixel_values.shape[1], patch_buckets))
    return pad_axis(pixel_values, 0, rows), pad_axis(np.asarray(image_grid_thw, np.int32), 0, rows)


def model_inputs(
    prompts: PromptBatch,
    *,
    prompt_buckets: Sequence[int],
    patch_buckets: Sequence[int],
    image_token_id: int,
    merge_size: int,
    pad_token_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """input_ids, attention_mask, pixel_values, image_grid_thw of ``prompts`` in the shapes every step of a stage
    shares: prompts left-padded to a prompt bucket, images in the per-row layout padded to a patch bucket (None
    without images)."""
    width = bucket(prompts.input_ids.shape[1], prompt_buckets)
    ids = pad_axis(np.asarray(prompts.input_ids, np.int32), 1, width, left=True, value=pad_token_id)
    mask = pad_axis(np.asarray(prompts.attention_mask, np.int32), 1, width, left=True)
    if prompts.pixel_values is None:
        return ids, mask, None, None
    pixels, grids = to_per_row(
        ids, np.asarray(prompts.pixel_values), np.asarray(prompts.image_grid_thw), ids.shape[0],
        image_token_id=image_token_id, merge_size=merge_size, patch_buckets=patch_buckets,
    )  # fmt: skip
    return ids, mask, pixels, grids
