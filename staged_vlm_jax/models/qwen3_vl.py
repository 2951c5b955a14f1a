"""Qwen3-VL in Flax NNX: its config dataclasses (with HF config.json conversion) and the model.

The forward takes what HF's ``Qwen3VLForConditionalGeneration.forward`` takes for images (``input_ids``,
``attention_mask``, flattened ``pixel_values``, ``image_grid_thw``) and computes the same logits. Qwen3-VL is
Qwen2.5-VL's model with three changes, so this family is the Qwen2.5-VL module with other parts plugged in rather
than a copy of it (same entry points: forward, prefill, decode, grouped prompt sharing; same 3-D positions):

- the decoder is Qwen3's: q/k RMSNorm per head, no q/k/v bias, an explicit ``head_dim`` and interleaved M-RoPE
  (`layers.mrope_cos_sin`), all read from `TextConfig`;
- the vision tower (`vision.DeepStackVisionTransformer`) has patch 16, learned position embeddings resampled to each
  grid, LayerNorm, plain MLPs and full attention in every block;
- DeepStack: the outputs of vision blocks ``deepstack_visual_indexes`` go through mergers of their own and are added
  to the outputs of the first decoder layers at the image positions (`qwen2_5_vl.TextModel`'s ``deepstack``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from staged_vlm_jax.models.qwen2_5_vl import (
    ConfigError,
    HFVisionConfig,
    Qwen2_5_VL,
    Qwen2_5_VLConfig,
    _rope,
    tiny_of,
)
from staged_vlm_jax.models.qwen2_5_vl import TextConfig as Qwen2TextConfig
from staged_vlm_jax.models.vision import DeepStackVisionTransformer


@dataclasses.dataclass(frozen=True)
class VisionConfig(HFVisionConfig):
    """Qwen3-VL's vision tower (defaults: Qwen3-VL-8B's)."""

    depth: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_heads: int = 16
    out_hidden_size: int = 4096
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: tuple[int, ...] = (8, 16, 24)
    rope_theta: float = 10000.0

    hf_model_type = "qwen3_vl_vision"

    def __post_init__(self):
        indexes = list(self.deepstack_visual_indexes)
        # The tower runs its blocks in scans between DeepStack blocks, in order; HF stacks the levels in block order.
        if indexes != sorted(set(indexes)) or any(not 0 <= i < self.depth for i in indexes):
            raise ConfigError(
                f"config.json vision_config: deepstack_visual_indexes {indexes} must be increasing block indexes "
                f"below depth {self.depth}"
            )


@dataclasses.dataclass(frozen=True)
class TextConfig(Qwen2TextConfig):
    """Qwen3-VL's decoder (defaults: Qwen3-VL-8B's): Qwen2.5-VL's fields and an explicit ``head_dim``."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    rms_norm_eps: float = 1e-6
    rope_theta: float = 5000000.0
    mrope_section: tuple[int, ...] = (24, 20, 20)
    hidden_act: str = "silu"
    max_position_embeddings: int = 262144
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    pad_token_id: int | None = None
    head_dim: int = 128  # transformers' default when config.json has none (not hidden_size / heads)

    hf_model_type = "qwen3_vl_text"
    qkv_bias = False
    qk_norm = True
    mrope_interleaved = True

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> TextConfig:
        where = "config.json text_config"
        if d.get("attention_bias"):
            raise ConfigError(f"{where}: attention_bias=true is not supported (no Qwen3-VL checkpoint uses it)")
        if _rope(d).get("mrope_interleaved") is False:
            # transformers' Qwen3-VL interleaves whatever the flag says; a config that says otherwise is not one.
            raise ConfigError(f"{where}: mrope_interleaved=false is not supported; Qwen3-VL's M-RoPE is interleaved")
        return super().from_hf(d)

    def to_hf(self) -> dict[str, Any]:
        d = super().to_hf()
        d["rope_parameters"]["mrope_interleaved"] = True
        d["attention_bias"] = False
        return d


@dataclasses.dataclass(frozen=True)
class Qwen3VLConfig(Qwen2_5_VLConfig):
    """Qwen3-VL (defaults: Qwen3-VL-8B-Instruct); special-token ids and config.json layout as Qwen2.5-VL's."""

    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)

    model_type = "qwen3_vl"
    architecture = "Qwen3VLForConditionalGeneration"
    text_config_cls = TextConfig
    vision_config_cls = VisionConfig


def tiny_config(
    vocab_size: int = 512,
    tie_word_embeddings: bool = False,
    text: dict[str, Any] | None = None,
    vision: dict[str, Any] | None = None,
) -> Qwen3VLConfig:
    """A few-hundred-thousand-parameter Qwen3-VL for tests and the CPU demo; ``text`` / ``vision`` override sizes.

    Three decoder layers, two of them taking DeepStack levels (from vision blocks 0 and 1 of 3), and a head_dim
    that is not hidden / heads, so every Qwen3 particular is exercised; the 6x6 position table is resampled to
    every grid.
    """
    text_sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, rope_theta=10000.0, mrope_section=(6, 5, 5))  # fmt: skip
    vision_sizes = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                        num_position_embeddings=36, deepstack_visual_indexes=(0, 1))  # fmt: skip
    return tiny_of(Qwen3VLConfig, vocab_size, tie_word_embeddings, {**text_sizes, **(text or {})},
                   {**vision_sizes, **(vision or {})})  # fmt: skip


class Qwen3VL(Qwen2_5_VL):
    """Qwen3-VL for conditional generation (vision tower with DeepStack + Qwen3 decoder + LM head).

    The Qwen2.5-VL module with Qwen3-VL's tower: its DeepStack levels arrive with the image features
    (`Qwen2_5_VL.embed`) and reach the decoder in the forward and the prefill; decode steps carry no images.
    """

    vision_cls = DeepStackVisionTransformer
