"""Parity of `images.qwen_preprocess` with transformers' Qwen2-VL image processor, for Qwen2.5-VL and Qwen3-VL.

The PIL backend is checked against ``Qwen2VLImageProcessorPil`` (what ``AutoImageProcessor`` gives without
torchvision, as in CI). The torchvision backend is checked against ``Qwen2VLImageProcessor`` when torchvision is
installed; without it, its resize kernel is still checked against ``torch.nn.functional.interpolate`` (the call
torchvision makes for uint8 images on CPU) and its normalisation against the same torch arithmetic.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from staged_vlm_jax.data import images
from staged_vlm_jax.data.schema import DataError, ImageRef

SETTINGS = {"qwen2_5_vl": images.QWEN2_VL, "qwen3_vl": images.QWEN3_VL}
# Hub preprocessor_config.json of Qwen2.5-VL-7B-Instruct and Qwen3-VL-8B-Instruct (trimmed to what matters).
HUB_CONFIGS = {
    "qwen2_5_vl": {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
    "qwen3_vl": {
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "size": {"longest_edge": 16777216, "shortest_edge": 65536},
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
}
# (height, width, overrides); pixel limits are in units of factor**2 so they mean the same for both families.
SIZE_CASES = {
    "28x28": (28, 28, {}),
    "32x32": (32, 32, {}),
    "odd_37x91": (37, 91, {}),
    "odd_101x67": (101, 67, {}),
    "odd_53x53": (53, 53, {}),
    "below_factor_10x13": (10, 13, {}),
    "below_factor_3x5": (3, 5, {}),
    "one_pixel": (1, 1, {}),
    "wide_30x2000": (30, 2000, {}),
    "tall_2000x30": (2000, 30, {}),
    "ratio_200_1x200": (1, 200, {}),
    "max_clamp_300x200": (300, 200, {"max_pixels": 16}),
    "max_clamp_below_factor_side_20x700": (20, 700, {"max_pixels": 4}),
    "min_clamp_40x60": (40, 60, {"min_pixels": 64}),
    "within_limits_64x48": (64, 48, {"min_pixels": 2, "max_pixels": 6}),
}
MODES = ["rgb_array", "rgba_array", "gray_array", "L", "LA", "RGBA", "P", "P_transparency", "I;16"]


def kwargs_for(settings: images.QwenImageSettings, overrides: dict | None = None) -> dict:
    kwargs = {
        "patch_size": settings.patch_size,
        "merge_size": settings.merge_size,
        "temporal_patch_size": settings.temporal_patch_size,
        "min_pixels": settings.min_pixels,
        "max_pixels": settings.max_pixels,
        "image_mean": settings.image_mean,
        "image_std": settings.image_std,
    }
    factor = settings.patch_size * settings.merge_size
    kwargs.update({name: units * factor**2 for name, units in (overrides or {}).items()})
    return kwargs


def random_image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 0 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def image_in_mode(mode: str, seed: int = 0) -> np.ndarray | Image.Image:
    rgba = random_image(23, 45, 4, seed)
    rgba[..., 3][::3] = 0  # fully transparent rows (white after compositing) next to partly transparent ones
    if mode == "rgb_array":
        return rgba[..., :3].copy()
    if mode == "rgba_array":
        return rgba
    if mode == "gray_array":
        return rgba[..., :1].copy()
    if mode == "I;16":
        return Image.fromarray(rgba[..., :2].copy().view(np.uint16)[..., 0])
    if mode.startswith("P"):
        palette = Image.fromarray(rgba[..., :3].copy()).convert("P")
        if mode == "P_transparency":
            palette.info["transparency"] = int(np.asarray(palette)[0, 0])
        return palette
    return Image.fromarray(rgba).convert(mode)


def hf_output(processor, image) -> tuple[np.ndarray, np.ndarray]:
    layout = {"input_data_format": "channels_last"} if isinstance(image, np.ndarray) else {}
    out = processor(image, return_tensors="np", **layout)
    assert out["image_grid_thw"].shape == (1, 3)
    return out["pixel_values"], out["image_grid_thw"][0]


def assert_same(ours: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray]) -> None:
    (pixels, grid), (ref_pixels, ref_grid) = ours, reference
    np.testing.assert_array_equal(grid, ref_grid)
    assert grid.dtype == np.int64 and grid.shape == (3,)
    assert pixels.dtype == np.float32 and pixels.shape == ref_pixels.shape
    np.testing.assert_allclose(pixels, ref_pixels, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def pil_processor_cls():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2VLImageProcessorPil


@pytest.fixture(scope="module")
def torchvision_processor_cls():
    pytest.importorskip("torchvision")
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2VLImageProcessor


@pytest.mark.parametrize("family", SETTINGS)
@pytest.mark.parametrize("case", SIZE_CASES)
def test_pil_backend_matches_hf(pil_processor_cls, family, case):
    height, width, overrides = SIZE_CASES[case]
    kwargs = kwargs_for(SETTINGS[family], overrides)
    image = random_image(height, width, seed=height * 7919 + width)
    reference = hf_output(pil_processor_cls(**kwargs), image)
    assert_same(images.qwen_preprocess(image, **kwargs, backend="pil"), reference)


@pytest.mark.parametrize("family", SETTINGS)
@pytest.mark.parametrize("mode", MODES)
def test_pil_backend_matches_hf_on_image_modes(pil_processor_cls, family, mode):
    kwargs = kwargs_for(SETTINGS[family])
    image = image_in_mode(mode)
    reference = hf_output(pil_processor_cls(**kwargs), image)
    assert_same(images.qwen_preprocess(image, **kwargs, backend="pil"), reference)


@pytest.mark.parametrize("family", SETTINGS)
@pytest.mark.parametrize("case", SIZE_CASES)
def test_torchvision_backend_matches_hf(torchvision_processor_cls, family, case):
    height, width, overrides = SIZE_CASES[case]
    kwargs = kwargs_for(SETTINGS[family], overrides)
    image = random_image(height, width, seed=height * 7919 + width)
    reference = hf_output(torchvision_processor_cls(**kwargs), image)
    assert_same(images.qwen_preprocess(image, **kwargs, backend="torchvision"), reference)


@pytest.mark.parametrize("mode", MODES)
def test_torchvision_backend_matches_hf_on_image_modes(torchvision_processor_cls, mode):
    kwargs = kwargs_for(images.QWEN2_VL)
    image = image_in_mode(mode)
    reference = hf_output(torchvision_processor_cls(**kwargs), image)
    assert_same(images.qwen_preprocess(image, **kwargs, backend="torchvision"), reference)


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [
        ((28, 28), (56, 56)),  # upscale
        ((37, 91), (56, 84)),  # mixed, odd
        ((100, 37), (112, 28)),  # up one axis, down the other
        ((333, 517), (336, 504)),  # near-identity, where the rounding differs most from Pillow
        ((30, 2000), (28, 1988)),
        ((1, 1), (56, 56)),
        ((3, 5), (56, 84)),
        ((640, 480), (28, 28)),  # a wide antialiasing window
        ((1500, 40), (56, 28)),
        ((64, 64), (64, 32)),  # one axis unchanged: that pass is skipped
    ],
)
def test_torchvision_resize_kernel_matches_torch(in_hw, out_hw):
    """Bit-exact with the uint8 bicubic antialiased interpolate that torchvision runs on CPU (no torchvision needed)."""
    torch = pytest.importorskip("torch")
    image = random_image(*in_hw, seed=in_hw[0] + 3 * in_hw[1])
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()  # [1, C, H, W] as the HF backend holds it
    expected = torch.nn.functional.interpolate(tensor, size=out_hw, mode="bicubic", antialias=True, align_corners=False)
    np.testing.assert_array_equal(images.RESIZE["torchvision"](image, *out_hw), expected[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("family", SETTINGS)
def test_torchvision_normalization_matches_torch_arithmetic(family):
    """TorchvisionBackend.rescale_and_normalize: mean and std times 1/rescale_factor, then (x - mean) / std."""
    torch = pytest.importorskip("torch")
    settings = SETTINGS[family]
    mean = torch.tensor(settings.image_mean) * (1.0 / images.RESCALE_FACTOR)
    std = torch.tensor(settings.image_std) * (1.0 / images.RESCALE_FACTOR)
    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).to(torch.float32)
    expected = levels.sub(mean[:, None]).div(std[:, None]).numpy()
    table = images.NORMALIZATION_TABLE["torchvision"](settings.image_mean, settings.image_std)
    np.testing.assert_array_equal(table, expected)


def test_backends_differ_where_expected():
    """The two HF resize kernels disagree on some pixels, which is why the backend matters for parity."""
    image = random_image(333, 517)
    pil, _ = images.qwen_preprocess(image, backend="pil")
    tv, _ = images.qwen_preprocess(image, backend="torchvision")
    differing = np.abs(pil - tv) > 1e-5
    assert 0 < differing.mean() < 0.02


@pytest.mark.parametrize("family", SETTINGS)
def test_auto_backend_matches_auto_image_processor(pil_processor_cls, family, tmp_path):
    """``backend="auto"`` and the presets give what AutoImageProcessor gives for the hub config, here."""
    from transformers import AutoImageProcessor

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(HUB_CONFIGS[family]))
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    expected_cls = "Qwen2VLImageProcessor" if importlib.util.find_spec("torchvision") else "Qwen2VLImageProcessorPil"
    assert type(processor).__name__ == expected_cls
    assert images.resolve_backend("auto") == ("pil" if expected_cls.endswith("Pil") else "torchvision")
    settings = SETTINGS[family]
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (
        settings.patch_size,
        settings.merge_size,
        settings.temporal_patch_size,
    )
    limits = (processor.size["shortest_edge"], processor.size["longest_edge"])
    assert limits == (settings.min_pixels, settings.max_pixels)
    assert tuple(processor.image_mean) == settings.image_mean and tuple(processor.image_std) == settings.image_std
    assert processor.resample == Image.Resampling.BICUBIC
    image = random_image(61, 83)
    assert_same(settings.preprocess(image), hf_output(processor, image))


def test_smart_resize_matches_hf(pil_processor_cls):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    for height, width in rng.integers(1, 3000, (300, 2)):
        if max(height, width) / min(height, width) > images.MAX_ASPECT_RATIO:
            continue
        for limits in ((28, 3136, 12845056), (32, 65536, 16777216), (28, 784, 28 * 28 * 64)):
            assert images.smart_resize(height, width, *limits) == smart_resize(height, width, *limits)


def test_grayscale_2d_array_is_its_single_channel_form():
    """transformers rejects [H, W] arrays; we read them as grey, like [H, W, 1]."""
    gray = random_image(40, 50, channels=0)
    pixels_2d, grid_2d = images.qwen_preprocess(gray)
    pixels_3d, grid_3d = images.qwen_preprocess(gray[:, :, None])
    np.testing.assert_array_equal(pixels_2d, pixels_3d)
    np.testing.assert_array_equal(grid_2d, grid_3d)


def test_rows_are_merge_block_major():
    """Row order: 2x2 merge blocks row-major, patches inside a block row-major; a row is [C, T, P, P]."""
    image = np.zeros((56, 84, 3), np.uint8)  # 4 x 6 patches of 14 px, no resize needed
    for row in range(4):
        for col in range(6):
            image[row * 14 : (row + 1) * 14, col * 14 : (col + 1) * 14] = 10 * row + col
    pixels, grid = images.qwen_preprocess(image, image_mean=(0, 0, 0), image_std=(1, 1, 1), backend="pil")
    np.testing.assert_array_equal(grid, [1, 4, 6])
    values = np.rint(pixels * 255).astype(int)
    assert (values == values[:, :1]).all()  # every row is one patch: all channels, both temporal copies
    blocks = [(block_row, block_col) for block_row in range(2) for block_col in range(3)]
    expected = [10 * (2 * br + r) + 2 * bc + c for br, bc in blocks for r in range(2) for c in range(2)]
    assert values[:, 0].tolist() == expected


def test_preset_preprocess_uses_its_settings():
    pixels, grid = images.QWEN3_VL.preprocess(random_image(256, 256), backend="pil")
    np.testing.assert_array_equal(grid, [1, 16, 16])
    assert pixels.shape == (256, 3 * 2 * 16 * 16)
    assert images.SETTINGS["qwen2_5_vl"] is images.QWEN2_VL and images.SETTINGS["qwen3_vl"] is images.QWEN3_VL


def test_aspect_ratio_over_200_is_rejected_like_hf(pil_processor_cls):
    image = random_image(1, 201)
    with pytest.raises(ValueError, match="absolute aspect ratio must be smaller than 200, got 201.0"):
        images.qwen_preprocess(image)
    with pytest.raises(ValueError, match="absolute aspect ratio must be smaller than 200, got 201.0"):
        pil_processor_cls()(image, input_data_format="channels_last")


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((0, 20, 3), np.uint8), {}, "positive height and width, got 0x20"),
        (np.zeros((20, 20, 3), np.float32), {}, "must be uint8"),
        (np.zeros((20, 20, 2), np.uint8), {}, r"C in \(1, 3, 4\).*\(20, 20, 2\)"),
        (np.zeros((2, 20, 20, 3), np.uint8), {}, "got shape"),
        (np.zeros((20, 20, 3), np.uint8), {"min_pixels": 0}, "min_pixels must be a positive integer, got 0"),
        (np.zeros((20, 20, 3), np.uint8), {"patch_size": 14.0}, "patch_size must be a positive integer"),
        (np.zeros((20, 20, 3), np.uint8), {"image_mean": (0.5, 0.5)}, "image_mean must have 3 values"),
        (np.zeros((20, 20, 3), np.uint8), {"image_std": (0.5, 0.0, 0.5)}, "image_std must be non-zero"),
        (np.zeros((20, 20, 3), np.uint8), {"backend": "cv2"}, "backend must be 'auto', 'pil' or 'torchvision'"),
    ],
)
def test_invalid_input_raises_value_error(image, kwargs, message):
    with pytest.raises(ValueError, match=message):
        images.qwen_preprocess(image, **kwargs)


def easyr1_process_image(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """The oracle: EasyR1's ``ImageProcessMixin.process_image`` (verl/utils/dataset.py), re-implemented."""
    if (image.width * image.height) > max_pixels:
        resize_factor = math.sqrt(max_pixels / (image.width * image.height))
        width, height = int(image.width * resize_factor), int(image.height * resize_factor)
        image = image.resize((width, height))
    if (image.width * image.height) < min_pixels:
        resize_factor = math.sqrt(min_pixels / (image.width * image.height))
        width, height = int(image.width * resize_factor), int(image.height * resize_factor)
        image = image.resize((width, height))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


PAPER_PIXELS = (512 * 512, 2048 * 2048)
# (height, width, PIL mode): under, inside and over the paper's [512², 2048²], in the modes data sets hold.
EASYR1_CASES = {
    "under_200x300": (200, 300, "RGB"),
    "inside_600x700": (600, 700, "RGB"),
    "over_2100x2050": (2100, 2050, "RGB"),
    "under_palette": (150, 220, "P"),
    "under_grey": (90, 100, "L"),
    "over_rgba": (2060, 2100, "RGBA"),
}


@pytest.mark.parametrize("case", EASYR1_CASES)
def test_the_easyr1_image_path_is_easyr1_then_the_hf_processor(pil_processor_cls, case):
    """``data.image_resize="easyr1"``: the decoded file pre-resized as EasyR1 does, in its own mode, then the
    checkpoint's processor (hub limits): bit-identical to EasyR1's function followed by transformers'."""
    height, width, mode = EASYR1_CASES[case]
    original = Image.fromarray(random_image(height, width, 4, seed=height + width)).convert(mode)
    encoded = io.BytesIO()
    original.save(encoded, format="PNG")
    ref = ImageRef(encoded.getvalue(), "rows.jsonl:1", "images[0]", "x.png")
    inputs = images.IMAGE_RESIZES["easyr1"](images.QWEN2_VL, *PAPER_PIXELS, "pil")
    pixels, grid = inputs.preprocess(ref.load(inputs.pre_resize))
    with Image.open(io.BytesIO(encoded.getvalue())) as decoded:
        expected = easyr1_process_image(decoded, *PAPER_PIXELS)
        ref_pixels, ref_grid = hf_output(pil_processor_cls(**kwargs_for(images.QWEN2_VL)), expected)
    np.testing.assert_array_equal(grid, ref_grid)
    np.testing.assert_array_equal(pixels, ref_pixels)
    if case == "under_200x300":  # (h x w) 418x627 by EasyR1, then 420x616; the processor alone makes it 420x644
        np.testing.assert_array_equal(grid, [1, 420 // 14, 616 // 14])
        direct = images.IMAGE_RESIZES["processor"](images.QWEN2_VL, *PAPER_PIXELS, "pil")
        np.testing.assert_array_equal(direct.preprocess(ref.load(direct.pre_resize))[1], [1, 420 // 14, 644 // 14])


def test_an_image_the_pre_resize_collapses_is_a_data_error():
    encoded = io.BytesIO()
    Image.fromarray(random_image(1, 199)).save(encoded, format="PNG")  # 199 px, scaled down to 1 x 0
    ref = ImageRef(encoded.getvalue(), "rows.jsonl:4", "images[0]", "thin.png")
    with pytest.raises(DataError, match=r"^rows.jsonl:4: images\[0\]: cannot resize image 'thin.png' \(199x1\)") as e:
        ref.load((1, 100))
    assert e.value.reason == "unprocessable_image"
