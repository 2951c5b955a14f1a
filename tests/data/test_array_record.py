"""Converted array_record data sets: round trips through `read_rows`, the CLI, bad rows, and Grain access.

A round trip must give back the same rows with the same pixels, so a converted set trains exactly as its jsonl.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import grain
import numpy as np
import pytest
from PIL import Image

from staged_vlm_jax import cli
from staged_vlm_jax.data.array_record import example_from_record, shard_paths, write_array_record
from staged_vlm_jax.data.schema import DataError, Example, ImageRef, RowLocation
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.data.synthetic import write_synthetic


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


@pytest.mark.parametrize("capability", ["perception", "text_reasoning"])
def test_round_trip_of_synthetic_rows(tmp_path: Path, capability: str) -> None:
    rows = list(read_rows(write_synthetic(tmp_path / "src", capability, num_rows=7, seed=0), capability=capability))
    out = write_array_record(rows, tmp_path / "tfds", shard_size=3)
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    assert info["splits"][0]["shardLengths"] == ["3", "3", "1"]
    assert [path.name for path in shard_paths(out)] == [
        f"staged_vlm_rows-train.array_record-{index:05d}-of-00003" for index in range(3)
    ]
    read = list(read_rows(out, capability=capability))
    _assert_same(read, rows)
    assert str(read[4].location) == f"{out}:4"


def test_images_kept_or_reencoded_losslessly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    jpeg, bmp = _encoded(pixels, "JPEG"), _encoded(pixels, "BMP")
    example = Example(
        id="a",
        problem="<image><image>",
        answer="1",
        images=(ImageRef(jpeg, "a", "images[0]", "x.jpg"), ImageRef(bmp, "a", "images[1]", "x.bmp")),
        capability="perception",
        pass_rate=0.5,
    )
    (read,) = read_rows(write_array_record([example], tmp_path / "tfds"), capability="perception")
    _assert_same([read], [example])
    assert read.images[0].source == jpeg  # JPEG stored as it was: no second lossy encode
    assert read.images[1].source.startswith(b"\x89PNG")  # BMP re-encoded as PNG, same pixels


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


def test_grain_reads_records_directly(tmp_path: Path) -> None:
    rows = list(read_rows(write_synthetic(tmp_path / "src", "perception", num_rows=5, seed=2), capability="perception"))
    out = write_array_record(rows, tmp_path / "tfds", shard_size=2)
    source = grain.sources.ArrayRecordDataSource([str(path) for path in shard_paths(out)])
    assert len(source) == 5
    _assert_same([example_from_record(source[index], RowLocation(out, index)) for index in (4, 0)], [rows[4], rows[0]])


def test_unusable_directories_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a converted data set directory"):
        list(read_rows(tmp_path, capability="perception"))
    rows = list(read_rows(write_synthetic(tmp_path / "src", "perception", num_rows=1, seed=3), capability="perception"))
    out = write_array_record(rows, tmp_path / "tfds")
    with pytest.raises(DataError, match=re.escape(f"{out}:0: capability: the data set holds 'perception' rows")):
        list(read_rows(out, capability="visual_reasoning"))
    with pytest.raises(FileExistsError, match="not an empty directory"):
        write_array_record(rows, out)
    (shard,) = shard_paths(out)
    shard.write_bytes(b"not an array_record file")
    with pytest.raises(DataError, match=re.escape(f"{shard}: file: missing, or not an array_record file")):
        list(read_rows(out, capability="perception"))


def test_tensorflow_datasets_reads_the_directory(tmp_path: Path) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    rows = list(read_rows(write_synthetic(tmp_path / "src", "perception", num_rows=3, seed=4), capability="perception"))
    out = write_array_record(rows, tmp_path / "tfds", shard_size=2)
    source = tfds.builder_from_directory(str(out)).as_data_source()["train"]
    assert len(source) == 3
    record = source[2]
    assert record["id"].decode() == rows[2].id
    assert record["pass_rate"].decode() == json.dumps(rows[2].pass_rate)
    assert list(record["image_names"]) == [image.name.encode() for image in rows[2].images]
    (image,) = record["images"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image)).convert("RGB")), rows[2].images[0].load())


def test_cli_convert_with_a_model_screens_rows_as_training_would(tmp_path: Path, capsys) -> None:
    """--model: control tokens in the text and prompts over --max-prompt-length are dropped, as a run drops them."""
    from staged_vlm_jax import models
    from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer

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
