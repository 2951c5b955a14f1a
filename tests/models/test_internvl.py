"""InternVL3 (Qwen2 decoder) and InternVL3.5 (Qwen3 decoder): logits parity with transformers'
InternVLForConditionalGeneration (torch, CPU, fp32, eager attention) as the oracle, config.json and checkpoint round
trips, KV-cache decoding, the 8-device mesh, the rollout engine, and the pixel values, tile counts and prompt ids of
transformers' InternVL processor."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from staged_vlm_jax import models
from staged_vlm_jax.data import images, prompts, tokenizer
from staged_vlm_jax.data.batch import left_pad, per_row_images
from staged_vlm_jax.models.internvl import ConfigError, InternVLConfig, Qwen3TextConfig, VisionConfig
from staged_vlm_jax.models.sharding import make_mesh, shard_batch
from staged_vlm_jax.rl import rollout
from tests.models.qwen_fixtures import (
    assert_decode_matches_forward,
    assert_grouped_matches_forward,
    hf_model,
    stepwise_greedy,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).parents[2]
needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")

# fp32 against fp32: what is left is summation order. Measured max |Δlogits| (logits up to ~3.7), Qwen2 / Qwen3
# decoder: text only 1.4e-6 / 1.5e-6, one image of three tiles 2.8e-6 / 2.6e-6, two images 2.9e-6 / 2.7e-6,
# left-padded batch 3.0e-6 / 2.7e-6; written by save_hf, run by transformers 6.0e-7 / 4.8e-7.
TOLERANCE = 1e-4
# Two programs of ours (cache vs full forward, sharded vs single device): the same arithmetic up to reassociation.
SELF_TOLERANCE = 2e-5
DECODERS = ("qwen2", "qwen3")


def tiny(decoder: str, tie: bool = False) -> InternVLConfig:
    return models.tiny_config("internvl", decoder=decoder, tie_word_embeddings=tie)


def tile_patches(rng: np.random.Generator, cfg, tiles: int) -> np.ndarray:
    """Random flattened patches of ``tiles`` tiles, [tiles · 1024, C·P·P], as the processor emits them."""
    v = cfg.vision
    return rng.standard_normal((tiles * (v.image_size // v.patch_size) ** 2, v.in_channels * v.patch_size**2)).astype(
        np.float32
    )


def to_hf_pixels(pixels: np.ndarray, cfg) -> np.ndarray:
    """Our flattened patches (merge-block-major rows of [C, P, P]) -> HF's tiles [tiles, C, S, S]."""
    v = cfg.vision
    p, m = v.patch_size, v.spatial_merge_size
    blocks = v.image_size // p // m
    tiles = pixels.reshape(-1, blocks, blocks, m, m, v.in_channels, p, p)  # tile, block row/col, i, j, c, y, x
    return tiles.transpose(0, 5, 1, 3, 6, 2, 4, 7).reshape(-1, v.in_channels, v.image_size, v.image_size)


def prompt(rng: np.random.Generator, cfg, tiles: list[int], text_lens: list[int]) -> list[int]:
    """text, <img> 256·N <IMG_CONTEXT> </img>, text, ... (len(text_lens) == len(tiles) + 1), with the tiny
    tokenizer's ids for <img> and </img>."""
    start, end = cfg.text.vocab_size - 7, cfg.text.vocab_size - 6
    ids: list[int] = []
    for i, n in enumerate(text_lens):
        ids += rng.integers(0, start, n).tolist()
        if i < len(tiles):
            ids += [start] + [cfg.image_token_id] * (cfg.image_seq_length * tiles[i]) + [end]
    return ids


# Parity prompts: tiles per image per row and text lengths per row (one more than its images); rows are left-padded.
PARITY_CASES = {
    "text_only": ([[]], [[9]]),
    "one_image_three_tiles": ([[3]], [[5, 7]]),
    "two_images": ([[1, 2]], [[3, 4, 6]]),
    "left_padded_batch": ([[2], [1]], [[2, 3], [7, 11]]),
}


def case_inputs(cfg, case: str, seed: int = 0):
    """input_ids, attention_mask, packed pixel_values and image_grid_thw (None without images) of a parity case."""
    tiles_per_row, text_lens = PARITY_CASES[case]
    rng = np.random.default_rng(seed)
    rows = [prompt(rng, cfg, tiles, lens) for tiles, lens in zip(tiles_per_row, text_lens, strict=True)]
    ids, mask = left_pad(rows, max(map(len, rows)), cfg.text.pad_token_id)
    tiles = [n for row in tiles_per_row for n in row]
    if not tiles:
        return ids, mask, None, None
    side = cfg.vision.image_size // cfg.vision.patch_size
    pixels = np.concatenate([tile_patches(rng, cfg, n) for n in tiles])
    return ids, mask, pixels, np.array([(n, side, side) for n in tiles], np.int64)


def hf_logits(oracle, cfg, ids, mask, pixels=None) -> np.ndarray:
    """The transformers model's logits for our inputs, with the positions HF's generate gives left-padded rows (a
    plain forward would count the padding)."""
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    kwargs = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask),
              "position_ids": torch.tensor(positions, dtype=torch.long)}  # fmt: skip
    if pixels is not None:
        kwargs["pixel_values"] = torch.tensor(to_hf_pixels(pixels, cfg))
    with torch.no_grad():
        return oracle(**kwargs).logits.numpy()


@pytest.fixture(scope="module", params=DECODERS)
def pair(request, tmp_path_factory):
    """(our model loaded by load_hf, the HF oracle, config, checkpoint) from one transformers save_pretrained
    checkpoint, for each decoder."""
    cfg = tiny(request.param)
    oracle = hf_model(cfg)
    path = tmp_path_factory.mktemp(f"internvl_{request.param}")
    oracle.save_pretrained(path)
    ours, loaded_cfg = models.load_hf(path, dtype="float32")
    assert loaded_cfg == cfg
    return ours, oracle, cfg, path


@pytest.fixture(scope="module")
def batch(pair):
    """Two left-padded prompts with their packed images: one image of two tiles, and images of one and three."""
    _, _, cfg, _ = pair
    rng = np.random.default_rng(2)
    rows, tiles = [prompt(rng, cfg, [2], [3, 2]), prompt(rng, cfg, [1, 3], [1, 4, 2])], [2, 1, 3]
    ids, mask = left_pad(rows, max(map(len, rows)), cfg.text.pad_token_id)
    pixels = np.concatenate([tile_patches(rng, cfg, n) for n in tiles])
    return ids, mask, pixels, np.array([(n, 32, 32) for n in tiles])


@pytest.mark.parametrize("case", PARITY_CASES)
def test_logits_match_transformers(pair, case):
    """Text only, one image of three tiles, two images in one prompt, a left-padded batch of two (the Qwen2 tiny
    decoder's rope is InternVL3's "dynamic" type, which changes nothing below max_position_embeddings)."""
    ours, oracle, cfg, _ = pair
    ids, mask, pixels, grids = case_inputs(cfg, case)
    expected = hf_logits(oracle, cfg, ids, mask, pixels)
    got = np.asarray(ours(ids, mask, pixels, grids))
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], expected[valid], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, decoder, tie):
    cfg = tiny(decoder, tie)
    ours = models.create(cfg, seed=3)
    models.save_hf(ours, cfg, tmp_path)
    theirs = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    ids, mask, pixels, grids = case_inputs(cfg, "two_images")
    expected = np.asarray(ours(ids, mask, pixels, grids))
    np.testing.assert_allclose(hf_logits(theirs.eval(), cfg, ids, mask, pixels), expected, atol=TOLERANCE, rtol=0)
    reloaded, reloaded_cfg = models.load_hf(tmp_path)
    assert reloaded_cfg == cfg
    np.testing.assert_array_equal(np.asarray(reloaded(ids, mask, pixels, grids)), expected)


def test_internvit_6b_options_match_transformers(tmp_path):
    """The tower options of InternViT-6B-style configs (RMSNorm, q/k norm over the whole width, no q/k/v bias),
    which the 8B models' 300M tower does not use, run as transformers runs them."""
    cfg = models.tiny_config("internvl", vision=dict(norm_type="rms_norm", use_qk_norm=True, attention_bias=False))
    oracle = hf_model(cfg, seed=1)
    oracle.save_pretrained(tmp_path)
    ours, loaded_cfg = models.load_hf(tmp_path)
    assert loaded_cfg == cfg
    ids, mask, pixels, grids = case_inputs(cfg, "one_image_three_tiles")
    expected = hf_logits(oracle, cfg, ids, mask, pixels)
    np.testing.assert_allclose(np.asarray(ours(ids, mask, pixels, grids)), expected, atol=TOLERANCE, rtol=0)


def test_a_transformers_4_checkpoint_layout_loads(tmp_path):
    """The -hf hub checkpoints were converted before transformers moved the parts under "model.": their tensors
    (language_model.model.*, language_model.lm_head, vision_tower.*, multi_modal_projector.*) load as the same
    model, and save_hf writes today's names."""
    cfg = tiny("qwen2")
    ours = models.create(cfg, seed=4)
    models.save_hf(ours, cfg, tmp_path / "new")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    renames = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.vision_tower.", "vision_tower."),
               ("model.multi_modal_projector.", "multi_modal_projector."))  # fmt: skip
    tensors = {}
    for name, value in load_file(tmp_path / "new" / "model.safetensors").items():
        old = next((o + name[len(n) :] for n, o in renames if name.startswith(n)), name)
        assert old != name
        tensors[old] = value
    save_file(tensors, legacy / "model.safetensors")
    loaded, _ = models.load_hf(legacy)
    ids, mask, pixels, grids = case_inputs(cfg, "one_image_three_tiles")
    expected = np.asarray(ours(ids, mask, pixels, grids))
    np.testing.assert_array_equal(np.asarray(loaded(ids, mask, pixels, grids)), expected)


SHIPPED = {
    "internvl3_8b": InternVLConfig(),
    "internvl3_5_8b": InternVLConfig(text=Qwen3TextConfig(), vision=VisionConfig(out_hidden_size=4096),
                                     image_token_id=151671),
}  # fmt: skip


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_8b_configs_round_trip_through_transformers(name):
    """configs/models/{internvl3_8b, internvl3_5_8b} are the -hf checkpoints' config.json (transformers 4.x layout:
    rope_scaling, no top-level tie_word_embeddings); our config of each is the 8B architecture, and what `to_hf`
    writes is, to transformers, the same config but for bookkeeping and the tie flag: transformers 5's class default
    (tied) is not what these checkpoints hold (they store lm_head.weight, which transformers then keeps untied)."""
    hub = json.loads((REPO / "configs" / "models" / name / "config.json").read_text())
    cfg = InternVLConfig.from_hf(hub)
    assert cfg == SHIPPED[name]
    assert InternVLConfig.from_hf(cfg.to_hf()) == cfg
    bookkeeping = {"architectures", "dtype", "transformers_version", "initializer_range", "initializer_factor",
                   "dropout", "max_window_layers"}  # fmt: skip
    ours, theirs = (transformers.InternVLConfig(**d).to_dict() for d in (cfg.to_hf(), hub))
    for section in ("text_config", "vision_config"):
        a, b = ({k: v for k, v in c.pop(section).items() if k not in bookkeeping} for c in (ours, theirs))
        b.get("rope_parameters", {}).pop("type", None)  # the legacy duplicate of rope_type
        assert a == b, section
    assert ours.pop("tie_word_embeddings") is False
    assert theirs.pop("tie_word_embeddings") is True
    assert {k: v for k, v in ours.items() if k not in bookkeeping} == {
        k: v for k, v in theirs.items() if k not in bookkeeping
    }


UNSUPPORTED = {
    "feature_layer": (lambda d: d.update(vision_feature_layer=-2), "vision_feature_layer=-2 is not supported"),
    "mean_pooling": (lambda d: d["vision_config"].update(use_mean_pooling=False), "use_mean_pooling=false"),
    "llama_decoder": (lambda d: d["text_config"].update(model_type="llama"), "model_type 'llama' is not supported"),
    "sliding_window": (lambda d: d["text_config"].update(use_sliding_window=True), "use_sliding_window=true"),
    "yarn": (lambda d: d["text_config"]["rope_parameters"].update(rope_type="yarn"), "rope_type 'yarn'"),
    "downsample": (lambda d: d.update(downsample_ratio=0.3), "downsample_ratio 0.3 is not 1 / an integer"),
    "seq_length": (lambda d: d.update(image_seq_length=64), "image_seq_length 64 is not the 256 tokens per tile"),
}  # fmt: skip


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_configs_are_named(case):
    edit, message = UNSUPPORTED[case]
    config = tiny("qwen2").to_hf()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        InternVLConfig.from_hf(config)


def test_incremental_decode_reproduces_full_forward(pair, batch):
    """Prefill (images included) then one-token decode steps give the full forward's logits."""
    model, _, cfg, _ = pair
    assert_decode_matches_forward(model, cfg, *batch, steps=4, atol=SELF_TOLERANCE)


def test_grouped_hidden_states_equal_the_full_forward_of_every_row(pair, batch):
    """The learner's shared-prompt pass on per-row images."""
    model, _, cfg, _ = pair
    assert_grouped_matches_forward(model, cfg, *batch, n=2, length=3, atol=SELF_TOLERANCE)


@needs_8
def test_sharded_logits_equal_single_device(pair):
    """Loaded straight into its shards on a (data 2, fsdp 2, tensor 2) mesh, with each row's images of its own
    (the engine's and learner's layout), the model gives the single-device packed logits."""
    single, _, cfg, path = pair
    rng = np.random.default_rng(5)
    tiles = [[1], [2], [1, 1], []]
    rows = [prompt(rng, cfg, t, [1 + 2 * i] + [3] * len(t)) for i, t in enumerate(tiles)]
    ids, mask = left_pad(rows, max(map(len, rows)), cfg.text.pad_token_id)
    packed_grids = np.array([(n, 32, 32) for row in tiles for n in row])
    pixels = np.concatenate([tile_patches(rng, cfg, n) for row in tiles for n in row])
    expected = np.asarray(single(ids, mask, pixels, packed_grids))

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded, _ = models.load_hf(path, mesh=mesh)
    row_pixels, row_grids = per_row_images(pixels, packed_grids, [len(t) for t in tiles])
    graphdef, state = nnx.split(sharded)
    with jax.set_mesh(mesh):
        inputs = shard_batch(mesh, ids, mask, row_pixels, row_grids)
        got = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *inputs)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[valid], expected[valid], atol=SELF_TOLERANCE, rtol=0)


def test_rollout_greedy_equals_stepwise_argmax_of_full_forward(pair, batch):
    """The rollout engine (per-row images in patch buckets, prefill, cached decode with 1-D positions) picks the full
    forward's argmax."""
    model, _, cfg, _ = pair
    ids, mask, pixels, grids = batch
    new = 6
    out = rollout.generate(model, ids, mask, pixel_values=pixels, image_grid_thw=grids, max_new_tokens=new,
                           greedy=True, rng=jax.random.key(0), eos_token_ids=(cfg.text.eos_token_id,),
                           pad_token_id=cfg.text.pad_token_id)  # fmt: skip
    expected = stepwise_greedy(model, cfg, ids, mask, pixels, grids, new)
    np.testing.assert_array_equal(np.asarray(out.tokens), expected)


def test_plan_flops_count_attention_within_tiles():
    """The plan's FLOPs (`train.plan.Flops`) read the tower as every block attending one tile: two tiles cost twice
    one tile, not four times as one image of 2048 patches attending itself would."""
    from staged_vlm_jax.train.plan import Flops

    cfg = tiny("qwen2")
    flops = Flops(models.create(cfg))
    v, tile = cfg.vision, 1024
    one_tile = 2 * flops.blocks * tile + 4 * v.hidden_size * tile * v.depth * tile + 2 * flops.merger * tile / 4
    assert flops.image(tile) == one_tile
    assert flops.image(2 * tile) == 2 * one_tile
    assert flops.merger == v.hidden_size * 4 * cfg.text.hidden_size + cfg.text.hidden_size**2  # the projector


@pytest.fixture(scope="module")
def internvl_tokenizer(tmp_path_factory):
    return tokenizer.build_tiny_tokenizer(tmp_path_factory.mktemp("internvl_tokenizer"), family="internvl")


def test_tiny_tokenizer_ids_line_up_with_tiny_config(internvl_tokenizer):
    cfg = tiny("qwen2")
    tok = internvl_tokenizer
    assert prompts.image_token_id(tok) == tok.convert_tokens_to_ids(tokenizer.IMG_CONTEXT) == cfg.image_token_id
    assert prompts.image_delimiters(tok) == ([cfg.text.vocab_size - 7], [cfg.text.vocab_size - 6])
    assert (tok.eos_token_id, tok.pad_token_id) == (cfg.text.eos_token_id, cfg.text.pad_token_id)


def test_image_inputs_and_prompt_ids_match_hf_internvl_processor(internvl_tokenizer):
    """On odd image sizes (1 to 13 tiles), the family's image inputs give the pixel values (rtol 1e-5) and tile counts
    of transformers' InternVLProcessor with the -hf checkpoints' GotOcr2 settings (448 px tiles, 1-12 and a
    thumbnail, ImageNet mean / std, bicubic), `ImageInputs.grid` the same tiles from the size alone, and the prompt
    builder the processor's input ids (<img>, 256 <IMG_CONTEXT> per tile, </img>)."""
    from transformers.processing_utils import ProcessorMixin

    tok = internvl_tokenizer
    image_processor = transformers.GotOcr2ImageProcessorPil(
        crop_to_patches=True, min_patches=1, max_patches=12, size={"height": 448, "width": 448},
        image_mean=list(images.IMAGENET_MEAN), image_std=list(images.IMAGENET_STD),
    )  # fmt: skip
    # As tests/data/test_prompts.py: the video processor's class check needs torchvision, which images never use.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, argument: None)
        processor = transformers.InternVLProcessor(image_processor=image_processor, tokenizer=tok,
                                                   chat_template=tok.chat_template, image_seq_length=256)  # fmt: skip
    rng = np.random.default_rng(6)
    sizes = [(37, 91), (301, 199), (517, 263), (448, 448), (25, 1900)]  # height, width
    pictures = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    problem = "Compare " + ", ".join(["<image>"] * len(sizes)) + ": which is brightest?"
    text = tok.apply_chat_template(prompts.build_messages(problem, len(sizes)), add_generation_prompt=True,
                                   tokenize=False)  # fmt: skip
    reference = processor(images=pictures, text=[text], add_special_tokens=False, return_tensors="np")

    inputs = images.image_inputs("internvl", "easyr1", 1, 10**9, "pil")  # no pre-resize: the processor alone
    pixels, grids = zip(*(inputs.preprocess(picture) for picture in pictures), strict=True)
    assert [int(g[0]) for g in grids] == [11, 7, 3, 1, 13]
    assert [inputs.grid(w, h).tolist() for h, w in sizes] == [g.tolist() for g in grids]
    cfg = tiny("qwen2")
    np.testing.assert_allclose(to_hf_pixels(np.concatenate(pixels), cfg), reference["pixel_values"], rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    ids = prompts.build_prompt(tok, problem, grids, merge_size=cfg.vision.spatial_merge_size)
    assert ids == reference["input_ids"][0].tolist()
    assert ids.count(cfg.image_token_id) == 256 * sum(int(g[0]) for g in grids)
