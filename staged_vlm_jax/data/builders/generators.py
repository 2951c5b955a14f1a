"""What the data builders ask for answers: a `Generator` completes a batch of prompts.

A prompt is plain text or a `Chat`. Plain text is sent as it is, with no chat template: what vLLM's ``LLM.generate``
does with a string, which is how the paper's ``generate_qa.py`` and the caption-only pass of
``filter_perception.py`` prompt their models. A `Chat` is chat messages whose ``{"type": "image"}`` entries take
`Chat.images` in order, rendered by the model's chat template (``LLM.chat``: the image-only filter pass, the
pass-rate prompts).

Two generators: `LocalGenerator`, a model of this package on the rollout engine that trains it (a Hugging Face
directory or a run's checkpoint), and `EndpointGenerator`, a model behind an OpenAI-compatible chat endpoint
(``staged-vlm serve``, vLLM, an API) reached through an injected ``chat`` callable, for generator models this
package does not load (the paper writes its MCQs with the text-only Qwen2.5-72B-Instruct).
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np
from flax import nnx
from PIL import Image
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax import models
from staged_vlm_jax.data.images import ImageInputs, image_inputs
from staged_vlm_jax.data.pipeline import Prompt, PromptBuilder, PromptCollator
from staged_vlm_jax.data.schema import ImageRef
from staged_vlm_jax.data.tokenizer import load_tokenizer
from staged_vlm_jax.paths import PathLike
from staged_vlm_jax.rl.rollout import RolloutEngine


@dataclasses.dataclass(frozen=True)
class Chat:
    """Chat messages (OpenAI / HF layout) and the images their ``{"type": "image"}`` content entries stand for."""

    messages: tuple[dict[str, Any], ...]
    images: tuple[ImageRef, ...] = ()


def user_turn(text: str) -> Chat:
    """``text`` as the one user turn of a chat (the model's chat template then wraps it)."""
    return Chat(({"role": "user", "content": text},))


class Generator(Protocol):
    """Completes prompts (text or `Chat`); ``name`` says which model answered, in the builders' outputs."""

    name: str

    def complete(self, prompts: Sequence[str | Chat], max_new_tokens: int, *, n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> list[str]:  # fmt: skip
        """``n`` completions per prompt, the ``n`` of a prompt contiguous (``len(prompts) * n`` strings): greedy at
        ``temperature`` 0, else sampled (``top_p`` 1 and ``top_k`` 0: untruncated) from ``seed``."""
        ...


class LocalGenerator:
    """A model of this package answering through the `RolloutEngine` that trains it: a `Chat` built by the training
    pipeline's `PromptBuilder.chat` (the tokenizer's chat template, the family's image processor), plain text
    tokenized as it is; one engine call per `complete` (the engine splits a batch whose KV cache does not fit).
    Responses are decoded without special tokens and end at the tokenizer's eos or pad token, as in `staged-vlm eval`.
    """

    def __init__(self, name: str, model: nnx.Module, tokenizer: PreTrainedTokenizerFast, images: ImageInputs,
                 engine: RolloutEngine) -> None:  # fmt: skip
        self.name, self.model, self.tokenizer, self.engine = name, model, tokenizer, engine
        self.builder = PromptBuilder(tokenizer, images, "raise")
        self.collate = PromptCollator(tokenizer.pad_token_id, engine.config.prompt_buckets)
        self.eos_token_ids = tuple(dict.fromkeys([tokenizer.eos_token_id, tokenizer.pad_token_id]))

    @classmethod
    def load(cls, model: str, export_to: PathLike, engine: RolloutEngine, *, dtype: str, min_pixels: int,
             max_pixels: int) -> LocalGenerator:  # fmt: skip
        """``model`` (a Hugging Face directory, or a run's workdir / checkpoints/ whose latest checkpoint is exported
        to ``export_to``) on ``engine``'s mesh, images resized into [min_pixels, max_pixels] as training does."""
        from staged_vlm_jax.train.export import model_directory

        directory, _ = model_directory(model, export_to)
        family, _ = models.read_config(directory)
        loaded, _ = models.load_hf(directory, dtype=dtype, mesh=engine.mesh)
        images = image_inputs(family.name, "easyr1", min_pixels, max_pixels, "pil")
        return cls(model, loaded, load_tokenizer(directory), images, engine)

    def complete(self, prompts: Sequence[str | Chat], max_new_tokens: int, *, n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> list[str]:  # fmt: skip
        batch = self.collate([self._prompt(str(index), prompt) for index, prompt in enumerate(prompts)])
        out = self.engine.generate(
            self.model, batch.input_ids, batch.attention_mask, pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw, max_new_tokens=max_new_tokens, n=n, greedy=temperature == 0,
            temperature=temperature or 1.0, top_p=top_p, top_k=top_k, eos_token_ids=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id, rng=jax.random.key(seed),
        )  # fmt: skip
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        return [self.tokenizer.decode(row[: int(length)].tolist(), skip_special_tokens=True)
                for row, length in zip(tokens, lengths, strict=True)]  # fmt: skip

    def _prompt(self, prompt_id: str, prompt: str | Chat) -> Prompt:
        if isinstance(prompt, Chat):
            return self.builder.chat(prompt_id, prompt.messages, prompt.images)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        return Prompt(prompt_id, np.asarray(ids, np.int32), "", None, np.zeros((0, 3), np.int64))


# chat(messages, max_tokens, temperature) -> the reply's text, e.g. one chat-completions request.
ChatFn = Callable[[list[dict[str, Any]], int, float], str]


class EndpointGenerator:
    """A model behind an OpenAI-compatible chat endpoint, asked through ``chat`` (`ChatFn`), ``concurrency``
    requests at a time. The chat API has no raw completion, so a plain-text prompt goes as one user turn (the
    server applies its chat template); images go as base64 data URLs; ``n`` samples are ``n`` requests. ``chat``
    takes no top_p / top_k, so only untruncated sampling is offered (the perception builder is greedy)."""

    def __init__(self, name: str, chat: ChatFn, concurrency: int = 8) -> None:
        self.name, self.chat, self.concurrency = name, chat, concurrency

    def complete(self, prompts: Sequence[str | Chat], max_new_tokens: int, *, n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int = 0) -> list[str]:  # fmt: skip
        if top_p != 1.0 or top_k:
            raise ValueError(f"{self.name}: an endpoint generator samples without top_p / top_k truncation")
        requests = [messages for prompt in prompts for messages in [openai_messages(prompt)] * n]
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda messages: self.chat(messages, max_new_tokens, temperature), requests))


def openai_messages(prompt: str | Chat) -> list[dict[str, Any]]:
    """``prompt`` as chat-completions messages: text as one user turn, a `Chat`'s image entries as data URLs."""
    chat = user_turn(prompt) if isinstance(prompt, str) else prompt
    images = iter(chat.images)

    def part(entry: dict[str, Any]) -> dict[str, Any]:
        if entry.get("type") != "image":
            return entry
        return {"type": "image_url", "image_url": {"url": data_url(next(images))}}

    return [message if isinstance(message["content"], str) else
            {**message, "content": [part(entry) for entry in message["content"]]}
            for message in chat.messages]  # fmt: skip


def data_url(image: ImageRef) -> str:
    """The image file's bytes as a ``data:image/<format>;base64,…`` URL (its format read by Pillow)."""
    data = image.source if isinstance(image.source, bytes) else image.source.read_bytes()
    with Image.open(io.BytesIO(data)) as opened:
        kind = (opened.format or "png").lower()
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"
