"""The offline tiny tokenizer and prompt building: ids that line up with the tiny model, the Qwen2-VL chat layout,
image-pad expansion, parity of ``input_ids`` with transformers' Qwen2.5-VL processor, errors, over-long filtering."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from jinja2 import Template

from staged_vlm_jax.data import images, prompts, tokenizer
from staged_vlm_jax.models import ImageTokenMismatchError, tiny_config

# training/format_prompts/math.jinja of UCSC-VLAA/VLM-CapCurriculum, verbatim (the oracle for the rendered text).
MATH_JINJA = (
    "{{ content | trim }} You FIRST think about the reasoning process as an internal monologue and then provide the "
    "final answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put "
    "in \\boxed{}. i.e. <thinking> reasoning here </thinking> \\boxed{final answer here}\n"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    tokenizer.build_tiny_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return tokenizer.load_tokenizer(tiny_dir)


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_special_token_ids_line_up_with_tiny_config(tok):
    from transformers import PreTrainedTokenizerFast

    cfg = tiny_config("qwen2_5_vl")
    assert isinstance(tok, PreTrainedTokenizerFast) and len(tok) == cfg.text.vocab_size == 512
    ids = {token: tok.convert_tokens_to_ids(token) for token in tokenizer.TINY_SPECIAL_TOKENS}
    assert ids == {"<|im_start|>": 505, "<|endoftext|>": 506, "<|im_end|>": 507, "<|image_pad|>": 508,
                   "<|video_pad|>": 509, "<|vision_start|>": 510, "<|vision_end|>": 511}  # fmt: skip
    assert ids[tokenizer.IMAGE_PAD] == cfg.image_token_id == prompts.image_token_id(tok)
    assert ids[tokenizer.VIDEO_PAD] == cfg.video_token_id
    assert ids[tokenizer.VISION_START] == cfg.vision_start_token_id
    assert ids[tokenizer.VISION_END] == cfg.vision_end_token_id
    assert tok.eos_token == tokenizer.IM_END and tok.eos_token_id == cfg.text.eos_token_id
    assert tok.pad_token == tokenizer.ENDOFTEXT and tok.pad_token_id == cfg.text.pad_token_id
    assert tok.bos_token is None and tok.unk_token is None
    assert max(tok.encode(" ".join(tokenizer.DEFAULT_CORPUS), add_special_tokens=False)) < 505


def test_build_is_deterministic(tok, tmp_path):
    assert tokenizer.build_tiny_tokenizer(tmp_path).get_vocab() == tok.get_vocab()


@pytest.mark.parametrize(
    "text",
    [
        "<think> 12 + 7 = 19 </think> The answer is \\boxed{19}.",
        "Which option? (A) 3.5 (B) -4 [C] {x^2}; naïve café 漢字 🙂\n\ttabs  and  spaces ",
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_special_tokens_are_atomic_and_skippable(tok):
    ids = tok.encode("a<|image_pad|><|vision_end|>b", add_special_tokens=False)
    assert ids[1:3] == [508, 511]
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_answer_format_tokenizes_compactly(tok):
    for markup in ["<think>", "</think>", "\\boxed{"]:
        assert len(tok.encode(markup, add_special_tokens=False)) <= 3, markup


def test_chat_template_is_qwen2_vl_layout(tok):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    )


@pytest.mark.parametrize("problem", ["What is 2+2?", "  <image>Find x.\n", "a & b < c"])
def test_user_text_renders_the_papers_format_prompt(problem):
    expected = Template(MATH_JINJA.strip()).render(content=problem)
    assert prompts.user_text(problem) == expected == f"{problem.strip()} {prompts.FORMAT_INSTRUCTION}"
    assert prompts.user_text(problem, append_format=False) == problem


GRID_CASES = {
    "one_small": [(1, 2, 2)],
    "one_wide": [(1, 4, 6)],
    "temporal_2": [(2, 4, 4)],
    "two_images": [(1, 4, 6), (1, 8, 4)],
    "three_images": [(1, 2, 2), (1, 6, 6), (1, 2, 8)],
}


@pytest.mark.parametrize("case", GRID_CASES)
def test_image_pad_expansion(tok, case):
    grids = GRID_CASES[case]
    problem = " then ".join(f"look at <image> number {i}" for i in range(len(grids)))
    ids = prompts.build_prompt(tok, problem, grids, problem_id=case)
    ids_array = np.asarray(ids)
    starts, ends = np.flatnonzero(ids_array == 510), np.flatnonzero(ids_array == 511)
    runs = [ids[s + 1 : e] for s, e in zip(starts, ends, strict=True)]
    assert [len(run) for run in runs] == [t * h * w // 4 for t, h, w in grids]
    assert all(set(run) == {508} for run in runs)
    assert np.count_nonzero(ids_array == 508) == sum(len(run) for run in runs)
    assert tok.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_text_only_prompt_equals_easyr1_tokenization(tok):
    ids = prompts.build_prompt(tok, "Compute 3 * 4.", [], system_prompt=None)
    messages = [{"role": "user", "content": prompts.user_text("Compute 3 * 4.")}]
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(expected)


@pytest.fixture(scope="module")
def hf_processor(tok):
    """Qwen2_5_VLProcessor from our tokenizer and a default image processor, as EasyR1 calls it."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.processing_utils import ProcessorMixin

    # transformers 5 type-checks every sub-processor, and the video processor's base class only resolves with
    # torchvision installed (CI has none); images never touch it, so skip that check, not the processor.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, argument: None)
        return transformers.Qwen2_5_VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessorPil(), tokenizer=tok, chat_template=tok.chat_template
        )


PARITY_CASES = {
    # (problem, image sizes (h, w), system prompt); None means the format instruction goes in the user turn
    "one_image": ("<image>How many circles are there?", [(56, 84)], None),
    "two_images": ("Compare <image> with <image>: which is larger?", [(56, 84), (112, 56)], None),
    "eval_system_prompt": ("<image>Name the shape.", [(70, 70)], prompts.FORMAT_INSTRUCTION),
}


def expected_content(problem: str, append_format: bool) -> list[dict[str, str]]:
    """EasyR1's content list, written out per case so the oracle does not reuse `build_messages`."""
    suffix = f" {prompts.FORMAT_INSTRUCTION}" if append_format else ""
    return {
        "<image>How many circles are there?": [
            {"type": "image"},
            {"type": "text", "text": "How many circles are there?" + suffix},
        ],
        "Compare <image> with <image>: which is larger?": [
            {"type": "text", "text": "Compare "},
            {"type": "image"},
            {"type": "text", "text": " with "},
            {"type": "image"},
            {"type": "text", "text": ": which is larger?" + suffix},
        ],
        "<image>Name the shape.": [{"type": "image"}, {"type": "text", "text": "Name the shape." + suffix}],
    }[problem]


@pytest.mark.parametrize("case", PARITY_CASES)
def test_input_ids_match_hf_qwen2_5_vl_processor(tok, hf_processor, case):
    problem, sizes, system_prompt = PARITY_CASES[case]
    append_format = system_prompt is None
    pictures = [random_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    messages = [{"role": "user", "content": expected_content(problem, append_format)}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = hf_processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    reference = hf_processor(images=pictures, text=[text], add_special_tokens=False, return_tensors="np")

    grids = [images.qwen_preprocess(picture)[1] for picture in pictures]
    np.testing.assert_array_equal(np.stack(grids), reference["image_grid_thw"])
    ids = prompts.build_prompt(tok, problem, grids, system_prompt=system_prompt, append_format=append_format)
    assert ids == reference["input_ids"][0].tolist()


def test_placeholder_count_mismatch_names_the_problem(tok):
    with pytest.raises(ImageTokenMismatchError, match=r"problem 'geo-17'.*1 <image> placeholder.*2 image"):
        prompts.build_prompt(tok, "<image> Find the angle.", [(1, 4, 4), (1, 4, 4)], problem_id="geo-17")
    with pytest.raises(ImageTokenMismatchError, match=r"problem 3: .*0 <image> placeholder.*1 image"):
        prompts.build_prompt(tok, "Find the angle.", [(1, 4, 4)], problem_id=3)


def test_literal_image_pad_in_text_is_caught(tok):
    with pytest.raises(ImageTokenMismatchError, match=r"problem 'row-9': 5 image tokens \(id 508\).*describe 4"):
        prompts.build_prompt(tok, "<image> what is <|image_pad|>?", [(1, 4, 4)], problem_id="row-9")


@pytest.mark.parametrize("grid", [(1, 3, 4), (0, 4, 4), (1, 4)])
def test_bad_grid_names_the_problem(tok, grid):
    with pytest.raises(ImageTokenMismatchError, match=r"problem 'p1': image 0 has grid_thw"):
        prompts.build_prompt(tok, "<image>?", [grid], problem_id="p1")


def test_check_image_tokens():
    ids = [1, 510] + [508] * 6 + [511, 2]
    prompts.check_image_tokens(ids, [(1, 4, 6)], image_token_id=508)
    with pytest.raises(ImageTokenMismatchError, match=r"problem 'x': 6 image tokens .* describe 8"):
        prompts.check_image_tokens(ids, [(1, 4, 8)], image_token_id=508, problem_id="x")
    assert prompts.image_feature_counts([(1, 4, 6), (2, 2, 2)], merge_size=2) == [6, 2]
    assert prompts.image_feature_counts([(1, 3, 5)], merge_size=1) == [15]


def test_tokenizer_without_image_token_is_rejected():
    from transformers import Qwen2Tokenizer

    plain = Qwen2Tokenizer(vocab={"a": 0}, merges=[], unk_token=None, eos_token=None, pad_token=None)
    plain.chat_template = tokenizer.QWEN2_VL_CHAT_TEMPLATE
    with pytest.raises(ValueError, match=r"has no <\|image_pad\|> token"):
        prompts.build_prompt(plain, "<image>?", [(1, 2, 2)])


def test_load_tokenizer_errors(tiny_dir, tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        tokenizer.load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(tokenizer.TokenizerError, match=r"empty: transformers cannot load a tokenizer"):
        tokenizer.load_tokenizer(empty)
    no_template = tmp_path / "no_template"
    shutil.copytree(tiny_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(tokenizer.TokenizerError, match=r"no_template: the tokenizer has no chat template"):
        tokenizer.load_tokenizer(no_template)


def test_build_tiny_tokenizer_rejects_impossible_sizes(tmp_path):
    with pytest.raises(ValueError, match="vocab_size 200 is too small"):
        tokenizer.build_tiny_tokenizer(tmp_path / "small", vocab_size=200)
    with pytest.raises(ValueError, match="the corpus yields only .* BPE tokens"):
        tokenizer.build_tiny_tokenizer(tmp_path / "thin", corpus=["ab ab ab"])
