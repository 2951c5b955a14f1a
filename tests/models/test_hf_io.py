"""load_hf / save_hf: round trips through transformers, multi-file checkpoints, clear errors on bad checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from staged_vlm_jax import models
from staged_vlm_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
from tests.models.qwen_fixtures import hf_model, image_patches, left_pad, prompt, tiny

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = tiny()
    path = tmp_path_factory.mktemp("ckpt")
    hf_model(cfg).save_pretrained(path)
    return path, cfg


def _inputs(cfg):
    rng = np.random.default_rng(1)
    grids = [(1, 8, 8)]
    ids, mask = left_pad([prompt(rng, cfg, grids, [4, 5])], cfg.text.pad_token_id)
    return ids, mask, image_patches(rng, cfg, grids[0]), np.array(grids)


def _torch_logits(model, cfg, ids, mask, pixels, grid):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pixels),
            image_grid_thw=torch.tensor(grid),
            mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)),
        ).logits.numpy()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, tie):
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = tiny(tie=tie)
    ours = models.create(cfg, seed=3)
    models.save_hf(ours, cfg, tmp_path)
    theirs = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, pixels, grid = _inputs(cfg)
    expected = np.asarray(ours(ids, mask, pixels, grid))
    np.testing.assert_allclose(_torch_logits(theirs, cfg, ids, mask, pixels, grid), expected, atol=1e-5, rtol=0)


def test_multi_file_round_trip_is_exact(checkpoint, tmp_path):
    path, cfg = checkpoint
    model, _ = models.load_hf(path)
    models.save_hf(model, cfg, tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded, cfg2 = models.load_hf(tmp_path)
    assert cfg2 == cfg
    original = load_file(str(path / "model.safetensors"))
    for name, file in index["weight_map"].items():
        np.testing.assert_array_equal(load_file(str(tmp_path / file))[name], original[name], err_msg=name)
    ids, mask, pixels, grid = _inputs(cfg)
    np.testing.assert_array_equal(
        np.asarray(reloaded(ids, mask, pixels, grid)), np.asarray(model(ids, mask, pixels, grid))
    )


def test_bfloat16_load_and_save(checkpoint, tmp_path):
    path, cfg = checkpoint
    model, _ = models.load_hf(path, dtype="bfloat16")
    assert model.language_model.embed_tokens.weight.dtype == np.dtype("bfloat16")
    models.save_hf(model, cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert all(t.dtype == np.dtype("bfloat16") for t in tensors.values())


def test_hub_style_flat_config_is_understood(checkpoint):
    """Hub checkpoints keep text fields at the top level and rope settings in rope_scaling."""
    _, cfg = checkpoint
    nested = cfg.to_hf()
    flat = {**nested, **nested.pop("text_config")}
    rope = flat.pop("rope_parameters")
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    vision = dict(flat["vision_config"])
    vision["in_chans"] = vision.pop("in_channels")
    flat["vision_config"] = vision
    assert Qwen2_5_VLConfig.from_hf(flat) == cfg


def _copy(checkpoint, tmp_path):
    path, _ = checkpoint
    target = tmp_path / "ckpt"
    shutil.copytree(path, target)
    return target


def _rewrite(target, edit):
    tensors = load_file(str(target / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named(checkpoint, tmp_path):
    target = _copy(checkpoint, tmp_path)
    _rewrite(target, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(
        models.CheckpointError, match=r"missing tensors \['model\.layers\.1\.self_attn\.k_proj\.bias'\]"
    ):
        models.load_hf(target)


def test_unexpected_tensor_is_named(checkpoint, tmp_path):
    target = _copy(checkpoint, tmp_path)
    _rewrite(target, lambda t: t.update({"model.layers.9.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(models.CheckpointError, match=r"unexpected tensors \['model\.layers\.9\.extra\.weight'\]"):
        models.load_hf(target)


def test_wrong_shape_is_named(checkpoint, tmp_path):
    target = _copy(checkpoint, tmp_path)
    _rewrite(target, lambda t: t.update({"model.norm.weight": np.ones(7, np.float32)}))
    with pytest.raises(models.CheckpointError, match=r"'model\.norm\.weight' has shape \(7,\), expected \(64,\)"):
        models.load_hf(target)


def test_corrupt_file_is_named(checkpoint, tmp_path):
    target = _copy(checkpoint, tmp_path)
    (target / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(models.CheckpointError, match="model.safetensors: cannot be read"):
        models.load_hf(target)


def test_unknown_model_type_lists_supported(checkpoint, tmp_path):
    target = _copy(checkpoint, tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = "llava"
    (target / "config.json").write_text(json.dumps(config))
    supported = r"\['internvl', 'qwen2_5_vl', 'qwen3_vl'\]"
    with pytest.raises(ValueError, match=r"unsupported model_type 'llava'; supported: " + supported):
        models.load_hf(target)


def test_missing_config_is_named(tmp_path):
    with pytest.raises(models.CheckpointError, match="config.json not found"):
        models.load_hf(tmp_path)


def test_missing_required_config_key_is_named(checkpoint, tmp_path):
    target = _copy(checkpoint, tmp_path)
    config = json.loads((target / "config.json").read_text())
    del config["text_config"]["hidden_size"]
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(models.ConfigError, match="text_config: required key 'hidden_size' is missing"):
        models.load_hf(target)
