"""InternVL3 / InternVL3.5 (HF format, ``model_type`` "internvl") in Flax NNX: config dataclasses with HF config.json
conversion, and the model.

The forward computes the logits of transformers' ``InternVLForConditionalGeneration`` for the tensors this project
feeds every family: ``input_ids``, ``attention_mask``, flattened ``pixel_values`` and ``image_grid_thw``. InternVL is
the Qwen2.5-VL module (`qwen2_5_vl.Qwen2_5_VL`: same entry points, batching, KV cache and shared-prompt pass) with
three parts plugged in:

- images are tiles: the processor cuts an image into up to 12 tiles of 448 px plus a thumbnail, and an image of N
  tiles is ``grid_thw`` (N, 32, 32) of 14-px patches, flattened like the Qwen processors' patches (merge-block-major,
  [C·P·P] rows, ``temporal_patch_size`` 1). The 2x2 pixel shuffle plays the part of the 2x2 merger, so a tile is
  256 image tokens and the batching, patch buckets and the data screen's prompt sizing work unchanged;
- the tower is InternViT with its projector (`vision.InternVisionTransformer`);
- the decoder is Qwen2 (InternVL3) or Qwen3 (InternVL3.5) with plain 1-D rotary positions, the count of real tokens
  before each (what HF's ``generate`` passes for left-padded prompts): the shared decoder's M-RoPE with a single
  section, every frequency band read from one position axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from staged_vlm_jax.models.qwen2_5_vl import ConfigError, Qwen2_5_VL, _plain_fields, _require, _rope
from staged_vlm_jax.models.vision import InternVisionTransformer


def _square(d: dict[str, Any], key: str, where: str) -> int:
    """A size config.json gives as [h, w] (or one int); InternVL's are square."""
    value = d[key]
    sides = set(value) if isinstance(value, (list, tuple)) else {value}
    if len(sides) != 1:
        raise ConfigError(f"{where}: {key} {value} is not square; InternVL tiles and patches are")
    return int(sides.pop())


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """InternViT and its projector (defaults: InternViT-300M-448px-V2.5, the tower of InternVL3-8B and -3.5-8B).

    The last three fields are the projector's, which config.json keeps elsewhere: ``spatial_merge_size`` is
    1 / ``downsample_ratio``, ``out_hidden_size`` the text model's width, ``projector_hidden_act`` top-level.
    """

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    hidden_act: str = "gelu"
    attention_bias: bool = True
    use_qk_norm: bool = False
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    layer_scale_init_value: float = 0.1
    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    spatial_merge_size: int = 2
    out_hidden_size: int = 3584
    projector_hidden_act: str = "gelu"

    hf_model_type = "internvl_vision"
    # A tile is one frame; every block attends within its tile, which `train.plan.Flops` reads as a window of the
    # tile's size and no full-attention blocks.
    temporal_patch_size = 1
    fullatt_block_indexes = ()

    def __post_init__(self):
        where = "config.json vision_config"
        side = self.image_size // self.patch_size
        if self.image_size % self.patch_size or side % self.spatial_merge_size:
            raise ConfigError(f"{where}: image_size {self.image_size} must be patch_size {self.patch_size} times a "
                              f"multiple of the pixel shuffle's {self.spatial_merge_size}")  # fmt: skip
        if self.norm_type not in ("layer_norm", "rms_norm"):
            raise ConfigError(f"{where}: norm_type {self.norm_type!r} is not 'layer_norm' or 'rms_norm'")

    @property
    def in_channels(self) -> int:
        return self.num_channels

    @property
    def depth(self) -> int:
        return self.num_hidden_layers

    @property
    def window_size(self) -> int:
        return self.image_size

    @classmethod
    def from_hf(cls, d: dict[str, Any], **projector) -> VisionConfig:
        where = "config.json vision_config"
        for key, supported in (("use_mean_pooling", True), ("use_absolute_position_embeddings", True),
                               ("use_mask_token", False)):  # fmt: skip
            if d.get(key, supported) != supported:
                raise ConfigError(f"{where}: {key}={str(d[key]).lower()} is not supported (no InternVL3/3.5 uses it)")
        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        kwargs = _plain_fields(cls, d, where, required, {"image_size", "patch_size", *projector})
        sizes = {key: _square(d, key, where) for key in ("image_size", "patch_size") if key in d}
        return cls(**kwargs, **sizes, **projector)

    def to_hf(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("spatial_merge_size", "out_hidden_size", "projector_hidden_act"):
            d.pop(key)
        d.update(image_size=[self.image_size] * 2, patch_size=[self.patch_size] * 2, use_mean_pooling=True,
                 use_absolute_position_embeddings=True, use_mask_token=False,
                 model_type=self.hf_model_type)  # fmt: skip
        return d


@dataclasses.dataclass(frozen=True)
class Qwen2TextConfig:
    """InternVL3's decoder, Qwen2 (defaults: InternVL3-8B's, a Qwen2.5-7B): q/k/v biases, no q/k norm.

    ``rope_type`` "dynamic" (InternVL3's checkpoints, factor 2) is dynamic NTK scaling, which HF applies only to
    positions past ``max_position_embeddings`` (32768, far beyond this project's prompts and responses); below it the
    rotary table is the default one, so the setting is kept for the round trip and nothing else.
    """

    vocab_size: int = 151674
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    rope_type: str = "dynamic"
    rope_factor: float | None = 2.0
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    pad_token_id: int | None = None

    # The architecture beyond the sizes, read by `qwen2_5_vl.DecoderLayer` (class constants, not config keys).
    hf_model_type = "qwen2"
    qkv_bias = True
    qk_norm = False
    mrope_interleaved = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mrope_section(self) -> tuple[int, ...]:
        """One section of all head_dim / 2 frequency bands: the shared decoder's M-RoPE then reads every band from
        the first position axis, which is plain 1-D RoPE."""
        return (self.head_dim // 2,)

    @classmethod
    def from_hf(cls, d: dict[str, Any]):
        where = "config.json text_config"
        if d.get("use_sliding_window"):
            raise ConfigError(f"{where}: use_sliding_window=true is not supported (no InternVL3/3.5 uses it)")
        if "attention_bias" in d and d["attention_bias"] != cls.qkv_bias:
            raise ConfigError(f"{where}: attention_bias={str(d['attention_bias']).lower()} is not supported for "
                              f"{cls.hf_model_type}")  # fmt: skip
        rope = _rope(d)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "dynamic"):
            raise ConfigError(f"{where}: rope_type {rope_type!r} is not supported; expected 'default' or 'dynamic'")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        kwargs = _plain_fields(cls, d, where, required, {"rope_theta", "rope_type", "rope_factor"})
        kwargs.setdefault("num_key_value_heads", d["num_attention_heads"])
        return cls(**kwargs, rope_theta=float(rope.get("rope_theta", cls.rope_theta)), rope_type=rope_type,
                   rope_factor=rope.get("factor"))  # fmt: skip

    def to_hf(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        rope = {"rope_type": d.pop("rope_type"), "rope_theta": d.pop("rope_theta")}
        factor = d.pop("rope_factor")
        d["rope_parameters"] = rope if factor is None else {**rope, "factor": factor}
        d["model_type"] = self.hf_model_type
        return d


@dataclasses.dataclass(frozen=True)
class Qwen3TextConfig(Qwen2TextConfig):
    """InternVL3.5's decoder, Qwen3 (defaults: InternVL3.5-8B's, a Qwen3-8B): per-head q/k RMSNorm, no q/k/v bias,
    an explicit ``head_dim``."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    rope_type: str = "default"
    rope_factor: float | None = None
    max_position_embeddings: int = 40960
    head_dim: int = 128

    hf_model_type = "qwen3"
    qkv_bias = False
    qk_norm = True

    def to_hf(self) -> dict[str, Any]:
        return {**super().to_hf(), "attention_bias": False}


TEXT_CONFIGS = {cls.hf_model_type: cls for cls in (Qwen2TextConfig, Qwen3TextConfig)}


@dataclasses.dataclass(frozen=True)
class InternVLConfig:
    """InternVL (defaults: InternVL3-8B-hf). One family for both generations: the decoder class follows
    ``text_config.model_type`` (`TEXT_CONFIGS`); InternVL3_5-8B-HF is ``Qwen3TextConfig()`` with
    ``<IMG_CONTEXT>`` 151671 (Qwen3's vocabulary has four more special tokens below it)."""

    text: Qwen2TextConfig = dataclasses.field(default_factory=Qwen2TextConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    image_token_id: int = 151667
    tie_word_embeddings: bool = False

    model_type = "internvl"
    architecture = "InternVLForConditionalGeneration"

    def __post_init__(self):
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ConfigError(f"the projector's width {self.vision.out_hidden_size} must be the text model's "
                              f"hidden_size {self.text.hidden_size}")  # fmt: skip

    @property
    def image_seq_length(self) -> int:
        """Image tokens per tile, (image_size / patch_size)² / m² (256)."""
        v = self.vision
        return (v.image_size // v.patch_size // v.spatial_merge_size) ** 2

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """Prompt-only tokens a completion must never contain: ``<IMG_CONTEXT>``, the one config.json names (to the
        model ``<img>`` and ``</img>`` are text tokens)."""
        return (self.image_token_id,)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> InternVLConfig:
        text_dict = _require(d, "text_config", "config.json")
        text_type = text_dict.get("model_type", "qwen2")
        if text_type not in TEXT_CONFIGS:
            raise ConfigError(f"config.json text_config: model_type {text_type!r} is not supported; InternVL3 is "
                              f"'qwen2', InternVL3.5 'qwen3' (supported: {sorted(TEXT_CONFIGS)})")  # fmt: skip
        for key, supported in (("vision_feature_layer", -1), ("vision_feature_select_strategy", "default")):
            if d.get(key, supported) != supported:
                raise ConfigError(f"config.json: {key}={d[key]!r} is not supported (InternVL3/3.5 use {supported!r})")
        ratio = float(d.get("downsample_ratio", 0.5))
        merge = round(1 / ratio)
        if merge * ratio != 1:
            raise ConfigError(f"config.json: downsample_ratio {ratio} is not 1 / an integer")
        text = TEXT_CONFIGS[text_type].from_hf(text_dict)
        vision = VisionConfig.from_hf(_require(d, "vision_config", "config.json"), spatial_merge_size=merge,
                                      out_hidden_size=text.hidden_size,
                                      projector_hidden_act=d.get("projector_hidden_act", "gelu"))  # fmt: skip
        # Hub checkpoints converted with transformers 4.x have no top-level flag (transformers 5 would read its class
        # default, tied, then find lm_head.weight in the checkpoint and leave it untied); the text model's flag, or
        # untied, is what their weights are.
        tie = d.get("tie_word_embeddings", text_dict.get("tie_word_embeddings", False))
        cfg = cls(text=text, vision=vision, image_token_id=d.get("image_token_id", cls.image_token_id),
                  tie_word_embeddings=bool(tie))  # fmt: skip
        if d.get("image_seq_length", cfg.image_seq_length) != cfg.image_seq_length:
            raise ConfigError(f"config.json: image_seq_length {d['image_seq_length']} is not the "
                              f"{cfg.image_seq_length} tokens per tile that image_size, patch_size and "
                              "downsample_ratio give")  # fmt: skip
        return cfg

    def to_hf(self) -> dict[str, Any]:
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "text_config": self.text.to_hf(),
            "vision_config": self.vision.to_hf(),
            "image_token_id": self.image_token_id,
            "image_seq_length": self.image_seq_length,
            "downsample_ratio": 1 / self.vision.spatial_merge_size,
            "projector_hidden_act": self.vision.projector_hidden_act,
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
            "tie_word_embeddings": self.tie_word_embeddings,
        }


def tiny_config(
    vocab_size: int = 512,
    tie_word_embeddings: bool = False,
    text: dict[str, Any] | None = None,
    vision: dict[str, Any] | None = None,
    decoder: str = "qwen2",
) -> InternVLConfig:
    """A few-hundred-thousand-parameter InternVL for tests and the CPU demo: ``decoder`` "qwen2" (InternVL3) or
    "qwen3" (InternVL3.5, with a head_dim that is not hidden / heads); ``text`` / ``vision`` override sizes.

    Tiles keep the real 448 px / 14 px geometry (the processor's, which the family's image settings fix), so a tile
    is 1024 patches and 256 image tokens. The vocabulary's tail is laid out as `data.tokenizer.build_tiny_tokenizer`
    lays out its InternVL tokens: ``<IMG_CONTEXT>`` four below the top, eos the top id and pad the one below.
    """
    text_cls = TEXT_CONFIGS[decoder]
    text_sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=4096)  # fmt: skip
    if decoder == "qwen3":
        text_sizes.update(num_hidden_layers=3, head_dim=32)
    text_cfg = text_cls(vocab_size=vocab_size, bos_token_id=None, eos_token_id=vocab_size - 1,
                        pad_token_id=vocab_size - 2, **{**text_sizes, **(text or {})})  # fmt: skip
    vision_sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        out_hidden_size=text_cfg.hidden_size)  # fmt: skip
    return InternVLConfig(text=text_cfg, vision=VisionConfig(**{**vision_sizes, **(vision or {})}),
                          image_token_id=vocab_size - 4, tie_word_embeddings=tie_word_embeddings)  # fmt: skip


class InternVL(Qwen2_5_VL):
    """InternVL for conditional generation (InternViT + projector, Qwen2 or Qwen3 decoder, LM head): the Qwen2.5-VL
    module with InternVL's tower and 1-D rotary positions."""

    vision_cls = InternVisionTransformer

    def _positions(self, input_ids, attention_mask, image_grid_thw) -> tuple[jax.Array, jax.Array]:
        """Positions [1, B, T] (for the decoder's one-section rotary): each token's count of real tokens before it,
        images included (padding 0); and each row's next position [B]."""
        valid = attention_mask.astype(bool)
        positions = jnp.where(valid, jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
        return positions[None], jnp.max(positions, axis=1) + 1
