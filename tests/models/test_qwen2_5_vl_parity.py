"""Logits parity with transformers' Qwen2_5_VLForConditionalGeneration (torch, CPU, fp32, eager attention)."""

from __future__ import annotations

import numpy as np
import pytest

from staged_vlm_jax import models
from tests.models.qwen_fixtures import PARITY_CASES, case_inputs, hf_logits, hf_model, tiny

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


@pytest.mark.parametrize("case", PARITY_CASES)
def test_logits_match_transformers(pair, case):
    ours, oracle, cfg = pair
    ids, mask, pixels, grids = case_inputs(cfg, case)
    expected = hf_logits(oracle, cfg, ids, mask, pixels, grids)
    got = np.asarray(ours(ids, mask, pixels, grids))
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], atol=TOLERANCE, rtol=0)
