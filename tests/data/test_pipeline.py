"""Prompt pipeline: determinism, exact resume, host sharding, mixtures, filtering and bucketed batches."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from staged_vlm_jax.data.batch import PromptBatch, images_per_row
from staged_vlm_jax.data.pipeline import (
    DataSource,
    ExampleSource,
    PipelineConfig,
    PromptBuilder,
    example_dataset,
    prompt_pipeline,
)
from staged_vlm_jax.data.prompts import FORMAT_INSTRUCTION, image_token_id
from staged_vlm_jax.data.schema import DataError
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.data.synthetic import write_synthetic
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer

ROWS = 24
BUCKETS = (128, 192, 256, 384, 512)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("pipeline")
    return {
        "tokenizer": build_tiny_tokenizer(root / "tokenizer"),
        "perception": DataSource(write_synthetic(root, "perception", ROWS, seed=3), "perception"),
        "text": DataSource(write_synthetic(root, "text_reasoning", ROWS, seed=3), "text_reasoning"),
        "root": root,
    }


def config(*sources: DataSource, **overrides: object) -> PipelineConfig:
    settings = {
        "batch_size": 4,
        "prompt_buckets": BUCKETS,
        "max_prompt_length": BUCKETS[-1],
        "seed": 0,
        "shard_index": 0,
        "shard_count": 1,
    }
    return PipelineConfig(tuple(sources), **{**settings, **overrides})


def unpadded(batch: PromptBatch) -> list[tuple[int, ...]]:
    return [tuple(ids[mask == 1].tolist()) for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True)]


def assert_same_batches(first: list[PromptBatch], second: list[PromptBatch]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.attention_mask, b.attention_mask)
        assert list(a.ground_truths) == list(b.ground_truths)
        assert (a.pixel_values is None) == (b.pixel_values is None)
        if a.pixel_values is not None:
            np.testing.assert_array_equal(a.pixel_values, b.pixel_values)
            np.testing.assert_array_equal(a.image_grid_thw, b.image_grid_thw)


def example_ids(cfg: PipelineConfig, count: int | None = None) -> list[str]:
    sources = [
        ExampleSource(list(read_rows(source.path, capability=source.capability, verify_images=False)), str(source.path))
        for source in cfg.sources
    ]
    dataset = example_dataset(cfg, sources)
    return [dataset[index].id for index in range(count if count is not None else len(dataset))]


def test_same_seed_same_batches_and_another_seed_another_order(data):
    cfg = config(data["perception"], data["text"], num_epochs=1)
    assert_same_batches(list(prompt_pipeline(cfg, data["tokenizer"])), list(prompt_pipeline(cfg, data["tokenizer"])))
    assert example_ids(cfg) == example_ids(cfg)
    assert example_ids(cfg) != example_ids(dataclasses.replace(cfg, seed=1))
    assert sorted(example_ids(cfg)) == sorted(example_ids(dataclasses.replace(cfg, seed=1)))


@pytest.mark.parametrize("worker_threads", [0, 2])
def test_restored_state_continues_exactly_across_epochs(data, worker_threads):
    cfg = config(data["perception"], data["text"], num_epochs=2, worker_threads=worker_threads)
    uninterrupted = prompt_pipeline(cfg, data["tokenizer"])
    for _ in range(5):  # mid-epoch: an epoch here is 48 rows = 12 batches
        next(uninterrupted)
    saved = json.loads(json.dumps(uninterrupted.get_state()))
    expected = list(uninterrupted)  # the rest of epoch 1 and all of (reshuffled) epoch 2
    assert len(expected) == 2 * 2 * ROWS // 4 - 5

    resumed = prompt_pipeline(cfg, data["tokenizer"])
    resumed.set_state(saved)
    assert_same_batches(list(resumed), expected)
    assert resumed.admission.load_errors.rows_seen == uninterrupted.admission.load_errors.rows_seen == 4 * ROWS


def test_two_shards_see_disjoint_rows_whose_union_is_the_data(data):
    whole = config(data["perception"], data["text"], num_epochs=1)
    shards = [dataclasses.replace(whole, shard_index=index, shard_count=2) for index in range(2)]
    ids = [example_ids(shard) for shard in shards]
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(example_ids(whole))
    assert len(ids[0]) == len(ids[1]) == ROWS

    def batched_rows(cfg: PipelineConfig) -> tuple[Counter, Counter]:
        prompts, answers = Counter(), Counter()
        for batch in prompt_pipeline(cfg, data["tokenizer"]):
            prompts.update(unpadded(batch))
            answers.update(batch.ground_truths)
        return prompts, answers

    (prompts_0, answers_0), (prompts_1, answers_1) = (batched_rows(shard) for shard in shards)
    assert (prompts_0 + prompts_1, answers_0 + answers_1) == batched_rows(whole)


def test_mixture_follows_weights_and_is_deterministic(data):
    cfg = config(data["perception"], data["text"], weights=(3.0, 1.0), num_epochs=None)
    drawn = example_ids(cfg, 400)
    perception = sum(row.startswith("perception") for row in drawn) / len(drawn)
    assert perception == pytest.approx(0.75, abs=0.03)
    assert drawn == example_ids(cfg, 400)
    assert len(set(drawn)) == 2 * ROWS  # every row of both sources is drawn
    assert next(prompt_pipeline(cfg, data["tokenizer"])).input_ids.shape[0] == 4


def test_overlong_prompts_are_dropped_and_counted(data):
    cfg = config(data["perception"], data["text"], batch_size=1, num_epochs=1)
    builder = PromptBuilder(data["tokenizer"], cfg.images, "raise")
    sources = [
        ExampleSource(list(read_rows(s.path, capability=s.capability, verify_images=False)), str(s.path))
        for s in cfg.sources
    ]
    lengths = sorted(len(builder(source[i]).input_ids) for source in sources for i in range(len(source)))
    limit = lengths[len(lengths) // 2]
    expected_dropped = sum(length > limit for length in lengths)
    assert 0 < expected_dropped < len(lengths)

    pipeline = prompt_pipeline(dataclasses.replace(cfg, max_prompt_length=limit), data["tokenizer"])
    batches = list(pipeline)
    assert len(batches) == len(lengths) - expected_dropped
    assert all(batch.attention_mask.sum() <= limit for batch in batches)
    assert sum(screened.dropped_by_reason()["overlong"] for screened in pipeline.screened) == expected_dropped
    assert sum(screened.rows_seen for screened in pipeline.screened) == len(lengths)


def test_a_source_whose_every_prompt_is_too_long_is_refused_before_streaming(data):
    cfg = config(data["text"], num_epochs=None, max_prompt_length=8)
    expected = (r"text_reasoning\.jsonl: rows: no usable row \(.*0 of 24 rows usable; dropped overlong: 24\); "
                r".*data\.max_prompt_length")  # fmt: skip
    with pytest.raises(DataError, match=expected):
        prompt_pipeline(cfg, data["tokenizer"])


def test_a_stream_whose_every_image_fails_late_stops_instead_of_spinning(data, tmp_path):
    """Truncated images pass the screen (it reads headers only) and fail in the map; with num_epochs=None and
    on_error="skip" every row would be dropped forever, so a whole epoch of drops stops the stream."""
    rows = [json.loads(line) for line in Path(data["perception"].path).read_text().splitlines()]
    root = Path(data["perception"].path).parent
    for row in rows:
        image = (root / row["images"][0]).read_bytes()
        (tmp_path / Path(row["images"][0]).name).write_bytes(image[: len(image) // 2])
        row["images"] = [Path(row["images"][0]).name]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = config(DataSource(tmp_path / "rows.jsonl", "perception"), num_epochs=None, on_error="skip")
    with pytest.raises(DataError, match=rf"rows: no usable prompt in {ROWS} consecutive rows.*{ROWS} corrupt_image"):
        next(prompt_pipeline(cfg, data["tokenizer"]))


def test_text_only_batches_have_no_images(data):
    batch = next(prompt_pipeline(config(data["text"]), data["tokenizer"]))
    assert batch.pixel_values is None and batch.image_grid_thw is None
    assert len(batch.ground_truths) == 4


def test_a_source_without_the_format_instruction_keeps_its_prompts_bare(data):
    """Caption SFT: a source with ``append_format=False`` gets the chat template around its problem text alone."""
    tokenizer = data["tokenizer"]
    bare = dataclasses.replace(data["text"], append_format=False)
    with_format, without = (next(prompt_pipeline(config(source, seed=1), tokenizer)) for source in (data["text"], bare))
    decoded = [[tokenizer.decode(row) for row in unpadded(batch)] for batch in (with_format, without)]
    assert all(FORMAT_INSTRUCTION in text for text in decoded[0])
    assert [text.replace(f" {FORMAT_INSTRUCTION}", "") for text in decoded[0]] == decoded[1]


def test_batches_are_left_padded_to_the_smallest_fitting_bucket(data):
    tokenizer = data["tokenizer"]
    for batch in prompt_pipeline(config(data["perception"], data["text"]), tokenizer):
        lengths = batch.attention_mask.sum(axis=1)
        width = batch.input_ids.shape[1]
        assert width == min(b for b in BUCKETS if b >= lengths.max())
        assert batch.input_ids.dtype == np.int32 and batch.attention_mask.shape == batch.input_ids.shape
        for ids, mask, length in zip(batch.input_ids, batch.attention_mask, lengths, strict=True):
            assert mask[width - length :].all() and not mask[: width - length].any()
            assert (ids[: width - length] == tokenizer.pad_token_id).all()
        if batch.pixel_values is not None:
            # every image belongs to exactly one row's placeholders (the per-row layout can be cut from it)
            per_row = images_per_row(batch.input_ids, batch.image_grid_thw, image_token_id(tokenizer), merge_size=2)
            assert sum(per_row) == len(batch.image_grid_thw)
            assert batch.pixel_values.shape[0] == int(np.prod(batch.image_grid_thw, axis=1).sum())


def test_rows_with_missing_images_are_skipped_and_counted(data, tmp_path):
    rows = Path(data["perception"].path).read_text().splitlines()
    broken = json.loads(rows[0])
    (tmp_path / "rows.jsonl").write_text("\n".join([json.dumps({**broken, "images": ["gone.png"]}), *rows]) + "\n")
    source = DataSource(tmp_path / "rows.jsonl", "perception", image_root=Path(data["perception"].path).parent)
    pipeline = prompt_pipeline(config(source, batch_size=5, on_error="skip"), data["tokenizer"])
    assert len(list(pipeline)) == ROWS // 5
    assert pipeline.screened[0].dropped_by_reason() == Counter({"missing_image": 1})  # found at start-up
    with pytest.raises(DataError, match="gone.png"):
        list(prompt_pipeline(config(source, batch_size=5), data["tokenizer"]))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"weights": (1.0,)}, "weights"),
        ({"max_prompt_length": 1024}, "prompt_buckets"),
        ({"shard_index": 2, "shard_count": 2}, "shard_index"),
        ({"on_error": "ignore"}, "on_error"),
    ],
)
def test_bad_settings_name_their_key(data, overrides, key):
    with pytest.raises(ValueError, match=key):
        config(data["perception"], data["text"], **overrides)


def test_batch_larger_than_the_shard_names_batch_size(data):
    with pytest.raises(ValueError, match="batch_size 13 is larger than shard 1 of 4"):
        prompt_pipeline(config(data["text"], batch_size=13, shard_index=1, shard_count=4), data["tokenizer"])


def test_two_jax_processes_see_disjoint_rows_whose_union_is_the_data(data):
    """Two local processes joined by jax.distributed: each host's default shard, no explicit shard settings."""
    import os
    import subprocess
    import sys

    import portpicker

    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    worker = Path(__file__).with_name("two_host_worker.py")
    rows = str(data["perception"].path)
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(port), str(i), rows], stdout=subprocess.PIPE, env=env, text=True
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ids = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    whole = config(data["perception"], num_epochs=1)
    assert sorted(ids[0] + ids[1]) == sorted(example_ids(whole))
