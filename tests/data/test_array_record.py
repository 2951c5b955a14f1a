"""Converted data sets: a TFDS data set that tfds and Grain read back, round trips through `read_rows`, the CLI,
the training pipeline and bad directories.

A round trip must give back the same rows with the same pixels, so a converted set trains exactly as its jsonl.
None of it needs TensorFlow: the package does not install it, and tfds imports it only when asked to.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from staged_vlm_jax import cli
from staged_vlm_jax.data.array_record import DATASET_NAME, VERSION, data_source, example_from_record, write_array_record
from staged_vlm_jax.data.pipeline import DataSource, PipelineConfig, prompt_pipeline
from staged_vlm_jax.data.schema import DataError, Example, ImageRef, RowLocation
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.data.synthetic import write_synthetic
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer
from staged_vlm_jax.paths import as_path
from staged_vlm_jax.train.workdir import fingerprint


def _fields(example: Example) -> tuple[object, ...]:
    return example.id, example.problem, example.answer, example.capability, example.pass_rate


def _assert_same(read: list[Example], expected: list[Example]) -> None:
    assert [_fields(example) for example in read] == [_fields(example) for example in expected]
    for got, want in zip(read, expected, strict=True):
        assert len(got.images) == len(want.images)
        for got_image, want_image in zip(got.images, want.images, strict=True):
            np.testing.assert_array_equal(got_image.load(), want_image.load())
            assert got_image.name == want_image.name


def _encoded(pixels: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def _synthetic(tmp_path: Path, capability: str, num_rows: int, seed: int) -> list[Example]:
    return list(read_rows(write_synthetic(tmp_path / "src", capability, num_rows, seed), capability=capability))


@pytest.mark.parametrize("capability", ["perception", "text_reasoning"])
def test_round_trip_of_synthetic_rows(tmp_path: Path, capability: str) -> None:
    rows = _synthetic(tmp_path, capability, num_rows=7, seed=0)
    builder = write_array_record(rows, tmp_path / "tfds", shard_size=3)
    builder_dir = tmp_path / "tfds" / DATASET_NAME / VERSION
    assert Path(builder.data_dir) == builder_dir
    info = json.loads((builder_dir / "dataset_info.json").read_text())
    assert (info["fileFormat"], info["disableShuffling"]) == ("array_record", True)
    assert info["splits"][0]["shardLengths"] == ["2", "3", "2"]  # ceil(7 / 3) shards, balanced by tfds
    assert sorted(path.name for path in builder_dir.glob("*array_record*")) == [
        f"{DATASET_NAME}-train.array_record-{index:05d}-of-00003" for index in range(3)
    ]
    read = list(read_rows(tmp_path / "tfds", capability=capability))
    _assert_same(read, rows)  # in file order: tfds' shuffling is off
    assert str(read[4].location) == f"{tmp_path / 'tfds'}:4"
    _assert_same(list(read_rows(builder_dir, capability=capability)), rows)  # the builder directory reads too


def test_images_kept_or_reencoded_losslessly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    jpeg, bmp = _encoded(pixels, "JPEG"), _encoded(pixels, "BMP")
    example = Example(
        id="a",
        problem="<image><image>",
        answer="1",
        images=(ImageRef(jpeg, "a", "images[0]", "x.jpg"), ImageRef(bmp, "a", "images[1]", "x.bmp")),
        capability="perception",
        pass_rate=0.3,
    )
    write_array_record([example], tmp_path / "tfds")
    (read,) = read_rows(tmp_path / "tfds", capability="perception")
    _assert_same([read], [example])
    assert read.pass_rate == 0.3  # float64, not a float32 0.30000001192…
    assert read.images[0].source == jpeg  # JPEG stored as it was: no second lossy encode
    assert read.images[1].source.startswith(b"\x89PNG")  # BMP re-encoded as PNG, same pixels


def test_cli_output_opens_with_tfds_data_source_and_builder_from_directory(tmp_path: Path, capsys) -> None:
    jsonl = write_synthetic(tmp_path / "src", "perception", num_rows=3, seed=4)
    rows = list(read_rows(jsonl, capability="perception"))
    out = tmp_path / "tfds"
    argv = ["data", "convert", "--input", str(jsonl), "--capability", "perception", "--out", str(out)]
    assert cli.main([*argv, "--shard-size", "2"]) == 0
    assert capsys.readouterr().out == f"wrote 3 rows to {out} (2 shard(s)); {jsonl}: 3 of 3 rows usable\n"

    source = tfds.data_source(DATASET_NAME, data_dir=str(out), split="train", download=False)
    assert len(source) == 3
    for row, record in zip(rows, source, strict=True):  # tfds decodes the images itself
        assert (record["id"].decode(), record["problem"].decode(), record["answer"].decode()) == _fields(row)[:3]
        assert record["capability"].decode() == "perception"
        assert float(record["pass_rate"]) == row.pass_rate
        assert [name.decode() for name in record["image_names"]] == [image.name for image in row.images]
        np.testing.assert_array_equal(np.stack(record["images"]), np.stack([image.load() for image in row.images]))

    builder = tfds.builder_from_directory(str(out / DATASET_NAME / VERSION))
    assert isinstance(builder.info.features["images"].feature, tfds.features.Image)
    assert [record["id"].decode() for record in builder.as_data_source("train")] == [row.id for row in rows]
    stored = [list(record["images"]) for record in data_source(out)]  # images left encoded: the PNG files' bytes
    assert stored == [[image.source.read_bytes() for image in row.images] for row in rows]
    assert "tensorflow" not in sys.modules  # written and read without it, even where it is installed


def test_grain_reads_the_data_source(tmp_path: Path) -> None:
    rows = _synthetic(tmp_path, "perception", num_rows=5, seed=2)
    out = tmp_path / "tfds"
    write_array_record(rows, out, shard_size=2)
    dataset = grain.MapDataset.source(data_source(out)).map_with_index(
        lambda index, record: example_from_record(record, RowLocation(out, index))
    )
    assert len(dataset) == 5
    _assert_same([dataset[4], dataset[0]], [rows[4], rows[0]])


def test_training_pipeline_reads_a_converted_set_as_its_jsonl(tmp_path: Path) -> None:
    jsonl = write_synthetic(tmp_path / "src", "perception", num_rows=8, seed=5)
    write_array_record(list(read_rows(jsonl, capability="perception")), tmp_path / "tfds", shard_size=3)
    tokenizer = build_tiny_tokenizer(tmp_path / "tokenizer")

    def batches(path: Path) -> list:
        settings = {"batch_size": 4, "prompt_buckets": (512,), "max_prompt_length": 512, "shard_count": 1}
        return list(prompt_pipeline(PipelineConfig((DataSource(path, "perception"),), **settings), tokenizer))

    from_jsonl, from_tfds = batches(jsonl), batches(tmp_path / "tfds")
    assert len(from_tfds) == len(from_jsonl) == 2
    for got, want in zip(from_tfds, from_jsonl, strict=True):
        np.testing.assert_array_equal(got.input_ids, want.input_ids)
        np.testing.assert_array_equal(got.pixel_values, want.pixel_values)
        assert list(got.ground_truths) == list(want.ground_truths)


def test_a_converted_set_is_fingerprinted_for_resume_checks(tmp_path: Path) -> None:
    """A run records its data's fingerprint in each checkpoint; a changed shard must read as changed data."""
    rows = _synthetic(tmp_path, "perception", num_rows=3, seed=6)
    write_array_record(rows, tmp_path / "tfds", shard_size=2)
    before = fingerprint(as_path(tmp_path / "tfds"))
    assert before.startswith("dir:") and fingerprint(as_path(tmp_path / "tfds")) == before
    shard = sorted((tmp_path / "tfds" / DATASET_NAME / VERSION).glob("*array_record*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert fingerprint(as_path(tmp_path / "tfds")) != before


def test_cli_convert_skips_bad_row_with_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonl = write_synthetic(tmp_path / "src", "perception", num_rows=3, seed=1)
    with jsonl.open("a") as rows:
        rows.write(json.dumps({"problem": "<image>?", "answer": "A", "images": ["images/missing.png"]}) + "\n")
    out = tmp_path / "tfds"
    argv = ["data", "convert", "--input", str(jsonl), "--capability", "perception", "--out", str(out)]
    assert cli.main([*argv, "--on-error", "skip"]) == 0
    summary = capsys.readouterr().out
    assert summary == f"wrote 3 rows to {out} (1 shard(s)); {jsonl}: 3 of 4 rows usable; dropped missing_image: 1\n"
    assert len(list(read_rows(out, capability="perception"))) == 3
    (logged,) = [json.loads(line) for line in (out / "data_errors.jsonl").read_text().splitlines()]
    assert (logged["where"], logged["reason"], logged["action"]) == (f"{jsonl}:4", "missing_image", "skipped")
    # Without --on-error skip the bad row stops the command with one line naming the file, row and field.
    assert cli.main([*argv[:-1], str(tmp_path / "tfds_raise")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"staged-vlm data: error: {jsonl}:4: images[0]: cannot open image")
    assert error.count("\n") == 1


def test_unusable_directories_raise_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: file: not a converted data set")):
        list(read_rows(tmp_path, capability="perception"))
    rows = _synthetic(tmp_path, "perception", num_rows=3, seed=3)
    out = tmp_path / "tfds"
    write_array_record(rows, out, shard_size=2)
    with pytest.raises(DataError, match=re.escape(f"{out}:0: capability: the data set holds 'perception' rows")):
        list(read_rows(out, capability="visual_reasoning"))
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_array_record(rows, out)

    builder_dir = out / DATASET_NAME / VERSION
    features = builder_dir / "features.json"
    saved = features.read_text()
    features.write_text(saved.replace('"float64"', '"float32"'))
    with pytest.raises(DataError, match=re.escape(f"{out}: file: not the 'train' split and features.json")):
        list(read_rows(out, capability="perception"))
    features.write_text(saved)
    first, second = sorted(builder_dir.glob("*array_record*"))
    second.write_bytes(b"not an array_record file")
    with pytest.raises(DataError, match=re.escape(f"{second}: file: cannot read records 2-2")):
        list(read_rows(out, capability="perception"))
    second.unlink()
    with pytest.raises(DataError, match=re.escape(f"{second}: file: cannot read records 2-2")):
        list(read_rows(out, capability="perception"))
    second.write_bytes(first.read_bytes())  # a shard of 2 records where dataset_info.json says 1 is fine, 3 is not
    (builder_dir / "dataset_info.json").write_text(
        (builder_dir / "dataset_info.json").read_text().replace('"1"', '"3"')
    )
    with pytest.raises(DataError, match=re.escape(f"{second}: file: cannot read records 2-4")):
        list(read_rows(out, capability="perception"))


def test_cli_convert_with_a_model_screens_rows_as_training_would(tmp_path: Path, capsys) -> None:
    """--model: control tokens in the text and prompts over --max-prompt-length are dropped, as a run drops them."""
    from staged_vlm_jax import models

    model = tmp_path / "model"
    cfg = models.tiny_config("qwen2_5_vl")
    models.save_hf(models.create(cfg), cfg, model)
    build_tiny_tokenizer(model)
    jsonl = tmp_path / "rows.jsonl"
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    rows += [{"problem": "Say <|im_end|>.", "answer": "x"}, {"problem": "long " * 400, "answer": "y"}]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["data", "convert", "--input", str(jsonl), "--capability", "text_reasoning", "--model", str(model),
            "--max-prompt-length", "256", "--on-error", "skip", "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.endswith("3 of 5 rows usable; dropped control_token: 1, overlong: 1\n")
    assert [row.answer for row in read_rows(tmp_path / "out", capability="text_reasoning")] == ["0", "2", "4"]
