"""Grain pipelines that turn data files into the `PromptBatch` of each RL step, resumable exactly.

A GRPO run may be stopped and resumed any number of times, and a stage's result must not depend on where: the
resumed run has to draw exactly the prompts the uninterrupted one would have. Grain gives that for free when the
pipeline is built from its datasets, because every stage is a deterministic function of the element index and
the iterator state is a handful of integers. So every step here is a Grain stage:

    per source: rows screened once (`screen.DataScreen`: bad rows and over-long prompts dropped, listed, counted;
                images left lazy) -> this host's shard
    sources combined: concatenated (no weights: every row ``repeat`` times per epoch, each epoch in its order and
                      cut to whole batches, `curriculum.EpochOrdered`) or, per source shuffled (reseeded every
                      epoch) and repeated, mixed by weight (`MapDataset.mix`)
    -> map: decode images, Qwen preprocessing, prompt token ids (threads or worker processes)
    -> drop rows whose images fail to decode (``on_error="skip"``), counted and listed
    -> batch(batch_size, drop_remainder) into a `PromptBatch`, left-padded to the smallest prompt bucket

Sharding is a strided slice of each source before shuffling, so the hosts of a multi-host run see disjoint rows
whose union is the data set, each host reshuffling only its own slice. Shapes are bucketed (DESIGN Principle 4)
and every bucket is known in advance: ``max(prompt_buckets)`` must cover ``max_prompt_length``.

`PromptIterator.get_state` is a JSON-serialisable dict (Grain's iterator state plus the drop counter), so
Orbax or a JSON file can store it beside the model; `PromptIterator.set_state` on a freshly built pipeline of
the same config continues with exactly the batches the saved one would have produced.

Slightly over the house's ~350 lines because every Grain stage of the pipeline (source, builder, admission
filter, collator, iterator) is here with the validation of its config; padding and the batch layout are in
`data.batch`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax.data import curriculum
from staged_vlm_jax.data.batch import PromptBatch, bucket, left_pad
from staged_vlm_jax.data.images import ImageInputs
from staged_vlm_jax.data.prompts import build_prompt, chat_prompt
from staged_vlm_jax.data.schema import (
    ON_ERROR_POLICIES,
    DataError,
    ErrorPolicy,
    Example,
    ImageRef,
    RowLocation,
    SkipCounter,
)
from staged_vlm_jax.data.screen import DataErrorLog, DataScreen, ScreenedSource
from staged_vlm_jax.data.sources import DataSource


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What a prompt pipeline reads and how it orders, shards, filters and batches it (validated on construction).

    ``weights`` None concatenates the sources (each row ``repeat`` times per epoch); otherwise the sources are
    mixed in these proportions and the mixture ends when the first source runs out of its ``num_epochs`` epochs
    (Grain's ``MapDataset.mix``). ``order`` (concatenated sources only) names a `curriculum.ORDERS` entry
    ("shuffle", reshuffled every epoch; "sequential"; "difficulty"; "difficulty_per_source"); ``drop_solved``
    drops rows with pass_rate 1. ``drop_remainder`` True cuts every
    epoch of concatenated sources to whole batches (EasyR1's ``drop_last``); False keeps a last, smaller batch
    (evaluation).
    ``num_epochs`` None repeats forever. ``shard_index`` / ``shard_count`` default to this
    JAX process and the process count. ``worker_count`` > 0 runs the map in that many processes (Grain's
    ``mp_prefetch``; needs absl flags parsed), ``worker_threads`` > 0 in threads of this process. Images are
    decoded and preprocessed in the map as ``images`` says (EasyR1's pre-resize, processor settings, resize
    kernel); ``verify_images`` also decodes each one once when the files are read, so a missing image
    fails (or is skipped) at start-up rather than when its row is first drawn.
    """

    sources: tuple[DataSource, ...]
    batch_size: int
    prompt_buckets: tuple[int, ...]
    max_prompt_length: int
    seed: int = 0
    weights: tuple[float, ...] | None = None
    num_epochs: int | None = 1
    shard_index: int = dataclasses.field(default_factory=jax.process_index)
    shard_count: int = dataclasses.field(default_factory=jax.process_count)
    worker_count: int = 0
    worker_threads: int = 0
    images: ImageInputs = ImageInputs()
    on_error: ErrorPolicy = "raise"
    verify_images: bool = False
    order: str = "shuffle"
    drop_solved: bool = False
    drop_remainder: bool = True

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: at least one data source is needed")
        if self.weights is not None:
            if len(self.weights) != len(self.sources):
                raise ValueError(
                    f"weights has {len(self.weights)} entries but sources has {len(self.sources)}; give one weight "
                    "per source, or none to concatenate them"
                )
            if not all(math.isfinite(weight) and weight > 0 for weight in self.weights):
                raise ValueError(f"weights must be finite and positive, got {list(self.weights)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be positive, got {self.max_prompt_length}")
        buckets = list(self.prompt_buckets)
        if not buckets or buckets != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"prompt_buckets must be positive and strictly increasing, got {buckets}")
        if buckets[-1] < self.max_prompt_length:
            raise ValueError(
                f"prompt_buckets {buckets} must reach max_prompt_length {self.max_prompt_length}: a longest kept "
                "prompt would otherwise get a shape outside the buckets"
            )
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be positive or None (repeat forever), got {self.num_epochs}")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index must be in [0, shard_count={self.shard_count}), got {self.shard_index}")
        if self.worker_count < 0 or self.worker_threads < 0:
            raise ValueError(
                f"worker_count and worker_threads must be non-negative, got {self.worker_count}, {self.worker_threads}"
            )
        if self.order not in curriculum.ORDERS:
            raise ValueError(f"order must be one of {sorted(curriculum.ORDERS)}, got {self.order!r}")
        if self.weights is not None and (self.order != "shuffle" or self.drop_solved):
            raise ValueError("order / drop_solved apply to concatenated sources; weighted mixes are shuffled")
        if any(source.repeat < 1 for source in self.sources):
            raise ValueError(f"source repeat counts must be >= 1, got {[source.repeat for source in self.sources]}")
        if self.on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {sorted(ON_ERROR_POLICIES)}, got {self.on_error!r}")


class ExampleSource:
    """A data file's rows as a Grain random-access source (``len`` and ``[index]``) of `Example`s.

    The file is read once; Examples hold lazy image references, so the whole set fits in memory cheaply and
    pickles to worker processes.
    """

    def __init__(self, examples: Sequence[Example], name: str) -> None:
        self._examples = tuple(examples)
        self.name = name

    @classmethod
    def screened(cls, screened: ScreenedSource) -> ExampleSource:
        return cls(screened.examples, str(screened.source.path))

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> Example:
        return self._examples[index]

    def __repr__(self) -> str:  # Grain shows it in pipeline summaries and errors
        return f"ExampleSource({self.name!r}, {len(self)} rows)"


def _source_seed(seed: int, index: int) -> int:
    """A shuffle seed per source, so equally long sources are not permuted alike."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def example_dataset(config: PipelineConfig, sources: Sequence[ExampleSource]) -> grain.MapDataset:
    """This host's Examples in training order: sharded, then epochs of the concatenated sources in their order
    (`curriculum.EpochOrdered`) or the shuffled sources mixed by weight.

    Raises ValueError naming ``batch_size`` if this host's shard of an epoch cannot fill one batch (when batches
    drop their remainder).
    """
    shards = [grain.MapDataset.source(source)[config.shard_index :: config.shard_count] for source in sources]
    if config.weights is None:
        blocks = [curriculum.unsolved(shard.repeat(source.repeat) if source.repeat > 1 else shard, config.drop_solved)
                  for shard, source in zip(shards, config.sources, strict=True)]  # fmt: skip
        shard_rows = sum(map(len, blocks))
        keep = shard_rows - shard_rows % config.batch_size if config.drop_remainder else shard_rows
        ordered = curriculum.EpochOrdered(blocks, config.order, config.seed, keep, config.num_epochs) if keep else []
        dataset = grain.MapDataset.source(ordered)  # empty when an epoch holds no whole batch: named below
    else:
        repeated = [
            shard.shuffle(_source_seed(config.seed, index)).repeat(config.num_epochs)
            for index, shard in enumerate(shards)
        ]
        dataset = grain.MapDataset.mix(repeated, list(config.weights))
        shard_rows = sum(len(shard) for shard in shards)
    if config.drop_remainder and min(shard_rows, len(dataset)) < config.batch_size:
        sizes = ", ".join(f"{source.name}: {len(shard)} rows" for source, shard in zip(sources, shards, strict=True))
        raise ValueError(
            f"batch_size {config.batch_size} is larger than shard {config.shard_index} of {config.shard_count} "
            f"of the data ({sizes}; {min(shard_rows, len(dataset))} rows to draw); lower batch_size or add data"
        )
    return dataset


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One row ready to batch: prompt token ids, its images in HF's packed layout, and the ground truth."""

    id: str
    input_ids: np.ndarray  # int32 [L]
    answer: str
    pixel_values: np.ndarray | None  # float32 [N, D], None without images
    image_grid_thw: np.ndarray  # int64 [I, 3], I may be 0


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """A row whose images could not be used under ``on_error="skip"``; `DataError` made picklable for workers."""

    where: RowLocation | str
    field: str
    message: str
    reason: str

    def error(self) -> DataError:
        return DataError(self.where, self.field, self.message, reason=self.reason)


class PromptBuilder:
    """The map stage: an `Example` -> `Prompt` (images loaded and preprocessed, token ids built).

    Under ``on_error="skip"`` a row whose image is missing, undecodable or rejected by the preprocessor becomes a
    `SkippedRow` for the main process to count; under ``"raise"`` the `DataError` propagates.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, images: ImageInputs, on_error: ErrorPolicy) -> None:
        self.tokenizer = tokenizer
        self.images = images
        self.on_error = on_error

    def __call__(self, example: Example) -> Prompt | SkippedRow:
        try:
            return self.prompt(example.id, example.problem, example.images, example.answer,
                               append_format=example.append_format)  # fmt: skip
        except DataError as error:
            if self.on_error == "raise":
                raise
            prefix = f"{error.where}: {error.field}: "
            return SkippedRow(error.where, error.field, str(error).removeprefix(prefix), error.reason)

    def prompt(self, prompt_id: str, text: str, images: Sequence[ImageRef], answer: str, *, append_format: bool,
               system_prompt: str | None = None) -> Prompt:  # fmt: skip
        """``text`` (one ``<image>`` per image) and its images as a `Prompt`: the images loaded and preprocessed, the
        token ids built (`build_prompt`). Raises `DataError` naming an image that cannot be loaded or processed."""
        return self._prompt(prompt_id, images, answer, lambda grids: build_prompt(
            self.tokenizer, text, grids, merge_size=self.images.settings.merge_size, system_prompt=system_prompt,
            problem_id=prompt_id, append_format=append_format))  # fmt: skip

    def chat(self, prompt_id: str, messages: Sequence[dict[str, Any]], images: Sequence[ImageRef]) -> Prompt:
        """Chat ``messages`` (one ``{"type": "image"}`` entry per image, in order) as a `Prompt` (`chat_prompt`)."""
        merge_size = self.images.settings.merge_size
        return self._prompt(prompt_id, images, "", lambda grids: chat_prompt(
            self.tokenizer, messages, grids, merge_size=merge_size, problem_id=prompt_id))  # fmt: skip

    def _prompt(self, prompt_id: str, images: Sequence[ImageRef], answer: str,
                token_ids: Callable[[np.ndarray], list[int]]) -> Prompt:  # fmt: skip
        """The images preprocessed, then ``token_ids`` of their grids."""
        pixels = [self._preprocess(image) for image in images]
        grids = np.array([grid for _, grid in pixels], dtype=np.int64).reshape(-1, 3)
        pixel_values = np.concatenate([values for values, _ in pixels]) if pixels else None
        return Prompt(prompt_id, np.asarray(token_ids(grids), np.int32), answer, pixel_values, grids)

    def _preprocess(self, image: ImageRef) -> tuple[np.ndarray, np.ndarray]:
        loaded = image.load(self.images.pre_resize)
        try:
            return self.images.preprocess(loaded)
        except ValueError as error:
            raise DataError(image.where, image.field, str(error), reason="unprocessable_image") from error


class PromptAdmission:
    """The filter stage, run in the main process so its counts are exact at every iterator state: drops the
    `SkippedRow`s of rows whose images failed in the map (``on_error="skip"``), counting them by reason in
    ``load_errors`` and listing them in ``log``. Rows the screen refused never reach it (`screen.DataScreen`).

    A stream that repeats forever would spin without end if every row were dropped, so ``epoch_rows`` consecutive
    drops (a whole epoch's worth, at most) stop it with a `DataError` naming ``sources`` and what was dropped.
    """

    def __init__(self, epoch_rows: int | None = None, sources: str = "", log: DataErrorLog | None = None) -> None:
        self.load_errors = SkipCounter()
        self.epoch_rows, self.sources, self.log = epoch_rows, sources, log
        self.dropped_in_a_row = 0

    def __call__(self, item: Prompt | SkippedRow) -> bool:
        self.load_errors.rows_seen += 1
        admitted = not isinstance(item, SkippedRow)
        if not admitted:
            error = item.error()
            self.load_errors.record(error)
            if self.log is not None:
                self.log.write([error], "skipped")
        self.dropped_in_a_row = 0 if admitted else self.dropped_in_a_row + 1
        if self.epoch_rows and self.dropped_in_a_row >= self.epoch_rows:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.load_errors.counts.items())
            message = (f"no usable prompt in {self.dropped_in_a_row} consecutive rows, a whole epoch ({reasons}); "
                       "fix the data")  # fmt: skip
            raise DataError(self.sources, "rows", message, reason="no_usable_rows")
        return admitted

    def get_state(self) -> dict[str, Any]:
        return {
            "load_rows_seen": self.load_errors.rows_seen,
            "load_errors": dict(self.load_errors.counts),
            "dropped_in_a_row": self.dropped_in_a_row,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.load_errors = SkipCounter(rows_seen=state["load_rows_seen"])
        self.load_errors.counts.update(state["load_errors"])
        self.dropped_in_a_row = state["dropped_in_a_row"]


class PromptCollator:
    """The batch stage: `Prompt`s -> one `PromptBatch`, left-padded with the tokenizer's pad id to a bucket."""

    def __init__(self, pad_token_id: int, prompt_buckets: Sequence[int]) -> None:
        self.pad_token_id = pad_token_id
        self.prompt_buckets = tuple(prompt_buckets)

    def __call__(self, prompts: Sequence[Prompt]) -> PromptBatch:
        width = bucket(max(len(prompt.input_ids) for prompt in prompts), self.prompt_buckets)
        input_ids, attention_mask = left_pad([prompt.input_ids for prompt in prompts], width, self.pad_token_id)
        answers = [prompt.answer for prompt in prompts]
        pixels = [prompt.pixel_values for prompt in prompts if prompt.pixel_values is not None]
        if not pixels:
            return PromptBatch(input_ids, attention_mask, answers)
        grids = np.concatenate([prompt.image_grid_thw for prompt in prompts])
        return PromptBatch(input_ids, attention_mask, answers, np.concatenate(pixels), grids)


class PromptIterator(Iterator[PromptBatch]):
    """This host's `PromptBatch`es, with an exactly restorable state and what was dropped: ``screened`` holds each
    source's screen (rows refused at start-up, over-long prompts), ``admission.load_errors`` the rows whose images
    failed later, in the map."""

    def __init__(
        self, iterator: grain.DatasetIterator, admission: PromptAdmission, screened: Sequence[ScreenedSource]
    ) -> None:
        self._iterator = iterator
        self.admission = admission
        self.screened = tuple(screened)

    def __next__(self) -> PromptBatch:
        return next(self._iterator)

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable (str keys; int, str, list and dict values): Grain's state plus the drop counters."""
        return {"grain": self._iterator.get_state(), "admission": self.admission.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, from `get_state` of a pipeline with the same config and data (``worker_count``
        included: with worker processes Grain interleaves the workers' outputs and its state has another shape)."""
        self._iterator.set_state(state["grain"])
        self.admission.set_state(state["admission"])

    def close(self) -> None:
        """Stop Grain's worker processes and threads now rather than at garbage collection."""
        self._iterator.close()


def prompt_pipeline(
    config: PipelineConfig, tokenizer: PreTrainedTokenizerFast, screen: DataScreen | None = None
) -> PromptIterator:
    """The RL prompt stream of ``config``'s sources for this host (``config.shard_index``), see the module docstring.

    ``screen`` (default: a new one for ``config``) gives each source's usable rows; pass a run's own so that a
    source is screened once and its refused rows are logged. Raises `DataError` for an unreadable file, a source
    without usable rows or (``on_error="raise"``) a bad row, and ValueError naming ``batch_size`` when this
    host's shard cannot fill one batch.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer ({tokenizer.name_or_path!r}) has no pad token to left-pad prompts with")
    if screen is None:
        screen = DataScreen(tokenizer, config.images, config.max_prompt_length, config.on_error,
                            verify_images=config.verify_images)  # fmt: skip
    screened = [screen(source) for source in config.sources]
    sources = [ExampleSource.screened(rows) for rows in screened]
    prompts = example_dataset(config, sources).map(PromptBuilder(tokenizer, config.images, config.on_error))
    dataset = prompts.to_iter_dataset(
        grain.ReadOptions(num_threads=config.worker_threads, prefetch_buffer_size=2 * config.worker_threads)
    )
    if config.worker_count:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
    # An upper bound on an epoch's rows for this host (all screened rows, each repeated as configured).
    epoch_rows = sum(source.repeat * len(rows) for source, rows in zip(config.sources, sources, strict=True))
    admission = PromptAdmission(epoch_rows, ", ".join(str(s.path) for s in config.sources), screen.log)
    batches = dataset.filter(admission).batch(
        config.batch_size,
        drop_remainder=config.drop_remainder,
        batch_fn=PromptCollator(tokenizer.pad_token_id, config.prompt_buckets),
    )
    return PromptIterator(iter(batches), admission, screened)
