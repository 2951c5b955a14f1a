"""Qwen-VL and InternVL image preprocessing, bit-compatible with transformers' image processors.

The vision towers of Qwen2-VL, Qwen2.5-VL and Qwen3-VL take an image as a flat list of patches plus its patch
grid. `qwen_preprocess` turns one image into exactly the ``pixel_values`` rows and ``image_grid_thw`` that
transformers' processor produces, using only NumPy and Pillow, so the data pipeline needs no torch and a model
trained here sees the same inputs as the HF / vLLM stack it is evaluated or served with. InternVL's processor
(``GotOcr2ImageProcessor``) cuts an image into 448-px tiles instead; `internvl_preprocess` gives the same tiles with
the same resize kernels and normalisation below, each tile's patches flattened into rows as Qwen's are, so an image
is N frames of one tile's grid.

Which HF processor is matched. In transformers 5.24, ``AutoImageProcessor`` / ``AutoProcessor`` map
``qwen2_vl``, ``qwen2_5_vl`` and ``qwen3_vl`` to one of two classes with the same settings, picked by backend:
``Qwen2VLImageProcessor`` (torchvision backend) when torchvision is installed, ``Qwen2VLImageProcessorPil``
otherwise; without torchvision even ``from transformers import Qwen2VLImageProcessor`` gives the Pil class.
(Qwen3-VL has no image processor of its own; its hub config names ``Qwen2VLImageProcessorFast``, now the
torchvision class.) Both resize with bicubic filtering (``resample=3``) but with different kernels, which
disagree by one or two grey levels on under 1% of pixels (up to ~0.03 after normalisation), so each is
reproduced:

* ``backend="pil"``: Pillow's ``Image.resize(BICUBIC)`` (called directly); then, as transformers' numpy path,
  ``uint8 -> float64 * (1/255) -> float32`` and ``(x - mean) / std`` in float32. This is what
  ``AutoImageProcessor`` gives without torchvision, as in this project's environment and CI.
* ``backend="torchvision"``: torch's CPU uint8 antialiased bicubic kernel (what ``torchvision.transforms.v2``
  runs for uint8 images on CPU), re-implemented here in NumPy integer arithmetic; then the fused
  ``(x - 255 mean) / (255 std)`` in float32. This is what ``AutoImageProcessor`` gives with torchvision (on
  CPU tensors, its default; on CUDA torchvision resizes in float instead). About 3x slower than Pillow's resize.
* ``backend="auto"`` (default) picks as ``AutoImageProcessor`` does: torchvision when it is installed.
  Pass ``"pil"`` or ``"torchvision"`` to pin the result regardless of what is installed.

Both convert to RGB as transformers does: PIL images with transparency are composited onto white with Pillow
(``alpha_composite``) and others go through ``convert("RGB")``; grey [H, W] / [H, W, 1] arrays are repeated to
three channels and RGBA arrays blended onto white with each backend's own arithmetic.

Normalisation is a lookup in a 3 x 256 table (the resized image is uint8, so each channel has 256 possible
outputs) holding exactly the float32 values that HF's arithmetic gives: bit-identical and cheaper than the
arithmetic itself.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import typing
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from PIL import Image

Backend = Literal["auto", "pil", "torchvision"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200
RESCALE_FACTOR = 1 / 255  # transformers' default rescale_factor, 0.00392156862745098


@dataclasses.dataclass(frozen=True)
class QwenImageSettings:
    """One model family's image-processor settings, as in its hub ``preprocessor_config.json``."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def preprocess(
        self, image: np.ndarray | Image.Image, *, backend: Backend = "auto"
    ) -> tuple[np.ndarray, np.ndarray]:
        """`qwen_preprocess` with these settings."""
        return qwen_preprocess(image, **dataclasses.asdict(self), backend=backend)

    def grid(self, height: int, width: int) -> np.ndarray:
        """The ``grid_thw`` `preprocess` gives a ``height`` x ``width`` image, from the size alone."""
        factor = self.patch_size * self.merge_size
        height, width = smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
        return np.array([1, height // self.patch_size, width // self.patch_size], dtype=np.int64)

    def with_pixel_limits(self, min_pixels: int, max_pixels: int) -> QwenImageSettings:
        return dataclasses.replace(self, min_pixels=min_pixels, max_pixels=max_pixels)

    def largest_patches(self, max_pixels: int) -> int:
        """About the most patches an image of ``max_pixels`` pixels becomes (a bound for sizing programs)."""
        return max_pixels // self.patch_size**2


# Qwen2-VL / Qwen2.5-VL hub configs: min_pixels 3136, max_pixels 12845056 (the class defaults in transformers
# cap at 28*28*1280 instead; the released checkpoints override that).
QWEN2_VL = QwenImageSettings(
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    min_pixels=56 * 56,
    max_pixels=28 * 28 * 16384,
    image_mean=OPENAI_CLIP_MEAN,
    image_std=OPENAI_CLIP_STD,
)
# Qwen3-VL hub configs: size = {"shortest_edge": 65536, "longest_edge": 16777216}.
QWEN3_VL = QwenImageSettings(
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    min_pixels=256 * 256,
    max_pixels=4096 * 4096,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InternVLImageSettings:
    """InternVL's image processor, as the InternVL3 / InternVL3.5 HF checkpoints configure it: transformers'
    ``GotOcr2ImageProcessor`` (``GotOcr2ImageProcessorPil`` without torchvision) with ``crop_to_patches`` (which
    ``InternVLProcessor`` turns on), tiles of 448 px, 1 to 12 of them plus a thumbnail, ImageNet mean / std, bicubic.

    An image of N tiles becomes N frames of a (tile / patch)² patch grid, ``grid_thw`` (N, 32, 32), with the patches
    of each tile flattened as the Qwen processors flatten theirs (`internvl_preprocess`): to the model's tower a tile is
    one frame, and to batching and the data screen it is an image of 1024 patches like any other.
    """

    tile_size: int = 448
    patch_size: int = 14
    merge_size: int = 2
    min_tiles: int = 1
    max_tiles: int = 12
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def preprocess(
        self, image: np.ndarray | Image.Image, *, backend: Backend = "auto"
    ) -> tuple[np.ndarray, np.ndarray]:
        """`internvl_preprocess` with these settings."""
        return internvl_preprocess(image, **dataclasses.asdict(self), backend=backend)

    def grid(self, height: int, width: int) -> np.ndarray:
        """The ``grid_thw`` `preprocess` gives a ``height`` x ``width`` image, from the size alone: the tiles of its
        canvas (`tile_canvas`), plus the thumbnail when there are several."""
        columns, rows = tile_canvas(height, width, self.tile_size, self.min_tiles, self.max_tiles)
        side = self.tile_size // self.patch_size
        return np.array([columns * rows + (columns * rows > 1), side, side], dtype=np.int64)

    def largest_patches(self, max_pixels: int) -> int:
        """The most patches any image becomes, pixels regardless: the most tiles, and the thumbnail."""
        return (self.max_tiles + (self.max_tiles > 1)) * (self.tile_size // self.patch_size) ** 2

    def with_pixel_limits(self, min_pixels: int, max_pixels: int) -> InternVLImageSettings:
        raise ValueError(
            "InternVL's processor tiles an image by its aspect ratio and has no pixel limits to set; use "
            "data.image_resize 'easyr1' (the paper's pre-resize into [min_pixels, max_pixels])"
        )


INTERNVL = InternVLImageSettings()
ImageSettings = QwenImageSettings | InternVLImageSettings
# By HF ``model_type``.
SETTINGS: dict[str, ImageSettings] = {
    "qwen2_vl": QWEN2_VL,
    "qwen2_5_vl": QWEN2_VL,
    "qwen3_vl": QWEN3_VL,
    "qwen3_vl_moe": QWEN3_VL,
    "internvl": INTERNVL,
}


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = QWEN2_VL.min_pixels,
    max_pixels: int = QWEN2_VL.max_pixels,
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area in [min_pixels, max_pixels], aspect ratio kept.

    transformers' ``smart_resize``, step for step (Python's round-half-to-even included): round each side to
    the nearest multiple of ``factor``; if the area exceeds ``max_pixels`` scale both sides down by
    ``sqrt(h w / max_pixels)`` and floor (never below ``factor``); if it is under ``min_pixels`` scale up by
    ``sqrt(min_pixels / (h w))`` and ceil. Images smaller than ``factor`` are thus enlarged, not rejected.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image must have a positive height and width, got {height}x{width}")
    aspect_ratio = max(height, width) / min(height, width)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {aspect_ratio} "
            f"(image {height}x{width})"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@functools.cache
def _torchvision_installed() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def resolve_backend(backend: Backend = "auto") -> Literal["pil", "torchvision"]:
    """The concrete backend: ``"auto"`` becomes what ``AutoImageProcessor`` would use here."""
    if backend == "auto":
        return "torchvision" if _torchvision_installed() else "pil"
    if backend not in ("pil", "torchvision"):
        raise ValueError(f"backend must be 'auto', 'pil' or 'torchvision', got {backend!r}")
    return backend


def _blend_on_white_pil_backend(rgba: np.ndarray) -> np.ndarray:
    # transformers.image_transforms.convert_to_rgb: float64 blend, rounded half to even.
    alpha = rgba[..., 3:4] / 255
    return np.round(alpha * rgba[..., :3] + (1 - alpha) * 255).astype(np.uint8)


def _blend_on_white_torchvision_backend(rgba: np.ndarray) -> np.ndarray:
    # TorchvisionBackend.convert_to_rgb: float32 blend, back to uint8 by tvF.to_dtype (x * 255.999, truncated).
    x = rgba.astype(np.float32) * np.float32(1 / 255)
    blended = x[..., :3] * x[..., 3:] + (np.float32(1) - x[..., 3:])
    return (blended * np.float32(255 + 1 - 1e-3)).astype(np.uint8)


def to_rgb(image: np.ndarray | Image.Image, backend: Backend = "auto") -> np.ndarray:
    """uint8 [H, W, 3] from a PIL image of any mode, or a uint8 array [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]."""
    if isinstance(image, Image.Image):
        # Transparent pixels become white (not whatever colour they hide), as in transformers.
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image.convert("RGBA"))
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image array must be uint8 (0-255), got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image array must be [H, W] or [H, W, C] with C in (1, 3, 4) (channels last), got shape {array.shape}"
        )
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        return _BLEND_ON_WHITE[resolve_backend(backend)](array)
    return array


def _resize_pil(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    # transformers.image_transforms.resize: Image.fromarray(...).resize((w, h), BICUBIC), reducing_gap=None.
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def _torch_bicubic_aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """First source index [out], int16-valued weights [out, taps] and their fixed-point precision (bits).

    torch's ``_compute_index_ranges_int16_weights`` with the antialiased Keys cubic (a = -0.5): float64
    weights over a window widened by the downscale factor, normalised to sum 1, then rounded to integers with
    the most bits that keep the largest weight (times 2) under 2**15.
    """
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    taps = math.ceil(support) * 2 + 1
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C++ casts truncate toward zero
    count = np.clip(np.minimum((center + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
    offsets = np.arange(taps)
    x = np.abs(((offsets + first[:, None]) - center[:, None] + 0.5) * inv_scale)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    weights = np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
    weights[offsets >= count[:, None]] = 0.0
    total = np.zeros(out_size)
    for k in range(taps):  # sequential, as the C++ loop: pairwise summation could differ in the last bit
        total += weights[:, k]
    normalized = total[:, None] != 0.0  # an all-zero window stays unnormalised and counts 0 toward the max
    weights = np.divide(weights, total[:, None], out=weights, where=normalized)
    largest = np.where(normalized, weights, 0.0).max()
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    int_weights = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)
    return first, int_weights, precision


def _resample_rows_torch_uint8(image: np.ndarray, out_size: int) -> np.ndarray:
    """One separable pass of torch's uint8 bicubic along axis 0: integer multiply-add, +half, shift, clamp."""
    in_size = image.shape[0]
    first, weights, precision = _torch_bicubic_aa_weights(in_size, out_size)
    # Rows of a C-contiguous [in, rest] array, so every gather below copies whole contiguous rows.
    source = np.ascontiguousarray(image).reshape(in_size, -1).astype(np.int32)
    acc = np.full((out_size, source.shape[1]), 1 << (precision - 1), dtype=np.int32)
    term = np.empty_like(acc)  # reused: fresh multi-MB temporaries per tap cost more in page faults than the math
    for k in range(weights.shape[1]):
        # Past each window the weight is 0, so a clipped index only has to be valid (mode="clip" also avoids
        # the buffered copy that the default mode makes of ``out``).
        np.take(source, first + k, axis=0, out=term, mode="clip")
        np.multiply(term, weights[:, k, None], out=term)
        acc += term
    acc >>= precision
    return np.clip(acc, 0, 255, out=acc).astype(np.uint8).reshape(out_size, *image.shape[1:])


def _resize_torchvision(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    # tvF.resize on a uint8 CPU tensor calls F.interpolate(mode="bicubic", antialias=True) natively in uint8:
    # horizontal pass first, then vertical, each rounded to uint8 and skipped when that side is unchanged.
    if width != rgb.shape[1]:
        rgb = _resample_rows_torch_uint8(rgb.transpose(1, 0, 2), width).transpose(1, 0, 2)
    if height != rgb.shape[0]:
        rgb = _resample_rows_torch_uint8(rgb, height)
    return np.ascontiguousarray(rgb)


def _normalization_table_pil(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    # PilBackend: rescale in float64 then cast to float32; normalize in float32 with float32 mean / std.
    levels = (np.arange(256, dtype=np.float64) * RESCALE_FACTOR).astype(np.float32)
    return (levels[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]


def _normalization_table_torchvision(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    # TorchvisionBackend folds the rescale into mean and std (float32 tensors times 1 / rescale_factor, the
    # scalar taken as float32), then normalises the float32 pixels: (x - mean) / std.
    scale = np.float32(1 / RESCALE_FACTOR)
    levels = np.arange(256, dtype=np.float32)
    mean255 = np.asarray(mean, np.float32) * scale
    std255 = np.asarray(std, np.float32) * scale
    return (levels[None, :] - mean255[:, None]) / std255[:, None]


_BLEND_ON_WHITE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pil": _blend_on_white_pil_backend,
    "torchvision": _blend_on_white_torchvision_backend,
}
# The resize kernel and the normalization table of each HF processor backend (tests compare them with torch's).
RESIZE: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "pil": _resize_pil,
    "torchvision": _resize_torchvision,
}
NORMALIZATION_TABLE: dict[str, Callable[[Sequence[float], Sequence[float]], np.ndarray]] = {
    "pil": _normalization_table_pil,
    "torchvision": _normalization_table_torchvision,
}


def easyr1_resize(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """EasyR1's pre-resize (``ImageProcessMixin.process_image``), which the paper's images went through before the
    HF processor: an image over ``max_pixels`` shrinks, then one under ``min_pixels`` grows, each by the factor
    sqrt(bound / area) with the sides truncated to integers, in the image's own mode with Pillow's default filter
    (bicubic; nearest for palette and 1-bit images). The processor's `smart_resize` then rounds the result to
    multiples of 28 within its own (hub) limits: a 200x300 (height x width) image becomes 418x627, then 420x616, where
    resizing straight into [512², 2048²] gives 420x644. Raises ValueError when a side would become zero."""
    for size in _easyr1_sizes(image.width, image.height, min_pixels, max_pixels):
        image = image.resize(size)
    return image


def easyr1_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (width, height) `easyr1_resize` gives an image of this size, computed without pixels."""
    sizes = _easyr1_sizes(width, height, min_pixels, max_pixels)
    return sizes[-1] if sizes else (width, height)


def _easyr1_sizes(width: int, height: int, min_pixels: int, max_pixels: int) -> list[tuple[int, int]]:
    """The sizes `easyr1_resize` resizes to, in order (none, one or two)."""
    sizes = []
    if width * height > max_pixels:
        sizes.append(_scaled_size(width, height, max_pixels))
        width, height = sizes[-1]
    if width * height < min_pixels:
        sizes.append(_scaled_size(width, height, min_pixels))
    return sizes


def _scaled_size(width: int, height: int, pixels: int) -> tuple[int, int]:
    factor = math.sqrt(pixels / (width * height))
    size = int(width * factor), int(height * factor)
    if not all(size):
        raise ValueError(f"scaling {width}x{height} into {pixels} pixels collapses a side to zero ({size})")
    return size


@dataclasses.dataclass(frozen=True)
class ImageInputs:
    """How a row's images become model inputs: EasyR1's pre-resize into ``pre_resize`` (min, max) pixels when set
    (`easyr1_resize`, applied as the file is decoded), then the processor ``settings`` with ``backend``'s kernel."""

    settings: ImageSettings = QWEN2_VL
    backend: Backend = "auto"
    pre_resize: tuple[int, int] | None = None

    def preprocess(self, image: np.ndarray | Image.Image) -> tuple[np.ndarray, np.ndarray]:
        return self.settings.preprocess(image, backend=self.backend)

    def grid(self, width: int, height: int) -> np.ndarray:
        """The ``grid_thw`` that `preprocess` gives a ``width`` x ``height`` image (after the pre-resize), from the
        size alone: what a screen of the data needs to know every prompt's length without decoding its images.
        Raises ValueError where `preprocess` would."""
        if self.pre_resize is not None:
            width, height = easyr1_size(width, height, *self.pre_resize)
        return self.settings.grid(height, width)


# ``data.image_resize``: where a run's [min_pixels, max_pixels] apply. "easyr1" (the paper's path): EasyR1's
# pre-resize into them, then the processor with its checkpoint's own limits; "processor": the processor's
# `smart_resize` straight into them (what a plain HF pipeline with those limits does).
IMAGE_RESIZES: dict[str, Callable[[ImageSettings, int, int, Backend], ImageInputs]] = {
    "easyr1": lambda settings, low, high, backend: ImageInputs(settings, backend, (low, high)),
    "processor": lambda settings, low, high, backend: ImageInputs(settings.with_pixel_limits(low, high), backend),
}
BACKENDS: tuple[str, ...] = typing.get_args(Backend)


def image_inputs(model_type: str, resize: str, min_pixels: int, max_pixels: int, backend: Backend) -> ImageInputs:
    """The ``model_type``'s processor (`SETTINGS`) with [min_pixels, max_pixels] applied where ``resize`` says
    (`IMAGE_RESIZES`) and ``backend``'s resize kernel: how a run, an evaluation or a data conversion sees images."""
    return IMAGE_RESIZES[resize](SETTINGS[model_type], min_pixels, max_pixels, backend)


def _check_settings(
    patch_size: int,
    merge_size: int,
    temporal_patch_size: int,
    min_pixels: int,
    max_pixels: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> None:
    sizes = {
        "patch_size": patch_size,
        "merge_size": merge_size,
        "temporal_patch_size": temporal_patch_size,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, values in (("image_mean", image_mean), ("image_std", image_std)):
        if len(values) != 3:
            raise ValueError(f"{name} must have 3 values (R, G, B), got {values!r}")
    if any(s == 0 for s in image_std):
        raise ValueError(f"image_std must be non-zero, got {image_std!r}")


def qwen_preprocess(
    image: np.ndarray | Image.Image,
    patch_size: int = QWEN2_VL.patch_size,
    merge_size: int = QWEN2_VL.merge_size,
    temporal_patch_size: int = QWEN2_VL.temporal_patch_size,
    min_pixels: int = QWEN2_VL.min_pixels,
    max_pixels: int = QWEN2_VL.max_pixels,
    image_mean: Sequence[float] = QWEN2_VL.image_mean,
    image_std: Sequence[float] = QWEN2_VL.image_std,
    *,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """One image -> (pixel_values float32 [t*h*w, 3*T*P*P], grid_thw int64 [3]), as transformers computes them.

    ``image`` is a uint8 array (channels last) or a PIL image; see `to_rgb`. Steps: RGB conversion;
    `smart_resize` to multiples of ``factor = patch_size * merge_size``; bicubic resize (kernel per
    ``backend``, see the module docstring); ``(x / 255 - mean) / std``; patchify. A still image has ``t = 1``
    and is repeated ``temporal_patch_size`` times inside each row. Rows are in HF's merge-block-major order:
    ``merge x merge`` blocks row-major over the image, the patches of a block row-major, and each row flattens
    [channel, temporal, patch row, patch column]. The defaults are Qwen2.5-VL's (`QWEN2_VL`); use
    ``QWEN3_VL.preprocess(image)`` for Qwen3-VL.

    Raises ValueError for a non-uint8 or wrongly shaped array, an empty image, an aspect ratio over 200 (as
    transformers does, with its message) and invalid settings.
    """
    _check_settings(patch_size, merge_size, temporal_patch_size, min_pixels, max_pixels, image_mean, image_std)
    backend = resolve_backend(backend)
    rgb = to_rgb(image, backend)
    height, width = smart_resize(rgb.shape[0], rgb.shape[1], patch_size * merge_size, min_pixels, max_pixels)
    normalized = _normalize(RESIZE[backend](rgb, height, width), backend, image_mean, image_std)
    pixel_values = _patchify(normalized, patch_size, merge_size, temporal_patch_size)
    return pixel_values, np.array([1, height // patch_size, width // patch_size], dtype=np.int64)


def _normalize(resized: np.ndarray, backend: str, image_mean: Sequence[float], image_std: Sequence[float]):
    """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std`` by ``backend``'s arithmetic (a table lookup)."""
    table = NORMALIZATION_TABLE[backend](image_mean, image_std)
    normalized = np.empty(resized.shape, np.float32)
    for channel in range(3):
        normalized[..., channel] = table[channel][resized[..., channel]]
    return normalized


def _patchify(normalized: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    """float32 [..., H, W, 3] -> rows [..., (H/P)·(W/P), 3·T·P·P] in HF's merge-block-major order (see
    `qwen_preprocess`), each value written ``temporal_patch_size`` times."""
    *lead, height, width, _ = normalized.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = normalized.reshape(
        *lead, grid_h // merge_size, merge_size, patch_size, grid_w // merge_size, merge_size, patch_size, 3
    )
    axes = [len(lead) + axis for axis in (0, 3, 1, 4, 6, 2, 5)]  # [h/m, w/m, m, m, C, P, P]
    patches = patches.transpose(*range(len(lead)), *axes)
    # The temporal copies are a broadcast; the final reshape writes each value temporal_patch_size times.
    patches = np.broadcast_to(patches[..., None, :, :], (*patches.shape[:-2], temporal_patch_size, *patches.shape[-2:]))
    return patches.reshape(*lead, grid_h * grid_w, 3 * temporal_patch_size * patch_size**2)


@functools.cache
def tile_canvas(height: int, width: int, tile_size: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of tiles for a ``height`` x ``width`` image: transformers' ``get_optimal_tiled_canvas``. The
    arrangements of ``min_tiles`` to ``max_tiles`` tiles are tried fewest tiles first; the closest aspect ratio wins,
    and on a tie the one with more tiles, while the image's area exceeds half of theirs."""
    if height < 1 or width < 1:
        raise ValueError(f"image must have a positive height and width, got {height}x{width}")
    grids = [(columns, rows) for columns in range(1, max_tiles + 1) for rows in range(1, max_tiles + 1)
             if min_tiles <= columns * rows <= max_tiles]  # fmt: skip
    aspect_ratio, area = width / height, width * height
    best, best_difference = (1, 1), float("inf")
    for columns, rows in sorted(grids, key=lambda grid: grid[0] * grid[1]):
        difference = abs(aspect_ratio - columns / rows)
        if difference < best_difference:
            best, best_difference = (columns, rows), difference
        elif difference == best_difference and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


def internvl_preprocess(
    image: np.ndarray | Image.Image,
    tile_size: int = INTERNVL.tile_size,
    patch_size: int = INTERNVL.patch_size,
    merge_size: int = INTERNVL.merge_size,
    min_tiles: int = INTERNVL.min_tiles,
    max_tiles: int = INTERNVL.max_tiles,
    image_mean: Sequence[float] = INTERNVL.image_mean,
    image_std: Sequence[float] = INTERNVL.image_std,
    *,
    backend: Backend = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """One image -> (pixel_values float32 [N·(tile/patch)², 3·P·P], grid_thw int64 (N, tile/patch, tile/patch)), the
    N tiles of transformers' InternVL processor (``GotOcr2ImageProcessor``'s ``crop_image_to_patches``) flattened.

    RGB conversion as `to_rgb`; the image resized (bicubic, ``backend``'s kernel as in `qwen_preprocess`) to a canvas
    of `tile_canvas` tiles and cut into them row by row; when there are several, a thumbnail (the whole image resized
    to one tile) follows; then ``(x / 255 - mean) / std`` and each tile's patches in merge-block-major order (a tile
    is a frame, ``temporal_patch_size`` 1). Raises ValueError for a non-uint8 or wrongly shaped array or an empty
    image.
    """
    backend = resolve_backend(backend)
    rgb = to_rgb(image, backend)
    columns, rows = tile_canvas(rgb.shape[0], rgb.shape[1], tile_size, min_tiles, max_tiles)
    canvas = RESIZE[backend](rgb, rows * tile_size, columns * tile_size)
    tiles = canvas.reshape(rows, tile_size, columns, tile_size, 3).transpose(0, 2, 1, 3, 4)
    tiles = tiles.reshape(rows * columns, tile_size, tile_size, 3)
    if rows * columns > 1:
        tiles = np.concatenate([tiles, RESIZE[backend](rgb, tile_size, tile_size)[None]])
    pixel_values = _patchify(_normalize(tiles, backend, image_mean, image_std), patch_size, merge_size, 1)
    side = tile_size // patch_size
    return pixel_values.reshape(-1, pixel_values.shape[-1]), np.array([len(tiles), side, side], dtype=np.int64)
