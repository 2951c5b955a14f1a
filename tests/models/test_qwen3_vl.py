"""Qwen3-VL: logits parity with transformers' Qwen3VLForConditionalGeneration (torch, CPU, fp32, eager attention) as
the oracle, config.json and checkpoint round trips, KV-cache decoding, the 8-device mesh, the rollout engine, and the
image inputs and prompt ids of transformers' Qwen3-VL processor."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.data import images, prompts, tokenizer
from staged_vlm_jax.data.batch import per_row_images
from staged_vlm_jax.models.qwen3_vl import ConfigError, Qwen3VLConfig
from staged_vlm_jax.models.sharding import make_mesh, shard_batch
from staged_vlm_jax.rl import rollout
from tests.models.qwen_fixtures import (
    PARITY_CASES,
    assert_decode_matches_forward,
    assert_grouped_matches_forward,
    case_inputs,
    hf_logits,
    hf_model,
    image_patches,
    left_pad,
    prompt,
    stepwise_greedy,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).parents[2]
needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")

# fp32 against fp32: what is left is summation order. Measured max |Δlogits| (logits up to ~3.5): text only 1.8e-6,
# one image 3.4e-6, two images 2.7e-6, left-padded batch 3.5e-6; written by save_hf, run by transformers 8.6e-7.
TOLERANCE = 1e-4
# Two programs of ours (cache vs full forward, sharded vs single device): the same arithmetic up to reassociation.
SELF_TOLERANCE = 2e-5

# Two left-padded rows: one image, and two images of other grids (patch 16, merge 2: grids in patches).
GRIDS = [[(1, 8, 8)], [(1, 6, 4), (1, 4, 10)]]


def tiny(tie: bool = False) -> Qwen3VLConfig:
    return models.tiny_config("qwen3_vl", tie_word_embeddings=tie)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(our model loaded by load_hf, the HF oracle) from one transformers save_pretrained checkpoint."""
    cfg = tiny()
    oracle = hf_model(cfg)
    path = tmp_path_factory.mktemp("qwen3_vl_ckpt")
    oracle.save_pretrained(path)
    ours, loaded_cfg = models.load_hf(path, dtype="float32")
    assert loaded_cfg == cfg
    return ours, oracle, cfg, path


@pytest.fixture(scope="module")
def batch(pair):
    """Two left-padded prompts with their packed images."""
    _, _, cfg, _ = pair
    rng = np.random.default_rng(2)
    ids, mask = left_pad([prompt(rng, cfg, GRIDS[0], [3, 2]), prompt(rng, cfg, GRIDS[1], [1, 4, 2])],
                         cfg.text.pad_token_id)  # fmt: skip
    grids = np.array([g for row in GRIDS for g in row])
    pixels = np.concatenate([image_patches(rng, cfg, tuple(g)) for g in grids])
    return ids, mask, pixels, grids


@pytest.mark.parametrize("case", PARITY_CASES)
def test_logits_match_transformers(pair, case):
    ours, oracle, cfg, _ = pair
    ids, mask, pixels, grids = case_inputs(cfg, case)
    expected = hf_logits(oracle, cfg, ids, mask, pixels, grids)
    got = np.asarray(ours(ids, mask, pixels, grids))
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, tie):
    cfg = tiny(tie)
    ours = models.create(cfg, seed=3)
    models.save_hf(ours, cfg, tmp_path)
    theirs = transformers.Qwen3VLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, pixels, grids = case_inputs(cfg, "two_images_different_grids")
    expected = np.asarray(ours(ids, mask, pixels, grids))
    np.testing.assert_allclose(hf_logits(theirs, cfg, ids, mask, pixels, grids), expected, atol=TOLERANCE, rtol=0)
    reloaded, reloaded_cfg = models.load_hf(tmp_path)
    assert reloaded_cfg == cfg
    np.testing.assert_array_equal(np.asarray(reloaded(ids, mask, pixels, grids)), expected)


def test_the_shipped_8b_config_round_trips_through_transformers():
    """configs/models/qwen3_vl_8b is Qwen3-VL-8B-Instruct's hub config.json (flat rope keys, the vision
    model_type the hub wrote); our config of it is the 8B architecture, and what `to_hf` writes is, to
    transformers, the same config."""
    hub = json.loads((REPO / "configs" / "models" / "qwen3_vl_8b" / "config.json").read_text())
    cfg = Qwen3VLConfig.from_hf(hub)
    assert cfg == Qwen3VLConfig()
    assert Qwen3VLConfig.from_hf(cfg.to_hf()) == cfg
    # Bookkeeping, and the hub's duplicate of tie_word_embeddings in text_config (the top-level one is read).
    ignored = {"transformers_version", "architectures", "dtype", "_name_or_path", "tie_word_embeddings"}
    ours, theirs = (transformers.Qwen3VLConfig(**d).to_dict() for d in (cfg.to_hf(), hub))
    for section in ("text_config", "vision_config"):
        a, b = ({k: v for k, v in c.pop(section).items() if k not in ignored} for c in (ours, theirs))
        assert a == b, section
    assert ours.pop("tie_word_embeddings") is theirs.pop("tie_word_embeddings") is False
    assert {k: v for k, v in ours.items() if k not in ignored} == {k: v for k, v in theirs.items() if k not in ignored}
    tiny_cfg = tiny(tie=True)
    assert Qwen3VLConfig.from_hf(tiny_cfg.to_hf()) == tiny_cfg


UNSUPPORTED = {
    "attention_bias": (lambda d: d["text_config"].update(attention_bias=True), "attention_bias=true is not supported"),
    "contiguous_mrope": (lambda d: d["text_config"]["rope_parameters"].update(mrope_interleaved=False),
                         "mrope_interleaved=false is not supported"),
    "deepstack_past_depth": (lambda d: d["vision_config"].update(deepstack_visual_indexes=[1, 3]),
                             r"\[1, 3\] must be increasing block indexes below depth 3"),
}  # fmt: skip


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_configs_are_named(case):
    edit, message = UNSUPPORTED[case]
    config = tiny().to_hf()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        Qwen3VLConfig.from_hf(config)


def test_incremental_decode_reproduces_full_forward(pair, batch):
    """Prefill (images and DeepStack included) then one-token decode steps give the full forward's logits."""
    model, _, cfg, _ = pair
    assert_decode_matches_forward(model, cfg, *batch, steps=4, atol=SELF_TOLERANCE)


def test_grouped_hidden_states_equal_the_full_forward_of_every_row(pair, batch):
    """The learner's shared-prompt pass (DeepStack through the per-layer cache scan) on per-row images."""
    model, _, cfg, _ = pair
    assert_grouped_matches_forward(model, cfg, *batch, n=2, length=3, atol=SELF_TOLERANCE)


@needs_8
def test_sharded_logits_equal_single_device(pair):
    """Loaded straight into its shards on a (data 2, fsdp 2, tensor 2) mesh, with each row's images of its own
    (the engine's and learner's layout), the model gives the single-device packed logits."""
    single, _, cfg, path = pair
    rng = np.random.default_rng(5)
    grids = [[(1, 8, 8)], [(1, 4, 12)], [(1, 6, 4), (1, 4, 4)], [(1, 4, 8)]]
    rows = [prompt(rng, cfg, g, [1 + 2 * i] + [3] * len(g)) for i, g in enumerate(grids)]
    ids, mask = left_pad(rows, cfg.text.pad_token_id)
    packed_grids = np.array([g for row in grids for g in row])
    pixels = np.concatenate([image_patches(rng, cfg, tuple(g)) for g in packed_grids])
    expected = np.asarray(single(ids, mask, pixels, packed_grids))

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded, _ = models.load_hf(path, mesh=mesh)
    row_pixels, row_grids = per_row_images(pixels, packed_grids, [len(g) for g in grids])
    graphdef, state = nnx.split(sharded)
    with jax.set_mesh(mesh):
        inputs = shard_batch(mesh, ids, mask, row_pixels, row_grids)
        got = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *inputs)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], expected[valid], atol=SELF_TOLERANCE, rtol=0)


def test_rollout_greedy_equals_stepwise_argmax_of_full_forward(pair, batch):
    """The rollout engine (per-row images, prefill with DeepStack, cached decode) picks the full forward's argmax."""
    model, _, cfg, _ = pair
    ids, mask, pixels, grids = batch
    new = 6
    out = rollout.generate(model, ids, mask, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=new,
                           greedy=True, rng=jax.random.key(0), eos_token_ids=(cfg.text.eos_token_id,),
                           pad_token_id=cfg.text.pad_token_id)  # fmt: skip
    expected = stepwise_greedy(model, cfg, ids, mask, pixels, grids, new)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    return tokenizer.build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


def test_image_inputs_and_prompt_ids_match_hf_qwen3_vl_processor(tiny_tokenizer):
    """On odd image sizes, the Qwen3-VL family's image inputs (patch 16, mean/std 0.5, the hub's 256²–4096² limits)
    give the pixel values (rtol 1e-5) and grids of transformers' Qwen3VLProcessor with Qwen3-VL-8B's
    preprocessor_config.json, and the prompt builder the same input ids (so as many image tokens)."""
    from transformers.processing_utils import ProcessorMixin

    image_processor = transformers.Qwen2VLImageProcessorPil(
        size={"longest_edge": 16777216, "shortest_edge": 65536}, patch_size=16, temporal_patch_size=2, merge_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    # As tests/data/test_prompts.py: the video processor's class check needs torchvision, which images never use.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, argument: None)
        processor = transformers.Qwen3VLProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer,
                                                  chat_template=tiny_tokenizer.chat_template)  # fmt: skip
    rng = np.random.default_rng(6)
    pictures = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(37, 91), (301, 199), (517, 263)]]
    problem = "Compare <image>, <image> and <image>: which is brightest?"
    text = tiny_tokenizer.apply_chat_template(prompts.build_messages(problem, len(pictures)),
                                              add_generation_prompt=True, tokenize=False)  # fmt: skip
    reference = processor(images=pictures, text=[text], add_special_tokens=False, return_tensors="np")

    inputs = images.image_inputs("qwen3_vl", "processor", images.QWEN3_VL.min_pixels, images.QWEN3_VL.max_pixels,
                                 "pil")  # fmt: skip
    pixels, grids = zip(*(inputs.preprocess(picture) for picture in pictures), strict=True)
    np.testing.assert_array_equal(np.stack(grids), reference["image_grid_thw"])
    np.testing.assert_allclose(np.concatenate(pixels), reference["pixel_values"], rtol=1e-5, atol=1e-6)
    merge = tiny().vision.spatial_merge_size
    ids = prompts.build_prompt(tiny_tokenizer, problem, grids, merge_size=merge)
    assert ids == reference["input_ids"][0].tolist()
    assert ids.count(tiny().image_token_id) == int(reference["mm_token_type_ids"].sum())
