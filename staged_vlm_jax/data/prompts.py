"""Prompt token ids for RL and evaluation, built the way EasyR1 builds them with the model's HF processor.

The paper trains with EasyR1, so the prompt a policy sees is fixed by three things reproduced here: the
think/boxed format instruction appended to the user turn (`FORMAT_INSTRUCTION`), the model's own chat template,
and the processor's expansion of each image's single placeholder into one per merged image feature (Qwen-VL's
``<|image_pad|>``; InternVL's ``<IMG_CONTEXT>``, wrapped in ``<img>`` … ``</img>``).
A prompt whose pad count disagrees with its images would silently misalign vision features at training time, so
`build_prompt` checks it and names the problem. Over-long prompts are dropped at start-up by the data screen
(`screen.DataScreen`), as EasyR1's ``filter_overlong_prompts`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax.data.batch import ImageTokenMismatchError, image_token_counts
from staged_vlm_jax.data.schema import IMAGE_PLACEHOLDER
from staged_vlm_jax.data.tokenizer import IMAGE_PAD

# The paper's format prompt: UCSC-VLAA/VLM-CapCurriculum training/format_prompts/math.jinja (commit d58a584) is
# "{{ content | trim }} You FIRST think ... \boxed{final answer here}"; EasyR1's RLHFDataset renders it with
# jinja2.Template(text.strip()).render(content=problem), i.e. problem.strip() + " " + this text. The "<thinking>"
# in its example is the original's wording (the reward checks <think>).
FORMAT_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}. "
    "i.e. <thinking> reasoning here </thinking> \\boxed{final answer here}"
)


def _where(problem_id: Any) -> str:
    return "prompt" if problem_id is None else f"problem {problem_id!r}"


def image_feature_counts(grids: Sequence[Sequence[int]], merge_size: int = 2, problem_id: Any = None) -> list[int]:
    """Image tokens per image: t·h·w / merge_size² for each ``grid_thw`` (the patch merger's output rows).

    Raises `ImageTokenMismatchError` naming ``problem_id`` for a grid that is not three positive integers with h
    and w divisible by ``merge_size`` (no processor emits one; it would mean the grids were built by hand wrongly).
    """
    counts = []
    for index, grid in enumerate(grids):
        thw = np.asarray(grid).reshape(-1)
        if thw.shape != (3,) or (thw < 1).any() or thw[1] % merge_size or thw[2] % merge_size:
            raise ImageTokenMismatchError(
                f"{_where(problem_id)}: image {index} has grid_thw {thw.tolist()}; expected three positive "
                f"integers with h and w divisible by merge_size {merge_size}"
            )
        counts.append(int(image_token_counts(thw, merge_size)))
    return counts


def user_text(problem: str, append_format: bool = True) -> str:
    """The user turn's text: EasyR1's rendering of the format prompt around the problem, or the problem as is."""
    return f"{problem.strip()} {FORMAT_INSTRUCTION}" if append_format else problem


def build_messages(
    problem: str,
    num_images: int,
    *,
    system_prompt: str | None = None,
    append_format: bool = True,
    problem_id: Any = None,
) -> list[dict[str, Any]]:
    """Chat messages as EasyR1's ``_build_messages``: the text split at each ``<image>`` into an image entry.

    A problem without images keeps plain string content (EasyR1's text-only rows). ``system_prompt``, if given,
    becomes a system turn (the paper's evaluation passes `FORMAT_INSTRUCTION` there with ``append_format=False``);
    otherwise the template's default system turn applies. Raises `ImageTokenMismatchError` naming ``problem_id``
    if the number of ``<image>`` placeholders differs from ``num_images``.
    """
    text = user_text(problem, append_format)
    placeholders = text.count(IMAGE_PLACEHOLDER)
    if placeholders != num_images:
        raise ImageTokenMismatchError(
            f"{_where(problem_id)}: the text has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the row has "
            f"{num_images} image(s); put one {IMAGE_PLACEHOLDER} where each image belongs"
        )
    messages: list[dict[str, Any]] = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    if num_images == 0:
        return [*messages, {"role": "user", "content": text}]
    content: list[dict[str, str]] = []
    for index, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if index:
            content.append({"type": "image"})
        if chunk:
            content.append({"type": "text", "text": chunk})
    return [*messages, {"role": "user", "content": content}]


def image_token_id(tokenizer: PreTrainedTokenizerFast) -> int:
    """The id of the image placeholder token, which the chat template writes once per image and the processor
    repeats once per image feature, found as each family's processor finds it: InternVL's names it
    ``tokenizer.context_image_token`` (``<IMG_CONTEXT>``), Qwen-VL's ``tokenizer.image_token`` or ``<|image_pad|>``.
    Raises ValueError if the tokenizer's vocabulary lacks it."""
    token = getattr(tokenizer, "context_image_token", None) or getattr(tokenizer, "image_token", None) or IMAGE_PAD
    return _token_id(tokenizer, token)


def image_delimiters(tokenizer: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """The ids the processor puts before and after each image's run of placeholders: InternVL's ``<img>`` and
    ``</img>`` (``tokenizer.start_image_token`` / ``end_image_token``, as InternVLProcessor reads them); none for
    Qwen-VL, whose chat template writes its delimiters itself."""
    start, end = (getattr(tokenizer, name, None) for name in ("start_image_token", "end_image_token"))
    return [_token_id(tokenizer, start)] if start else [], [_token_id(tokenizer, end)] if end else []


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer ({tokenizer.name_or_path!r}) has no {token} token; is it a VLM's tokenizer?")
    return token_id


def check_image_tokens(
    ids: Sequence[int],
    grids: Sequence[Sequence[int]],
    *,
    image_token_id: int,
    merge_size: int = 2,
    problem_id: Any = None,
) -> None:
    """Raises `ImageTokenMismatchError` naming ``problem_id`` unless ``ids`` holds exactly Σ t·h·w / merge_size²
    image tokens, the number of vision features the model will write into them."""
    expected = sum(image_feature_counts(grids, merge_size, problem_id))
    found = int(np.count_nonzero(np.asarray(ids) == image_token_id))
    if found != expected:
        raise ImageTokenMismatchError(
            f"{_where(problem_id)}: {found} image tokens (id {image_token_id}) in the prompt, but grids "
            f"{np.asarray(grids).tolist()} describe {expected} image features (t*h*w / {merge_size}**2); the chat "
            f"template or a literal {IMAGE_PAD} in the text added or dropped placeholders"
        )


def build_prompt(
    tokenizer: PreTrainedTokenizerFast,
    problem: str,
    grids: Sequence[Sequence[int]],
    *,
    merge_size: int = 2,
    system_prompt: str | None = None,
    append_format: bool = True,
    problem_id: Any = None,
) -> list[int]:
    """Prompt token ids for ``problem`` with one image per ``grid_thw`` in ``grids``, ending in the assistant header.

    As EasyR1 with Hugging Face's processor: `build_messages`; the tokenizer's chat template with
    ``add_generation_prompt=True``; tokenization without added special tokens; then the i-th image placeholder
    (`image_token_id`: Qwen-VL's ``<|image_pad|>``, InternVL's ``<IMG_CONTEXT>``) is repeated t·h·w / merge_size²
    times for the i-th grid, between the family's `image_delimiters` (InternVL's ``<img>`` … ``</img>``). The result
    equals the processor's ``input_ids``.
    Raises `ImageTokenMismatchError` naming ``problem_id`` if the placeholders and images do not pair up.
    """
    messages = build_messages(
        problem, len(grids), system_prompt=system_prompt, append_format=append_format, problem_id=problem_id
    )
    return chat_prompt(tokenizer, messages, grids, merge_size=merge_size, problem_id=problem_id)


def chat_prompt(
    tokenizer: PreTrainedTokenizerFast,
    messages: Sequence[dict[str, Any]],
    grids: Sequence[Sequence[int]],
    *,
    merge_size: int = 2,
    problem_id: Any = None,
) -> list[int]:
    """Prompt token ids of chat ``messages`` (``{"type": "image"}`` content entries in the order of ``grids``),
    ending in the assistant header: the tokenizer's chat template with ``add_generation_prompt=True``, tokenized
    without added special tokens, the i-th image placeholder repeated t·h·w / merge_size² times for the i-th grid
    between the `image_delimiters` (`build_prompt` for a training row, the server for a conversation). Raises
    `ImageTokenMismatchError` naming ``problem_id`` if placeholders and images do not pair up."""
    counts = image_feature_counts(grids, merge_size, problem_id)
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    pad = image_token_id(tokenizer)
    start, end = image_delimiters(tokenizer)
    ids: list[int] = []
    image = 0
    for token in tokenizer.encode(text, add_special_tokens=False):
        if token == pad and image < len(counts):
            ids.extend([*start, *[pad] * counts[image], *end])
            image += 1
        else:  # text, or a pad beyond the last grid (left single so the check below reports it)
            ids.append(token)
    check_image_tokens(ids, grids, image_token_id=pad, merge_size=merge_size, problem_id=problem_id)
    return ids
