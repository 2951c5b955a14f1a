"""`Example` validation and the json / jsonl / parquet / TSV readers: round trips and every bad-input case.

Each bad input must give a `DataError` whose message starts with ``file:row`` and names the field, or, under
``on_error="skip"``, be counted by reason with a one-line summary while the good rows still come through.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from staged_vlm_jax.data.schema import (
    CAPABILITIES,
    DataError,
    Example,
    ImageRef,
    RowLocation,
    SkipCounter,
    mcq_problem,
)
from staged_vlm_jax.data.sources import read_rows


def _pixels(seed: int, height: int = 6, width: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


GOOD_ROW = {"problem": "What is 1 + 1?", "answer": "2"}


def test_capabilities_are_the_three_stages():
    assert CAPABILITIES == ("perception", "text_reasoning", "visual_reasoning")


def test_jsonl_round_trip_with_relative_absolute_and_text_only_rows(tmp_path):
    (tmp_path / "img").mkdir()
    first, second = _pixels(0), _pixels(1)
    (tmp_path / "img" / "a.png").write_bytes(_png_bytes(first))
    (tmp_path / "b.png").write_bytes(_png_bytes(second))
    path = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {
                "id": "r0",
                "problem": "<image>Compare with <image>.",
                "answer": "A",
                "images": ["img/a.png", str(tmp_path / "b.png")],
                "pass_rate": 0.25,
                "predictions": ["ignored"],
            },
            {**GOOD_ROW},  # text only: no images key, no id, no pass_rate
            {**GOOD_ROW, "images": []},
        ],
    )
    examples = list(read_rows(path, capability="visual_reasoning"))
    assert [example.id for example in examples] == ["r0", "mixed:2", "mixed:3"]
    assert examples[0].pass_rate == 0.25 and examples[1].pass_rate is None
    assert examples[0].location == RowLocation(path, 1)
    assert [image.field for image in examples[0].images] == ["images[0]", "images[1]"]
    np.testing.assert_array_equal(examples[0].images[0].load(), first)
    np.testing.assert_array_equal(examples[0].images[1].load(), second)
    assert examples[0].images[0].load().dtype == np.uint8
    assert examples[1].images == () and examples[2].images == ()
    assert {example.capability for example in examples} == {"visual_reasoning"}


def test_image_root_overrides_the_data_files_folder(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "a.png").write_bytes(_png_bytes(_pixels(0)))
    path = _write_jsonl(tmp_path / "rows.jsonl", [{**GOOD_ROW, "problem": "<image>q", "images": ["a.png"]}])
    (example,) = read_rows(path, capability="perception", image_root=tmp_path / "pictures")
    assert example.images[0].source == tmp_path / "pictures" / "a.png"


def test_rgba_and_grey_images_are_converted_to_rgb(tmp_path):
    Image.new("RGBA", (4, 3), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    Image.new("L", (4, 3), 77).save(tmp_path / "grey.png")
    row = {**GOOD_ROW, "problem": "<image><image>", "images": ["rgba.png", "grey.png"]}
    (example,) = read_rows(_write_jsonl(tmp_path / "rows.jsonl", [row]), capability="perception")
    rgba, grey = (image.load() for image in example.images)
    assert rgba.shape == grey.shape == (3, 4, 3)
    assert (rgba == [10, 20, 30]).all() and (grey == 77).all()


def test_json_array_rows_are_indexed_from_zero_and_json_lines_in_a_json_file_are_read(tmp_path):
    array = tmp_path / "array.json"
    array.write_text(json.dumps([GOOD_ROW, {"problem": "x", "answer": 5}], indent=2))
    with pytest.raises(DataError, match=rf"^{re.escape(str(array))}:1: answer: expected a string") as raised:
        list(read_rows(array, capability="text_reasoning"))
    assert raised.value.reason == "answer_not_string"
    lines = _write_jsonl(tmp_path / "lines.json", [GOOD_ROW, GOOD_ROW])
    assert [example.id for example in read_rows(lines, capability="text_reasoning")] == ["lines:1", "lines:2"]


def test_the_papers_pipeline_keys_are_read_with_key_overrides(tmp_path):
    (tmp_path / "train_00009.jpg").write_bytes(_png_bytes(_pixels(3)))  # Pillow sniffs the format, not the suffix
    row = {"prompt": mcq_problem("Q?", dict(zip("ABCD", "wxyz", strict=True))), "answer": "C"}
    row["image_path"] = ["train_00009.jpg"]
    path = _write_jsonl(tmp_path / "train_stage1_perception.jsonl", [row])
    (example,) = read_rows(path, capability="perception", problem_key="prompt", image_key="image_path")
    assert example.answer == "C" and len(example.images) == 1


def test_mcq_problem_is_the_papers_stage1_template():
    expected = (
        "<image>Which is red?\nOptions:\nA: cup\nB: box\nC: hat\nD: pen\n"
        "Respond using only the letter corresponding to the correct answer.\n"
    )
    assert mcq_problem("Which is red?", {"A": "cup", "B": "box", "C": "hat", "D": "pen"}) == expected


def test_parquet_round_trip_with_hf_image_structs(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    embedded, on_disk = _pixels(4), _pixels(5)
    (tmp_path / "disk.png").write_bytes(_png_bytes(on_disk))
    image = pyarrow.struct([("bytes", pyarrow.binary()), ("path", pyarrow.string())])
    table = pyarrow.table(
        {
            "problem": ["<image><image>Same?", "2 + 2?"],
            "answer": ["no", "4"],
            "images": [[{"bytes": _png_bytes(embedded), "path": "orig.png"}, {"bytes": None, "path": "disk.png"}], []],
            "pass_rate": [0.5, None],
        },
        schema=pyarrow.schema(
            [
                ("problem", pyarrow.string()),
                ("answer", pyarrow.string()),
                ("images", pyarrow.list_(image)),
                ("pass_rate", pyarrow.float64()),
            ]
        ),
    )
    path = tmp_path / "rows.parquet"
    parquet.write_table(table, path)
    first, second = read_rows(path, capability="visual_reasoning")
    assert (first.id, second.id) == ("rows:0", "rows:1")
    np.testing.assert_array_equal(first.images[0].load(), embedded)
    np.testing.assert_array_equal(first.images[1].load(), on_disk)
    assert first.images[0].name == "orig.png"
    assert second.images == () and second.pass_rate is None and first.pass_rate == 0.5


def test_unreadable_parquet_names_the_file(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: file: not a readable parquet file") as raised:
        list(read_rows(path, capability="perception", on_error="skip"))
    assert raised.value.reason == "unreadable_file"


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(cells) for cells in [header, *rows]) + "\n")
    return path


TSV_HEADER = ["index", "question", "A", "B", "C", "D", "answer", "image"]


def test_vlmevalkit_tsv_round_trip(tmp_path):
    pixels = _pixels(6)
    encoded = base64.b64encode(_png_bytes(pixels)).decode()
    path = _write_tsv(
        tmp_path / "bench.tsv",
        TSV_HEADER,
        [
            ["10", "What colour is the cup?", "red", "blue", "green", "white", "B", encoded],
            ["11", "Is it round?", "yes", "no", "maybe", "", "A", "10"],  # 3 options; image of row index 10
        ],
    )
    first, second = read_rows(path, capability="perception")
    assert first.id == "10" and first.answer == "B" and first.location == RowLocation(path, 0)
    assert first.problem == mcq_problem(
        "What colour is the cup?", {"A": "red", "B": "blue", "C": "green", "D": "white"}
    )
    assert second.problem == mcq_problem("Is it round?", {"A": "yes", "B": "no", "C": "maybe"})
    np.testing.assert_array_equal(first.images[0].load(), pixels)
    np.testing.assert_array_equal(second.images[0].load(), pixels)


@pytest.mark.parametrize(
    ("cells", "reason", "field"),
    [
        (["q", "a", "b", "c", "d", "B", "%%%not base64%%%"], "corrupt_image", "image"),
        (["q", "a", "b", "c", "d", "B", base64.b64encode(b"not a png").decode()], "corrupt_image", "image"),
        (["q", "a", "b", "c", "d", "E", "PLACEHOLDER"], "invalid_answer", "answer"),
        (["q", "a", "b", "c", "d", "", "PLACEHOLDER"], "missing_answer", "answer"),
        (["q", "a", "b", "c", "d", "B", ""], "missing_image", "image"),
    ],
)
def test_bad_tsv_rows(tmp_path, cells, reason, field):
    good = base64.b64encode(_png_bytes(_pixels(7))).decode()
    cells = [good if cell == "PLACEHOLDER" else cell for cell in cells]
    path = _write_tsv(tmp_path / "bench.tsv", TSV_HEADER, [["0", "q", "a", "b", "c", "d", "A", good], ["1", *cells]])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:1: {field}: ") as raised:
        list(read_rows(path, capability="perception"))
    assert raised.value.reason == reason


def test_tsv_without_required_columns_names_the_file(tmp_path):
    path = _write_tsv(tmp_path / "bench.tsv", ["index", "question", "answer"], [["0", "q", "A"]])
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: header: VLMEvalKit TSV lacks column\(s\) \['image'\]"
    ):
        list(read_rows(path, capability="perception"))


def _image_row(*images: str, problem: str = "<image>q") -> dict[str, object]:
    return {"problem": problem, "answer": "A", "images": list(images)}


# Each: the row written to line 3 of a jsonl file, its DataError reason, the field named, text the message holds.
BAD_JSONL_ROWS = [
    pytest.param(_image_row("gone.png"), "missing_image", "images[0]", "gone.png", id="missing_image_file"),
    pytest.param(_image_row("corrupt.png"), "corrupt_image", "images[0]", "corrupt.png", id="corrupt_image_bytes"),
    pytest.param(_image_row("truncated.png"), "corrupt_image", "images[0]", "truncated", id="truncated_image"),
    pytest.param({"problem": "q"}, "missing_answer", "answer", "missing", id="no_answer"),
    pytest.param({"problem": "q", "answer": None}, "missing_answer", "answer", "missing", id="null_answer"),
    pytest.param({"problem": "q", "answer": 7}, "answer_not_string", "answer", "int 7", id="non_string_answer"),
    pytest.param(
        _image_row("ok.png", problem="q"),
        "placeholder_mismatch",
        "problem",
        "0 <image> placeholder(s) but the row has 1 image(s)",
        id="image_without_placeholder",
    ),
    pytest.param(
        _image_row(),
        "placeholder_mismatch",
        "problem",
        "1 <image> placeholder(s) but the row has 0 image(s)",
        id="placeholder_without_image",
    ),
    pytest.param('{"problem": "q", "answer": ', "malformed_row", "row", "not valid JSON", id="malformed_json_line"),
    pytest.param("[1, 2]", "malformed_row", "row", "expected a JSON object", id="row_not_an_object"),
    pytest.param({"problem": " ", "answer": "A"}, "invalid_problem", "problem", "non-empty", id="empty_problem"),
    pytest.param({**GOOD_ROW, "pass_rate": 1.5}, "invalid_pass_rate", "pass_rate", "[0, 1]", id="bad_pass_rate"),
    pytest.param(
        {**_image_row(), "images": "ok.png"}, "invalid_images", "images", "expected a list", id="images_not_a_list"
    ),
    pytest.param(_image_row(3), "invalid_images", "images[0]", "expected an image path", id="bad_image_entry"),
]


@pytest.fixture
def image_dir(tmp_path):
    good = _png_bytes(_pixels(8))
    (tmp_path / "ok.png").write_bytes(good)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG definitely not an image")
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    return tmp_path


def _bad_file(directory: Path, bad_row: object) -> Path:
    # Line 2 is blank: line numbers must count it, as an editor does.
    good = {"problem": "<image>fine", "answer": "B", "images": ["ok.png"]}
    path = directory / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + (bad_row if isinstance(bad_row, str) else json.dumps(bad_row)) + "\n")
    return path


@pytest.mark.parametrize(("bad_row", "reason", "field", "detail"), BAD_JSONL_ROWS)
def test_bad_row_raises_data_error_naming_file_row_and_field(image_dir, bad_row, reason, field, detail):
    path = _bad_file(image_dir, bad_row)
    with pytest.raises(DataError) as raised:
        list(read_rows(path, capability="perception"))
    message = str(raised.value)
    assert message.startswith(f"{path}:3: {field}: "), message
    assert detail in message
    assert raised.value.reason == reason and raised.value.field == field


@pytest.mark.parametrize(("bad_row", "reason", "field", "detail"), BAD_JSONL_ROWS)
def test_bad_row_is_skipped_and_counted_under_skip(image_dir, bad_row, reason, field, detail):
    path = _bad_file(image_dir, bad_row)
    skipped = SkipCounter()
    examples = list(read_rows(path, capability="perception", on_error="skip", skipped=skipped))
    assert [example.answer for example in examples] == ["B"]
    assert skipped.counts == {reason: 1} and skipped.rows_seen == 2
    summary = skipped.summary()
    assert summary.startswith(f"skipped 1 of 2 rows ({reason}: 1); first: {path}:3: ") and "\n" not in summary


def test_skip_without_a_counter_logs_the_summary(image_dir, caplog):
    path = _bad_file(image_dir, {"problem": "q", "answer": 7})
    with caplog.at_level(logging.WARNING, logger="staged_vlm_jax.data.sources"):
        assert len(list(read_rows(path, capability="perception", on_error="skip"))) == 1
    assert f"{path}: skipped 1 of 2 rows (answer_not_string: 1)" in caplog.text


def test_a_shared_counter_aggregates_files(image_dir, tmp_path):
    skipped = SkipCounter()
    first = _bad_file(image_dir, {"problem": "q"})
    list(read_rows(first, capability="perception", on_error="skip", skipped=skipped))
    second = _write_jsonl(tmp_path / "more.jsonl", [{"problem": "q", "answer": 1}, {"problem": "q", "answer": 2}])
    list(read_rows(second, capability="perception", on_error="skip", skipped=skipped))
    assert skipped.counts == {"answer_not_string": 2, "missing_answer": 1} and skipped.rows_seen == 4
    assert skipped.summary().startswith("skipped 3 of 4 rows (answer_not_string: 2, missing_answer: 1); first:")


def test_unknown_extension_raises_even_under_skip(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("problem,answer\n")
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: extension: unknown data file type '.csv'"
    ) as raised:
        next(read_rows(path, capability="perception", on_error="skip"))
    assert raised.value.reason == "unknown_format"


def test_invalid_arguments_are_rejected(tmp_path):
    path = _write_jsonl(tmp_path / "rows.jsonl", [GOOD_ROW])
    with pytest.raises(ValueError, match="on_error must be one of"):
        next(read_rows(path, capability="perception", on_error="ignore"))
    with pytest.raises(ValueError, match="capability must be one of"):
        next(read_rows(path, capability="ocr"))


def test_unverified_images_fail_on_load_with_the_same_context(image_dir):
    path = _bad_file(image_dir, {"problem": "<image>q", "answer": "A", "images": ["corrupt.png"]})
    _, example = read_rows(path, capability="perception", verify_images=False)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: images\[0\]: cannot decode image .*corrupt.png"):
        example.images[0].load()


def test_example_validates_itself_and_names_its_id_without_a_location():
    with pytest.raises(DataError, match=r"^example 'x': pass_rate: expected None or a number in \[0, 1\]"):
        Example(id="x", problem="q", answer="1", images=(), capability="text_reasoning", pass_rate=float("nan"))
    with pytest.raises(DataError, match="unknown capability 'ocr'"):
        Example(id="x", problem="q", answer="1", images=(), capability="ocr")
    image = ImageRef(b"", "memory", "images[0]", "empty")
    with pytest.raises(DataError, match=r"has 2 <image> placeholder\(s\) but the row has 1 image\(s\)") as raised:
        Example(id="x", problem="<image><image>", answer="1", images=(image,), capability="perception")
    assert raised.value.reason == "placeholder_mismatch"


def test_a_line_that_is_not_utf8_is_one_malformed_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(json.dumps(GOOD_ROW).encode() + b'\n{"problem": "\xff", "answer": "1"}\n')
    skipped = SkipCounter()
    assert len(list(read_rows(path, capability="text_reasoning", on_error="skip", skipped=skipped))) == 1
    assert skipped.counts == {"malformed_row": 1}
    assert str(skipped.first_error).startswith(f"{path}:2: row: not valid JSON")
