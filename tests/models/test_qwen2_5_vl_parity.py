"""Logits parity with transformers' Qwen2_5_VLForConditionalGeneration (torch, CPU, fp32, eager attention)."""

from __future__ import annotations

import numpy as np
import pytest

from staged_vlm_jax import models
from tests.models.qwen_fixtures import hf_model, image_patches, left_pad, prompt, tiny

torch = pytest.importorskip("torch")

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def pair(request, tmp_path_factory):
    """(our model loaded by load_hf, the HF oracle) from one save_pretrained checkpoint."""
    cfg = tiny(tie=request.param)
    oracle = hf_model(cfg)
    path = tmp_path_factory.mktemp("hf_ckpt")
    oracle.save_pretrained(path)
    ours, loaded_cfg = models.load_hf(path, dtype="float32")
    assert loaded_cfg == cfg
    return ours, oracle, cfg


def oracle_logits(oracle, cfg, ids, mask, pixels, grids):
    kwargs = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask)}
    if pixels is not None:
        kwargs.update(
            pixel_values=torch.tensor(pixels),
            image_grid_thw=torch.tensor(grids),
            # Without mm_token_type_ids transformers 5 silently falls back to 1-D positions.
            mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)),
        )
    with torch.no_grad():
        return oracle(**kwargs).logits.numpy()


CASES = {
    "text_only": ([[]], [[9]]),
    "one_image": ([[(1, 8, 8)]], [[5, 7]]),
    "two_images_different_grids": ([[(1, 8, 8), (1, 4, 12)]], [[3, 4, 6]]),
    "left_padded_batch": ([[(1, 8, 8)], [(1, 6, 4)]], [[2, 3], [7, 11]]),
}


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(pair, case):
    ours, oracle, cfg = pair
    grids_per_row, text_lens = CASES[case]
    rng = np.random.default_rng(0)
    rows = [prompt(rng, cfg, g, t) for g, t in zip(grids_per_row, text_lens, strict=True)]
    ids, mask = left_pad(rows, cfg.text.pad_token_id)
    grids = [g for row in grids_per_row for g in row]
    pixels = np.concatenate([image_patches(rng, cfg, g) for g in grids]) if grids else None
    grid_arr = np.array(grids, np.int64) if grids else None
    expected = oracle_logits(oracle, cfg, ids, mask, pixels, grid_arr)
    got = np.asarray(ours(ids, mask, pixels, grid_arr))
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], atol=TOLERANCE, rtol=0)
