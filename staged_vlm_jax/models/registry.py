"""Model families by name and by Hugging Face ``model_type``.

A family bundles what the rest of the system needs to know about an architecture: its config class (with
``from_hf``/``to_hf``), its NNX module, a tiny config for tests and the CPU demo, and how its parameter paths map
to checkpoint tensor names (`hf_io` does the rest generically). New families register here; nothing else
dispatches on model type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from staged_vlm_jax.models import internvl, qwen2_5_vl, qwen3_vl


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """Everything model-specific that loading, saving and building need.

    ``hf_renames``: ordered (regex, replacement) applied to our dotted parameter path to get the checkpoint name.
    ``hf_aliases``: (checkpoint prefix, canonical prefix) pairs for alternative namings of the same tensors
    (transformers 5 in-memory names vs the hub layout); canonical names are what `save_hf` writes.
    ``hf_shapes``: checkpoint shapes that differ from the default (e.g. a Conv3d kernel stored 5-D).
    ``stacked_layers``: paths of the stacked (scanned) layer modules; the checkpoint stores layer ``i`` of one
    under ``path.i``.
    """

    name: str
    config_cls: type
    model_cls: type
    tiny_config: Callable[..., Any]
    hf_renames: tuple[tuple[str, str], ...]
    hf_aliases: tuple[tuple[str, str], ...] = ()
    hf_shapes: Callable[[Any], dict[str, tuple[int, ...]]] = lambda cfg: {}
    stacked_layers: tuple[str, ...] = ()


def _conv3d_patch_embed(name: str) -> Callable[[Any], dict[str, tuple[int, ...]]]:
    """The vision patch embedding ``name``: a Conv3d kernel [out, C, T, P, P] in the checkpoint, a matrix here."""

    def shapes(cfg) -> dict[str, tuple[int, ...]]:
        v = cfg.vision
        return {name: (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)}

    return shapes


def _internvl_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """InternViT's Conv2d patch kernel [out, C, P, P], and its class token and position table with HF's leading
    batch axis of 1."""
    v, tower = cfg.vision, "model.vision_tower.embeddings."
    positions = (v.image_size // v.patch_size) ** 2 + 1
    return {
        tower + "patch_embeddings.projection.weight": (v.hidden_size, v.in_channels, v.patch_size, v.patch_size),
        tower + "cls_token": (1, 1, v.hidden_size),
        tower + "position_embeddings": (1, positions, v.hidden_size),
    }


FAMILIES: dict[str, ModelFamily] = {
    "qwen2_5_vl": ModelFamily(
        name="qwen2_5_vl",
        config_cls=qwen2_5_vl.Qwen2_5_VLConfig,
        model_cls=qwen2_5_vl.Qwen2_5_VL,
        tiny_config=qwen2_5_vl.tiny_config,
        hf_renames=(
            (r"^language_model\.", "model."),
            (r"^visual\.patch_embed\.", "visual.patch_embed.proj."),
            (r"\.merger\.fc1\.", ".merger.mlp.0."),
            (r"\.merger\.fc2\.", ".merger.mlp.2."),
        ),
        hf_aliases=(("model.language_model.", "model."), ("model.visual.", "visual.")),
        hf_shapes=_conv3d_patch_embed("visual.patch_embed.proj.weight"),
        stacked_layers=("language_model.layers", "visual.blocks"),
    ),
    # Qwen3-VL checkpoints (hub and transformers 5 alike) keep both towers under "model."; the merger norms are
    # "norm" and the MLP layers "linear_fc1" / "linear_fc2" (merger, DeepStack mergers and vision blocks alike).
    "qwen3_vl": ModelFamily(
        name="qwen3_vl",
        config_cls=qwen3_vl.Qwen3VLConfig,
        model_cls=qwen3_vl.Qwen3VL,
        tiny_config=qwen3_vl.tiny_config,
        hf_renames=(
            (r"^language_model\.", "model.language_model."),
            (r"^visual\.patch_embed\.", "model.visual.patch_embed.proj."),
            (r"^visual\.", "model.visual."),
            (r"\.ln_q\.", ".norm."),
            (r"\.fc([12])\.", r".linear_fc\1."),
        ),
        hf_shapes=_conv3d_patch_embed("model.visual.patch_embed.proj.weight"),
        stacked_layers=("language_model.layers", "visual.blocks"),
    ),
    # InternVL3 and InternVL3.5 (the decoder is read from text_config.model_type). Transformers 5 names the parts
    # model.{vision_tower, multi_modal_projector, language_model}; the vision blocks' parameters carry HF's names
    # here already. Checkpoints written by transformers 4.x without the "model." level load too.
    "internvl": ModelFamily(
        name="internvl",
        config_cls=internvl.InternVLConfig,
        model_cls=internvl.InternVL,
        tiny_config=internvl.tiny_config,
        hf_renames=(
            (r"^language_model\.", "model.language_model."),
            (r"^visual\.patch_embed\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
            (r"^visual\.(cls_token|position_embeddings)$", r"model.vision_tower.embeddings.\1"),
            (r"^visual\.blocks\.", "model.vision_tower.encoder.layer."),
            (r"^visual\.merger\.fc([12])\.", r"model.multi_modal_projector.linear_\1."),
            (r"^visual\.merger\.", "model.multi_modal_projector."),
        ),
        hf_aliases=(
            ("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("vision_tower.", "model.vision_tower."),
            ("multi_modal_projector.", "model.multi_modal_projector."),
        ),
        hf_shapes=_internvl_shapes,
        stacked_layers=("language_model.layers", "visual.blocks"),
    ),
}


def get_family(model_type: str) -> ModelFamily:
    """The family for a registry name or HF ``model_type``; unknown names list the supported ones."""
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def tiny_config(family: str, **overrides):
    """A tiny random-init config of ``family`` for tests and the CPU demo."""
    return get_family(family).tiny_config(**overrides)
