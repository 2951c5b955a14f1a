"""Epochs and row orders of a stage: every epoch reshuffled and cut to whole batches (EasyR1's drop_last),
difficulty sorting (pass_rate descending, seeded ties; per source), dropping solved rows, per-source repeats —
checked on the Examples the pipeline draws."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from staged_vlm_jax.data.pipeline import DataSource, ExampleSource, PipelineConfig, example_dataset
from staged_vlm_jax.data.schema import DataError
from staged_vlm_jax.data.sources import read_rows

RATES = [0.5, 1.0, 0.25, 0.5, 0.75, 1.0, 0.5, 0.0, 0.5, 0.25]


def _rows(path: Path, rates: list[float | None]) -> DataSource:
    with path.open("w") as out:
        for index, rate in enumerate(rates):
            row = {"id": f"r{index}", "problem": f"What is {index} + 1?", "answer": str(index + 1)}
            if rate is not None:
                row["pass_rate"] = rate
            out.write(json.dumps(row) + "\n")
    return DataSource(path, "text_reasoning")


def _drawn(*sources: DataSource, count: int | None = None, batch_size: int = 1, **options) -> list:
    config = PipelineConfig(tuple(sources), batch_size=batch_size, prompt_buckets=(64,), max_prompt_length=64,
                            shard_index=0, shard_count=1, **options)  # fmt: skip
    read = [
        ExampleSource(list(read_rows(s.path, capability=s.capability, verify_images=False)), str(s.path))
        for s in sources
    ]
    dataset = example_dataset(config, read)
    return [dataset[index] for index in range(count if count is not None else len(dataset))]


def test_difficulty_order_is_easiest_first_with_seeded_ties(tmp_path: Path) -> None:
    source = _rows(tmp_path / "rows.jsonl", RATES)
    first = _drawn(source, order="difficulty", seed=0, num_epochs=1)
    rates = [example.pass_rate for example in first]
    assert rates == sorted(RATES, reverse=True)
    assert sorted(example.id for example in first) == sorted(f"r{i}" for i in range(len(RATES)))
    tie_orders = {
        tuple(e.id for e in _drawn(source, order="difficulty", seed=seed, num_epochs=1) if e.pass_rate == 0.5)
        for seed in range(6)
    }
    assert len(tie_orders) > 1  # ties are shuffled, by the seed
    again = _drawn(source, order="difficulty", seed=0, num_epochs=1)
    assert [e.id for e in again] == [e.id for e in first]
    # Every epoch repeats the same easy-to-hard pass.
    two_epochs = _drawn(source, order="difficulty", seed=0, num_epochs=2)
    assert [e.id for e in two_epochs] == [e.id for e in first] * 2


def test_every_epoch_is_a_new_shuffle_cut_to_whole_batches(tmp_path: Path) -> None:
    """10 rows at batch 4: each epoch is 8 distinct rows (2 batches; its last 2 rows dropped), a new permutation
    every epoch (EasyR1's RandomSampler with drop_last), the same for the same seed; endless with num_epochs None."""
    source = _rows(tmp_path / "rows.jsonl", RATES)
    drawn = _drawn(source, batch_size=4, num_epochs=3, seed=5)
    assert len(drawn) == 3 * 8
    epochs = [[example.id for example in drawn[8 * e : 8 * e + 8]] for e in range(3)]
    assert all(len(set(ids)) == 8 for ids in epochs)
    assert len({tuple(ids) for ids in epochs}) == 3
    assert [example.id for example in _drawn(source, batch_size=4, num_epochs=3, seed=5)] == sum(epochs, [])
    endless = _drawn(source, batch_size=4, num_epochs=None, seed=5, count=24)
    assert [example.id for example in endless] == sum(epochs, [])
    assert [e.id for e in _drawn(source, batch_size=4, num_epochs=3, seed=6)] != sum(epochs, [])


def test_per_source_orders_keep_the_sources_in_turn(tmp_path: Path) -> None:
    """The paper's capability x difficulty file: source blocks in the given order, each easiest first, every pass
    the same."""
    a = _rows(tmp_path / "a.jsonl", [0.25, 0.75, 0.5])
    b = _rows(tmp_path / "b.jsonl", [0.0, 1.0, 0.5, 0.75])
    drawn = _drawn(b, a, order="difficulty_per_source", num_epochs=2)
    blocks = [(Path(example.location.file).stem, example.pass_rate) for example in drawn[:7]]
    assert blocks == [("b", 1.0), ("b", 0.75), ("b", 0.5), ("b", 0.0), ("a", 0.75), ("a", 0.5), ("a", 0.25)]
    assert [e.id for e in drawn[7:]] == [e.id for e in drawn[:7]]
    sequential = _drawn(b, a, order="sequential", num_epochs=2)  # the capability-only curriculum: file order
    assert [e.id for e in sequential] == ["r0", "r1", "r2", "r3", "r0", "r1", "r2"] * 2
    assert [Path(e.location.file).stem for e in sequential[:7]] == ["b"] * 4 + ["a"] * 3


@pytest.mark.parametrize("order", ["difficulty", "shuffle"])
def test_drop_solved_removes_pass_rate_one(tmp_path: Path, order: str) -> None:
    drawn = _drawn(_rows(tmp_path / "rows.jsonl", RATES), order=order, drop_solved=True, num_epochs=1)
    assert len(drawn) == RATES.count(1.0) * -1 + len(RATES)
    assert all(example.pass_rate < 1.0 for example in drawn)


def test_difficulty_without_pass_rate_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    with pytest.raises(DataError, match=rf"{path}:3: pass_rate: is missing"):
        _drawn(_rows(path, [0.5, 0.2, None, 0.1]), order="difficulty", num_epochs=1)


def test_source_repeats_give_each_row_its_count_per_epoch(tmp_path: Path) -> None:
    a = _rows(tmp_path / "a.jsonl", [0.5] * 3)
    b = DataSource(_rows(tmp_path / "b.jsonl", [0.5] * 4).path, "text_reasoning", repeat=3)
    drawn = _drawn(a, b, num_epochs=1)
    counts = Counter((str(example.location.file), example.id) for example in drawn)
    assert len(drawn) == 3 + 4 * 3
    assert {count for (path, _), count in counts.items() if path.endswith("a.jsonl")} == {1}
    assert {count for (path, _), count in counts.items() if path.endswith("b.jsonl")} == {3}


def test_order_settings_are_checked(tmp_path: Path) -> None:
    source = _rows(tmp_path / "rows.jsonl", RATES)
    with pytest.raises(ValueError, match="order must be one of"):
        _drawn(source, order="hardest_first")
    with pytest.raises(ValueError, match="weighted mixes are shuffled"):
        _drawn(source, source, weights=(1.0, 1.0), order="difficulty")
