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

from staged_vlm_jax.models import qwen2_5_vl


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


def _qwen2_5_vl_shapes(cfg: qwen2_5_vl.Qwen2_5_VLConfig) -> dict[str, tuple[int, ...]]:
    v = cfg.vision
    return {
        "visual.patch_embed.proj.weight": (
            v.hidden_size,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        )
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
        hf_shapes=_qwen2_5_vl_shapes,
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
