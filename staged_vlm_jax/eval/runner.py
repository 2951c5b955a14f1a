"""Evaluation of a model over a stream of prompt batches (held-out sets of a run, benchmark suites): greedy, or
sampled as the paper's validation (temperature 0.6, top-p 0.95, one response per prompt).

Generation goes through the same `RolloutEngine` as training (greedy, one sample per prompt), so what is
evaluated is exactly what the policy samples at temperature 0; scoring goes through the same reward functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from staged_vlm_jax.data.batch import PromptBatch
from staged_vlm_jax.rl.grpo import ScoreFn
from staged_vlm_jax.rl.rollout import RolloutEngine


def responses(
    model: nnx.Module,
    engine: RolloutEngine,
    batches: Iterable[PromptBatch],
    decode: Callable[[Sequence[int]], str],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    rng: jax.Array | None = None,
) -> Iterator[tuple[PromptBatch, list[str], np.ndarray]]:
    """Per batch: the batch, its decoded responses and their lengths in tokens; one response per prompt, greedy at
    ``temperature`` 0, else sampled (``top_p``) from ``rng`` (a batch's key folded in from its index)."""
    rng = jax.random.key(0) if rng is None else rng
    for index, prompts in enumerate(batches):
        out = engine.generate(
            model, prompts.input_ids, prompts.attention_mask, pixel_values=prompts.pixel_values,
            image_grid_thw=prompts.image_grid_thw, max_new_tokens=max_new_tokens, greedy=temperature == 0,
            temperature=temperature or 1.0, top_p=top_p, eos_token_ids=tuple(eos_token_ids),
            pad_token_id=pad_token_id, rng=jax.random.fold_in(rng, index),
        )  # fmt: skip
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        texts = [decode(row[: int(length)].tolist()) for row, length in zip(tokens, lengths, strict=True)]
        yield prompts, texts, lengths


def evaluate(
    model: nnx.Module,
    engine: RolloutEngine,
    batches: Iterable[PromptBatch],
    score: ScoreFn,
    decode: Callable[[Sequence[int]], str],
    **generation,
) -> dict[str, float]:
    """Mean score components (``accuracy``, ``format``, ``overall``, as fractions), mean ``response_length`` in
    tokens and the number of ``examples`` over every prompt of ``batches``, answered by `responses` (``generation``:
    its keyword arguments)."""
    totals: dict[str, float] = {}
    lengths: list[np.ndarray] = []
    for prompts, texts, row_lengths in responses(model, engine, batches, decode, **generation):
        scores, _ = score(texts, list(prompts.ground_truths))
        for item in scores:
            for key, value in item.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        lengths.append(row_lengths)
    if not lengths:
        raise ValueError("evaluate() got no prompt batches")
    examples = int(sum(len(x) for x in lengths))
    results = {key: value / examples for key, value in totals.items()}
    results["response_length"] = float(np.concatenate(lengths).mean())
    results["examples"] = examples
    return results
