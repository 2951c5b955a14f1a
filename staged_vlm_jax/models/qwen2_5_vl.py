"""Qwen2.5-VL in Flax NNX: config dataclasses (with HF config.json conversion), 3-D rotary positions, the model.

The forward takes the tensors HF's ``Qwen2_5_VLForConditionalGeneration.forward`` takes (``input_ids``,
``attention_mask``, flattened ``pixel_values`` and ``image_grid_thw``) and computes the same logits. Besides the
full forward, `prefill` / `decode` run the very same layers against a `KVCache`, so the rollout engine and the
learner share one module and cannot drift apart.

Longer than most modules because it is one model family whole: HF config conversion, M-RoPE positions, image
input checks and the module's four entry points (forward, prefill, decode, grouped prompt sharing) — the pieces a
parity test compares with transformers' single ``modeling_qwen2_5_vl.py``. Shared layers live in `layers` and
`vision`, batch layout in `data.batch`. Qwen3-VL (`qwen3_vl`) is this module with its own config classes and vision
tower plugged in: the decoder reads its attention and M-RoPE variant from the text config, and takes DeepStack
addends when the tower provides them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from staged_vlm_jax.data.batch import ImageTokenMismatchError, image_token_counts
from staged_vlm_jax.models.layers import (
    Attention,
    Embed,
    GatedMLP,
    KVCache,
    Linear,
    RMSNorm,
    mrope_cos_sin,
    rotary_inv_freq,
    scan_layers,
    stack_layers,
)
from staged_vlm_jax.models.sharding import constrain
from staged_vlm_jax.models.vision import VisionTransformer

# The residual stream is sharded over the batch only (FSDP gathers weights, not activations).
ACTIVATION_AXES = ("batch", None, None)


class ConfigError(ValueError):
    """A config.json (or config dict) that cannot describe a supported model; the message names the key."""


def _require(d: dict[str, Any], key: str, where: str):
    if key not in d:
        raise ConfigError(f"{where}: required key {key!r} is missing")
    return d[key]


def _rope(d: dict[str, Any]) -> dict[str, Any]:
    """Rope settings: transformers 5 keeps them in ``rope_parameters``, older configs in ``rope_scaling``."""
    rope = dict(d.get("rope_scaling") or {})
    rope.update(d.get("rope_parameters") or {})
    if "rope_theta" in d:
        rope.setdefault("rope_theta", d["rope_theta"])
    return rope


def _plain_fields(cls, d: dict[str, Any], where: str, required: tuple[str, ...], derived: set[str]) -> dict[str, Any]:
    """The dataclass fields copied verbatim from a HF config dict (``derived`` ones are converted by the caller)."""
    for key in required:
        _require(d, key, where)
    return {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d and f.name not in derived}


class HFVisionConfig:
    """config.json conversion shared by the families' vision configs (frozen dataclasses with a ``rope_theta`` field
    and an ``hf_model_type``): fields copied by name, tuple-valued ones from lists, the rotary theta kept in
    ``rope_parameters``."""

    @classmethod
    def from_hf(cls, d: dict[str, Any]):
        required = ("depth", "hidden_size", "num_heads", "out_hidden_size")
        if "in_chans" in d:  # the Qwen2.5-VL hub checkpoints' name for in_channels
            d = {"in_channels": d["in_chans"], **d}
        tuples = {f.name for f in dataclasses.fields(cls) if isinstance(f.default, tuple)}
        kwargs = _plain_fields(cls, d, "config.json vision_config", required, {"rope_theta", *tuples})
        return cls(
            **kwargs,
            **{name: tuple(d[name]) for name in tuples if name in d},
            rope_theta=float(_rope(d).get("rope_theta", cls.rope_theta)),
        )

    def to_hf(self) -> dict[str, Any]:
        d = {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}
        d["rope_parameters"] = {"rope_type": "axial", "rope_theta": d.pop("rope_theta")}
        d["model_type"] = self.hf_model_type
        return d


@dataclasses.dataclass(frozen=True)
class VisionConfig(HFVisionConfig):
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    out_hidden_size: int = 3584
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    in_channels: int = 3
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2

    hf_model_type = "qwen2_5_vl_vision"


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    hidden_act: str = "silu"
    max_position_embeddings: int = 128000
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151645
    pad_token_id: int | None = None

    # The decoder's architecture beyond its sizes (class constants, not config keys): Qwen2's attention has q/k/v
    # biases and no q/k norm, its M-RoPE contiguous sections; Qwen3-VL's config subclasses this one.
    hf_model_type = "qwen2_5_vl_text"
    qkv_bias = True
    qk_norm = False
    mrope_interleaved = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> TextConfig:
        where = "config.json text_config"
        if d.get("use_sliding_window"):
            raise ConfigError(f"{where}: use_sliding_window=true is not supported (Qwen2.5-VL never uses it)")
        rope = _rope(d)
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
            raise ConfigError(f"{where}: rope_type {rope.get('rope_type')!r} is not supported; expected 'default'")
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        for key in required:
            _require(d, key, where)
        fields = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "mrope_section"}
        kwargs = {k: d[k] for k in fields if k in d}
        kwargs.setdefault("num_key_value_heads", d["num_attention_heads"])
        return cls(
            **kwargs,
            rope_theta=float(rope.get("rope_theta", cls.rope_theta)),
            mrope_section=tuple(rope.get("mrope_section", cls.mrope_section)),
        )

    def to_hf(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": d.pop("rope_theta"),
            "mrope_section": list(d.pop("mrope_section")),
        }
        d["model_type"] = self.hf_model_type
        return d


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False

    model_type = "qwen2_5_vl"
    architecture = "Qwen2_5_VLForConditionalGeneration"
    text_config_cls = TextConfig
    vision_config_cls = VisionConfig

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        """Vision placeholder/delimiter ids: prompt-only tokens a completion must never contain."""
        ids = {self.image_token_id, self.video_token_id, self.vision_start_token_id, self.vision_end_token_id}
        return tuple(sorted(ids))

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Qwen2_5_VLConfig:
        # Hub checkpoints keep the text fields at the top level; transformers 5 nests them under text_config.
        text = d.get("text_config") or d
        top = {
            k: d[k]
            for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
            if k in d
        }
        tie = d.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        return cls(
            text=cls.text_config_cls.from_hf(text),
            vision=cls.vision_config_cls.from_hf(_require(d, "vision_config", "config.json")),
            tie_word_embeddings=bool(tie),
            **top,
        )

    def to_hf(self) -> dict[str, Any]:
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "text_config": self.text.to_hf(),
            "vision_config": self.vision.to_hf(),
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        }


def tiny_config(
    vocab_size: int = 512,
    tie_word_embeddings: bool = False,
    text: dict[str, Any] | None = None,
    vision: dict[str, Any] | None = None,
) -> Qwen2_5_VLConfig:
    """A few-hundred-thousand-parameter Qwen2.5-VL for tests and the CPU demo (two windows per 112 px image).

    ``text`` / ``vision`` override sizes (benchmarks build mid-size variants this way); see `tiny_of`.
    """
    text_sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, rope_theta=10000.0, mrope_section=(2, 3, 3))  # fmt: skip
    vision_sizes = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                        window_size=56, fullatt_block_indexes=(1,))  # fmt: skip
    return tiny_of(Qwen2_5_VLConfig, vocab_size, tie_word_embeddings, {**text_sizes, **(text or {})},
                   {**vision_sizes, **(vision or {})})  # fmt: skip


def tiny_of(config_cls, vocab_size: int, tie_word_embeddings: bool, text: dict[str, Any], vision: dict[str, Any]):
    """A ``config_cls`` of the given ``text`` / ``vision`` sizes with the tiny vocabulary's token layout: the vision
    special tokens take the top four ids, and eos / pad the two below them, as in the real vocabulary's tail (and
    as `data.tokenizer.build_tiny_tokenizer` lays them out)."""
    special = vocab_size - 4
    return config_cls(
        text=config_cls.text_config_cls(
            vocab_size=vocab_size,
            max_position_embeddings=4096,
            bos_token_id=None,
            eos_token_id=special - 1,
            pad_token_id=special - 2,
            **text,
        ),
        vision=config_cls.vision_config_cls(**vision),
        image_token_id=special,
        video_token_id=special + 1,
        vision_start_token_id=special + 2,
        vision_end_token_id=special + 3,
        tie_word_embeddings=tie_word_embeddings,
    )


def rope_positions(
    input_ids: jax.Array,
    attention_mask: jax.Array,
    image_grid_thw: jax.Array | None,
    *,
    image_token_id: int,
    merge_size: int,
) -> tuple[jax.Array, jax.Array]:
    """3-D M-RoPE positions of HF's ``get_rope_index`` for images, as array ops (jit-friendly).

    Text tokens advance all three axes by one. An image of llm grid (t, h, w) starting at position s gives its
    tokens (s + frame, s + row, s + col) and advances the next text position to s + max(h, w). Padding positions
    are 0. Returns positions [3, B, T] and the position of each row's next token [B] (HF's ``rope_deltas`` + length).
    """
    valid = attention_mask.astype(bool)
    is_image = (input_ids == image_token_id) & valid
    advance = (valid & ~is_image).astype(jnp.int32)
    offsets = jnp.zeros((3, *input_ids.shape), jnp.int32)
    if image_grid_thw is not None and image_grid_thw.size > 0:
        # Per-row grids [B, I, 3] flatten to the packed order; empty slots (0, 0, 0) hold no tokens.
        grid = image_grid_thw.reshape(-1, 3).astype(jnp.int32)
        h, w = grid[:, 1] // merge_size, grid[:, 2] // merge_size
        tokens = image_token_counts(grid, merge_size)
        ends = jnp.cumsum(tokens)
        flat = is_image.reshape(-1)
        index = (jnp.cumsum(flat) - 1).reshape(input_ids.shape)  # rank among all image tokens of the batch
        image = jnp.clip(jnp.searchsorted(ends, index, side="right"), 0, grid.shape[0] - 1)
        offset = index - (ends - tokens)[image]
        h1, w1 = jnp.maximum(h, 1)[image], jnp.maximum(w, 1)[image]  # only real images' values are used
        frame = offset // (h1 * w1)
        row, col = (offset // w1) % h1, offset % w1
        last = is_image & (offset == tokens[image] - 1)
        advance = advance + jnp.where(last, jnp.maximum(h, w)[image], 0)
        offsets = jnp.where(is_image[None], jnp.stack([frame, row, col]), 0)
    start = jnp.cumsum(advance, axis=1) - advance
    positions = jnp.where(valid[None], start[None] + offsets, 0)
    return positions, jnp.max(positions, axis=(0, 2)) + 1


def check_image_inputs(input_ids, pixel_values, image_grid_thw, image_token_id: int, merge_size: int) -> None:
    """Host-side checks (skipped under tracing) that placeholders, grids and patches agree.

    ``pixel_values`` may carry extra trailing rows (padding to a fixed-shape bucket), never fewer than the grids
    describe. In the per-row format ([B, N, ·] patches, [B, I, 3] grids) each row is checked on its own.
    """
    if any(isinstance(x, jax.core.Tracer) for x in (input_ids, pixel_values, image_grid_thw)):
        return
    if pixel_values.ndim == 3:
        for row in range(pixel_values.shape[0]):
            try:
                check_image_inputs(input_ids[row : row + 1], pixel_values[row], image_grid_thw[row], image_token_id,
                                   merge_size)  # fmt: skip
            except ImageTokenMismatchError as e:
                raise ImageTokenMismatchError(f"row {row}: {e}") from None
        return
    grid = np.asarray(image_grid_thw)
    patches = int(np.sum(np.prod(grid, axis=-1)))
    if pixel_values.shape[0] < patches:
        raise ImageTokenMismatchError(
            f"pixel_values has {pixel_values.shape[0]} patch rows but image_grid_thw {grid.tolist()} "
            f"describes {patches}"
        )
    features = int(np.sum(image_token_counts(grid.reshape(-1, 3), merge_size)))
    per_row = np.asarray(input_ids == image_token_id).sum(axis=-1)
    if int(per_row.sum()) != features:
        raise ImageTokenMismatchError(
            f"image placeholder tokens (id {image_token_id}) per row {per_row.tolist()} sum to {int(per_row.sum())}, "
            f"but image_grid_thw describes {features} image features; the prompt's <|image_pad|> expansion and the "
            "image preprocessing disagree"
        )


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            qkv_bias=cfg.qkv_bias,
            dtype=dtype,
            rngs=rngs,
            head_dim=cfg.head_dim,
            qk_norm_eps=cfg.rms_norm_eps if cfg.qk_norm else None,
        )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.mlp = GatedMLP(
            cfg.hidden_size,
            cfg.intermediate_size,
            act=cfg.hidden_act,
            use_bias=False,
            axes=("embed", "mlp"),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x, cos, sin, key_mask, cache_kv=None, start=0):
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, cache_kv, start)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class TextModel(nnx.Module):
    """The Qwen2 / Qwen3 decoder: embeddings, layers with M-RoPE (stacked and scanned), final norm."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, rngs=rngs)
        self.layers = stack_layers(lambda: DecoderLayer(cfg, dtype=dtype, rngs=rngs), cfg.num_hidden_layers)
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)

    def __call__(self, x, positions, key_mask, cache=None, start=0, in_place=True, deepstack=None):
        """``cache``: None, or every layer's (keys, values) [L, B, Hkv, S, D], written at slots from ``start``.
        Returns the final-norm hidden states and the updated cache.

        ``in_place``: the cache rides in the layer scan's carry and each layer writes only its new slots (what a
        decode step wants: no copy of the cache). Under a gradient the carry would be kept for the backward pass
        at every layer, L whole caches; with ``in_place=False`` each layer gets and returns its own slice (scan
        inputs and outputs), which the backward pass keeps once. The learner's shared-prompt pass uses that.

        ``deepstack``: None, or K addends [K, B, T, E] for the outputs of the first K layers (Qwen3-VL's DeepStack:
        intermediate vision features at the image positions, zero elsewhere). The scan reads layer i's addend by
        index (nothing past K), so the K addends exist once rather than as L per-layer inputs."""
        cfg = self.cfg
        inv_freq = rotary_inv_freq(cfg.head_dim, cfg.rope_theta)
        cos, sin = mrope_cos_sin(positions, inv_freq, cfg.mrope_section, x.dtype, cfg.mrope_interleaved)
        x = constrain(x, ACTIVATION_AXES)

        def add_deepstack(x, index):
            if deepstack is None:
                return x
            levels = deepstack.shape[0]
            return x + jnp.where(index < levels, deepstack[jnp.minimum(index, levels - 1)], 0)

        indices = jnp.arange(cfg.num_hidden_layers)
        if cache is not None and not in_place:

            def per_layer(x, scanned):
                layer, (layer_cache, index) = scanned
                x, layer_cache = layer(x, cos, sin, key_mask, (*layer_cache, None), start)
                return constrain(add_deepstack(x, index), ACTIVATION_AXES), layer_cache

            x, cache = scan_layers(self.layers, per_layer, x, (cache, indices))
            return self.norm(x), cache

        def body(carry, scanned):
            x, cache = carry
            layer, index = scanned
            x, cache = layer(x, cos, sin, key_mask, None if cache is None else (*cache, index), start)
            return (constrain(add_deepstack(x, index), ACTIVATION_AXES), cache), None

        (x, cache), _ = scan_layers(self.layers, body, (x, cache), indices)
        return self.norm(x), cache


class Qwen2_5_VL(nnx.Module):
    """Qwen2.5-VL for conditional generation (vision tower + Qwen2 decoder + LM head)."""

    vision_cls = VisionTransformer

    def __init__(self, cfg: Qwen2_5_VLConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.visual = self.vision_cls(cfg.vision, dtype=dtype, rngs=rngs)
        self.language_model = TextModel(cfg.text, dtype=dtype, rngs=rngs)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else Linear(
                cfg.text.hidden_size,
                cfg.text.vocab_size,
                axes=("embed", "vocab"),
                use_bias=False,
                dtype=dtype,
                rngs=rngs,
            )
        )

    @property
    def dtype(self):
        return self.language_model.embed_tokens.weight.dtype

    @property
    def pixel_dtype(self):
        """The dtype the vision tower casts ``pixel_values`` to before its patch embedding (as HF casts them to the
        tower's dtype): the sampler and the learner put pixels on the device in it, which for a bf16 model halves
        the largest input of an image step (float32 pixels carry nothing the cast keeps)."""
        return self.visual.patch_embed.kernel.dtype

    def embed(self, input_ids: jax.Array, pixel_values=None, image_grid_thw=None) -> jax.Array:
        """Token embeddings with the vision features written at the image placeholder positions, in order.

        Eagerly a count mismatch raises `ImageTokenMismatchError`; under jit it turns the embeddings into NaN, so
        the step's NaN guard catches it instead of training on misaligned features.
        """
        return self._embed(input_ids, pixel_values, image_grid_thw)[0]

    def _embed(self, input_ids, pixel_values, image_grid_thw) -> tuple[jax.Array, jax.Array | None]:
        """`embed`, and the DeepStack addends [K, B, T, E] for the decoder (None without images or without DeepStack
        levels): the vision tower gives each image token's features of every level side by side on the last axis,
        the first level being the input embedding's."""
        x = self.language_model.embed_tokens(input_ids)
        if pixel_values is None:
            return x, None
        image_token_id, merge_size = self.cfg.image_token_id, self.cfg.vision.spatial_merge_size
        check_image_inputs(input_ids, pixel_values, image_grid_thw, image_token_id, merge_size)
        features = self.visual(pixel_values, image_grid_thw).astype(x.dtype)
        is_image = input_ids == image_token_id
        if features.ndim == 3:  # per row: each row's placeholders take its own features
            index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
            placed = jnp.take_along_axis(features, index[..., None], axis=1)
            mismatch = jnp.sum(is_image, axis=1) != jnp.sum(image_token_counts(image_grid_thw, merge_size), axis=-1)
            mismatch = mismatch[:, None, None]
        else:  # packed: placeholders of the whole batch take the features in order
            index = (jnp.cumsum(is_image.reshape(-1)) - 1).reshape(input_ids.shape)
            placed = jnp.take(features, jnp.clip(index, 0, features.shape[0] - 1), axis=0)
            mismatch = jnp.sum(is_image) != jnp.sum(image_token_counts(image_grid_thw, merge_size), axis=-1)
        hidden = x.shape[-1]
        x = jnp.where(mismatch, jnp.nan, jnp.where(is_image[..., None], placed[..., :hidden], x))
        if placed.shape[-1] == hidden:
            return x, None
        levels = placed[..., hidden:].reshape(*placed.shape[:-1], -1, hidden)  # [B, T, K, E]
        deepstack = jnp.where(is_image[..., None, None], levels, 0).transpose(2, 0, 1, 3)
        return x, constrain(deepstack, (None, *ACTIVATION_AXES))

    def logits(self, hidden: jax.Array) -> jax.Array:
        head = self.language_model.embed_tokens.attend if self.lm_head is None else self.lm_head
        logits = head(hidden)
        return constrain(logits, ("batch", None, "vocab"))

    def _positions(self, input_ids, attention_mask, image_grid_thw):
        return rope_positions(
            input_ids,
            attention_mask,
            image_grid_thw,
            image_token_id=self.cfg.image_token_id,
            merge_size=self.cfg.vision.spatial_merge_size,
        )

    def hidden_states(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> jax.Array:
        """Final-norm hidden states [B, T, hidden]; the learner applies `logits` to the response slice only."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        x, deepstack = self._embed(input_ids, pixel_values, image_grid_thw)
        positions, _ = self._positions(input_ids, attention_mask, image_grid_thw)
        hidden, _ = self.language_model(x, positions, attention_mask, deepstack=deepstack)
        return hidden

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> jax.Array:
        """Logits [B, T, vocab] for left- or right-padded ``input_ids`` (pad positions hold garbage)."""
        return self.logits(self.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw))

    def init_cache(self, batch: int, size: int, dtype=None) -> tuple[jax.Array, jax.Array]:
        """Zero keys and values for every layer, [L, B, Hkv, size, D] each."""
        t = self.cfg.text
        shape = (t.num_hidden_layers, batch, t.num_key_value_heads, size, t.head_dim)
        dtype = dtype or self.dtype
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def prefill(
        self, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, *, cache_size: int
    ) -> tuple[jax.Array, KVCache]:
        """Runs the (left-padded) prompt into a fresh cache of ``cache_size`` slots; returns the logits of the last
        position [B, vocab] (the only ones sampling needs: the LM head is not applied to the rest) and the cache."""
        hidden, cache = self._prefill(input_ids, attention_mask, pixel_values, image_grid_thw, cache_size)
        return self.logits(hidden[:, -1:])[:, 0], cache

    def decode(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Appends ``tokens`` [B, T] (usually T = 1) to the cache; returns their logits and the updated cache."""
        hidden, cache = self._extend(tokens, cache)
        return self.logits(hidden), cache

    def grouped_hidden_states(
        self, prompt_ids, prompt_mask, response_ids, pixel_values=None, image_grid_thw=None
    ) -> jax.Array:
        """Final-norm hidden states that predict each response token, [R, L, hidden], for R = G·n right-padded
        responses [R, L] of which each n contiguous rows answer one of G left-padded prompts [G, P].

        The same numbers as `hidden_states` over the R concatenated rows at positions P − 1 … P + L − 2, but each
        prompt and its images go through the model once per group instead of n times: the prompt is prefilled, its
        cache repeated to the group's rows, and the responses (all but their last token, which predicts nothing)
        extend it in one pass. A VLM prompt carries hundreds to thousands of image tokens, so at n = 5 this removes a
        large share of the learner's work; gradients flow through the shared prompt into every response.
        """
        groups, prompt_length = prompt_ids.shape
        rows, length = response_ids.shape
        if rows % groups:
            raise ValueError(f"{rows} responses do not form groups of one of {groups} prompts")
        hidden, cache = self._prefill(prompt_ids, prompt_mask, pixel_values, image_grid_thw,
                                      prompt_length + length - 1, in_place=False)  # fmt: skip
        last = jnp.repeat(hidden[:, -1:], rows // groups, axis=0)
        if length == 1:
            return last
        extended, _ = self._extend(response_ids[:, :-1], cache.repeat(rows // groups), in_place=False)
        return jnp.concatenate([last, extended], axis=1)

    def _prefill(self, input_ids, attention_mask, pixel_values, image_grid_thw, cache_size: int, in_place=True):
        batch, length = input_ids.shape
        if length > cache_size:
            raise ValueError(f"prompt length {length} exceeds the KV cache size {cache_size}")
        x, deepstack = self._embed(input_ids, pixel_values, image_grid_thw)
        positions, next_position = self._positions(input_ids, attention_mask, image_grid_thw)
        key_mask = jnp.ones((batch, cache_size), bool).at[:, :length].set(attention_mask.astype(bool))
        hidden, (keys, values) = self.language_model(x, positions, key_mask, self.init_cache(batch, cache_size), 0,
                                                     in_place, deepstack)  # fmt: skip
        cache = KVCache(
            keys=keys,
            values=values,
            key_mask=key_mask,
            length=jnp.asarray(length, jnp.int32),
            next_position=next_position.astype(jnp.int32),
        )
        return hidden, cache

    def _extend(self, tokens: jax.Array, cache: KVCache, in_place: bool = True) -> tuple[jax.Array, KVCache]:
        steps = tokens.shape[1]
        x = self.language_model.embed_tokens(tokens)
        positions = cache.next_position[:, None] + jnp.arange(steps, dtype=jnp.int32)
        positions = jnp.broadcast_to(positions[None], (3, *tokens.shape))
        hidden, (keys, values) = self.language_model(
            x, positions, cache.key_mask, (cache.keys, cache.values), cache.length, in_place
        )
        cache = cache.replace(
            keys=keys,
            values=values,
            length=cache.length + steps,
            next_position=cache.next_position + steps,
        )
        return hidden, cache
