"""Tokenizers: the model's own from its Hugging Face directory, or a tiny Qwen-style one trained offline.

Real runs tokenize with exactly what the checkpoint ships (`load_tokenizer`), so prompts, special tokens and the chat
template are the ones the model was trained with. Tests and the CPU demo cannot download anything, so
`build_tiny_tokenizer` trains a small byte-level BPE with the ``tokenizers`` package and saves it as a Hugging Face
tokenizer directory that behaves like Qwen2.5-VL's (or InternVL's, `TINY_LAYOUTS`): the same pre-tokenizer and class
(``Qwen2Tokenizer``), the same special tokens and the same chat template, with the special tokens at the top of the
vocabulary where `staged_vlm_jax.models.tiny_config` expects them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

from staged_vlm_jax import paths

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# The tiny vocabulary's tail, lowest id first: with vocab_size V the vision tokens take V-4..V-1 and eos / pad the
# two ids below them, as `tiny_config` assumes (image_pad 508, video_pad 509, vision_start 510, vision_end 511,
# im_end = eos 507, endoftext = pad 506, im_start 505 for V = 512). Everything below is the trained BPE.
TINY_SPECIAL_TOKENS = (IM_START, ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END)

# InternVL's image tokens (InternVL3-hf and InternVL3_5-HF tokenizers; the processor finds them by these names).
IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
VIDEO = "<video>"

# Qwen2-VL / Qwen2.5-VL's chat template, verbatim from the Qwen2.5-VL-Instruct checkpoints' tokenizer_config.json
# and chat_template.json: a default system turn, one <|vision_start|><|image_pad|><|vision_end|> per image (the
# processor expands the pad afterwards), and "<|im_start|>assistant\n" as the generation prompt.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# InternVL's HF chat template (transformers' convert_internvl_weights_to_hf.py writes it into the -hf checkpoints): no
# default system turn, "<IMG_CONTEXT>\n" per image (the processor expands it to <img>, 256 per tile, </img>).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class TinyLayout:
    """A tiny tokenizer's special tokens (appended in order at the top of the vocabulary), the extra special ones
    its checkpoints list, those a family's processor reads off the tokenizer by name, and its chat template."""

    special_tokens: tuple[str, ...]
    extra_special_tokens: tuple[str, ...]
    named_tokens: dict[str, str]
    chat_template: str


_QWEN_LAYOUT = TinyLayout(TINY_SPECIAL_TOKENS, (IM_START, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD), {},
                          QWEN2_VL_CHAT_TEMPLATE)  # fmt: skip
# The named tokens first, in their order (the tokenizer's constructor adds them ahead of the rest): <IMG_CONTEXT>
# takes <|image_pad|>'s id (four below the top), eos (<|im_end|>) the top id and pad the one below.
_INTERNVL_LAYOUT = TinyLayout(
    (IMG_START, IMG_END, VIDEO, IMG_CONTEXT, IM_START, ENDOFTEXT, IM_END),
    (IM_START,),
    {"start_image_token": IMG_START, "end_image_token": IMG_END, "video_token": VIDEO,
     "context_image_token": IMG_CONTEXT},
    INTERNVL_CHAT_TEMPLATE,
)  # fmt: skip
# By model family (registry name).
TINY_LAYOUTS = {"qwen2_5_vl": _QWEN_LAYOUT, "qwen3_vl": _QWEN_LAYOUT, "internvl": _INTERNVL_LAYOUT}


def _arithmetic_lines() -> list[str]:
    """Worked sums in the answer format, so digits, operators and the think/boxed markup get merges."""
    return [
        f"What is {a} + {b}? <think> {a} + {b} = {a + b}. </think> The answer is \\boxed{{{a + b}}}."
        for a in range(0, 20, 3)
        for b in range(1, 20, 4)
    ]


# Enough distinct words for a few hundred merges; it covers what the demo's synthetic problems and answers say.
DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "How many red circles are in the image? Count the blue squares, green triangles and yellow stars.",
    "Which shape is the largest? Which color appears most often? Where is the small black dot?",
    "Answer with the option's letter from the given choices directly. Options: A. 3 B. 4 C. 5 D. 6",
    "Choices: (A) left (B) right (C) top (D) bottom. Question: what is above the square?",
    "<think> There are three red circles and two blue squares, so the total is five. </think> \\boxed{5}",
    "<think> The triangle is to the left of the circle. </think> The answer is \\boxed{A}.",
    "<think> Let x be the length of the side. Then 2x + 3 = 11, so x = 4. </think> \\boxed{4}",
    "<think>\nThe circle is red.\n</think>\n\\boxed{B}\n<think>Two and two make four.</think>\\boxed{4}",
    "Solve for x: 3x - 7 = 8. Find the area of the rectangle with width 6 and height 9.",
    "The perimeter of a square is 20 cm; what is its side length? The angle ABC equals 45 degrees.",
    "If the train travels 60 km per hour for 2.5 hours, how far does it go? Compute 12 * 7 / 3 - 1.",
    "The sum of the numbers is even; the product is odd. Is the number prime, composite, positive or negative?",
    "Let f(x) = x^2 + 2x + 1. Evaluate f(3). The value of y is 10% of 250, i.e. 25.",
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.",
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}.",
    "A conversation between a user and an assistant: the user asks a question, the assistant solves it.",
    "Images, videos, pictures, graphs, charts, tables, diagrams, plots; rows, columns, points, lines, grids.",
    "first, second, third, fourth, fifth; one, two, three, four, five, six, seven, eight, nine, ten, zero.",
    "Punctuation: commas, periods. Colons: semicolons; question marks? exclamation marks! quotes 'single' \"double\"",
    "Brackets (round) [square] {curly} <angle>; symbols # $ % & * + - = / \\ | ~ ^ _ @ ` and digits 0123456789.",
    "Therefore, the correct option is B because the circle is bigger than the triangle and smaller than the star.",
    *_arithmetic_lines(),
)


class TokenizerError(ValueError):
    """A tokenizer directory that cannot serve this project's prompts; the message names the path and the fault."""


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The tokenizer shipped in a Hugging Face model directory (never downloaded), with its chat template; a remote
    directory (``gs://…``) is copied to a temporary local one first.

    Raises FileNotFoundError if ``path`` is not a directory, and `TokenizerError` if transformers cannot load a fast
    tokenizer from it or it has no chat template (prompts are built with the model's own template).
    """
    if not paths.as_path(path).is_dir():
        raise FileNotFoundError(f"tokenizer directory {os.fspath(path)!r} does not exist (expected a Hugging Face dir)")
    try:
        with paths.local_copy(path) as local:
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(local), local_files_only=True)
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: transformers cannot load a tokenizer from this directory: {e}") from e
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TokenizerError(f"{path}: expected a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    if not tokenizer.chat_template:
        raise TokenizerError(
            f"{path}: the tokenizer has no chat template (looked for chat_template.jinja / tokenizer_config.json's "
            "'chat_template'); prompts must use the model's own template"
        )
    return tokenizer


def build_tiny_tokenizer(
    out_dir: str | os.PathLike,
    vocab_size: int = 512,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    family: str = "qwen2_5_vl",
) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE of ``vocab_size`` ids on ``corpus``, saves it to ``out_dir`` and loads it back.

    The saved directory is a ``Qwen2Tokenizer`` (Qwen's NFC normalizer, digit-splitting pre-tokenizer and
    byte-level decoder, so any text round-trips) with the special tokens and chat template of ``family``'s
    checkpoints (`TINY_LAYOUTS`: Qwen2.5-VL's for the Qwen families, InternVL's). The special tokens take the top
    seven ids in the layout's order (`TINY_SPECIAL_TOKENS` for Qwen); eos is ``<|im_end|>`` and pad
    ``<|endoftext|>``, as in the real checkpoints. Training is deterministic for a given corpus.

    Raises ValueError if ``vocab_size`` cannot hold the 256 byte tokens plus the special tokens, or if ``corpus``
    has too few distinct words to learn ``vocab_size - 7`` tokens (the special-token ids would then move).
    """
    layout = TINY_LAYOUTS[family]
    bpe_size = vocab_size - len(layout.special_tokens)
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if bpe_size < len(byte_alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} is too small: it must hold {len(byte_alphabet)} byte tokens and "
            f"{len(layout.special_tokens)} special tokens"
        )
    # Train with the pre-tokenization Qwen2Tokenizer itself uses, so the merges fit what loading rebuilds.
    pipeline = Qwen2Tokenizer(vocab={}, merges=[], unk_token=None, eos_token=None, pad_token=None).backend_tokenizer
    trainer_tokenizer = Tokenizer(BPE())
    trainer_tokenizer.normalizer = pipeline.normalizer
    trainer_tokenizer.pre_tokenizer = pipeline.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, initial_alphabet=byte_alphabet, show_progress=False)
    trainer_tokenizer.train_from_iterator(corpus, trainer)
    if trainer_tokenizer.get_vocab_size() != bpe_size:
        raise ValueError(
            f"the corpus yields only {trainer_tokenizer.get_vocab_size()} BPE tokens, but vocab_size {vocab_size} "
            f"needs {bpe_size} below the {len(layout.special_tokens)} special tokens; give a larger, more varied corpus"
        )
    model = json.loads(trainer_tokenizer.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(merge) for merge in model["merges"]],
        unk_token=None,
        eos_token=None,
        pad_token=None,
        extra_special_tokens=layout.named_tokens or None,  # tokenizer.context_image_token, ... (InternVL's)
    )
    # Appended in order, so they get ids bpe_size .. vocab_size - 1.
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in layout.special_tokens])
    tokenizer.add_special_tokens(
        {"eos_token": IM_END, "pad_token": ENDOFTEXT, "extra_special_tokens": list(layout.extra_special_tokens)}
    )
    tokenizer.chat_template = layout.chat_template
    with paths.staged_output(out_dir) as local:
        tokenizer.save_pretrained(os.fspath(local))
    return load_tokenizer(out_dir)
