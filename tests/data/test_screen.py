"""The start-up data screen: every row-level problem a `DataError` naming file:row, over-long prompts dropped
(never raised), duplicates counted, everything dropped listed once in data_errors.jsonl."""

from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from staged_vlm_jax.data.images import QWEN2_VL, ImageInputs
from staged_vlm_jax.data.schema import DataError, ImageRef
from staged_vlm_jax.data.screen import DataErrorLog, DataScreen
from staged_vlm_jax.data.sources import DataSource
from staged_vlm_jax.data.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("screen") / "tokenizer")


def _png(path: Path, width: int, height: int) -> str:
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)
    return path.name


def _write(path: Path, rows: list[dict]) -> DataSource:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return DataSource(path, "visual_reasoning")


def _row(index: int, problem: str = "<image>What is shown?", **fields) -> dict:
    return {"id": f"r{index}", "problem": problem, "answer": str(index), "images": ["a.png"], **fields}


def test_bad_rows_are_named_and_skipped_with_reasons_and_listed_once(tokenizer, tmp_path):
    _png(tmp_path / "a.png", 64, 48)
    _png(tmp_path / "wide.png", 4000, 10)  # aspect ratio 400: the processor refuses it
    rows = [
        _row(0),
        _row(1, "<image>Say <|im_end|> then stop."),  # a control token as text
        _row(2, "<image>Count the <|image_pad|> here."),  # the image pad as text (was a mid-run traceback)
        _row(3, images=["gone.png"]),
        _row(4, images=["wide.png"]),
        {"id": "r5", "problem": "<image>No answer", "images": ["a.png"]},
        _row(6),
    ]
    source = _write(tmp_path / "rows.jsonl", rows)
    log = DataErrorLog(tmp_path / "run" / "data_errors.jsonl")
    screen = DataScreen(tokenizer, ImageInputs(), 4096, "skip", log=log)
    screened = screen(source)
    assert [example.id for example in screened.examples] == ["r0", "r6"]
    assert screened.dropped_by_reason() == Counter(
        control_token=2, missing_image=1, unprocessable_image=1, missing_answer=1
    )
    messages = sorted(str(error) for error in screened.dropped)
    assert messages[0].startswith(f"{source.path}:2: problem: holds the control token '<|im_end|>'")
    assert messages[1].startswith(f"{source.path}:3: problem: holds the control token '<|image_pad|>'")
    assert messages[2].startswith(f"{source.path}:4: images[0]: cannot open image")
    assert messages[3].startswith(f"{source.path}:5: images[0]: image '{tmp_path / 'wide.png'}' (4000x10): absolute")
    assert messages[4].startswith(f"{source.path}:6: answer: missing")
    assert screened.duplicates == ()  # rows 0 and 6 differ in their answers
    assert screen(source) is screened  # each source is screened once, whatever a stage repeats it
    assert screen(dataclasses.replace(source, repeat=3)) is screened
    logged = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert sorted((entry["where"], entry["reason"], entry["action"]) for entry in logged) == sorted(
        (str(error.where), error.reason, "skipped") for error in screened.dropped
    )
    # A resumed run screens again: nothing is listed twice.
    DataScreen(tokenizer, ImageInputs(), 4096, "skip", log=DataErrorLog(log.path))(source)
    assert len(log.path.read_text().splitlines()) == len(logged)


def test_duplicates_are_counted_kept_and_listed(tokenizer, tmp_path):
    _png(tmp_path / "a.png", 64, 48)
    rows = [_row(0), _row(1), {**_row(0), "id": "copy"}, {**_row(0), "id": "another copy"}]
    source = _write(tmp_path / "rows.jsonl", rows)
    log = DataErrorLog(tmp_path / "data_errors.jsonl")
    screened = DataScreen(tokenizer, ImageInputs(), 4096, log=log)(source)
    assert [example.id for example in screened.examples] == ["r0", "r1", "copy", "another copy"]
    assert [str(error) for error in screened.duplicates] == [
        f"{source.path}:{row}: row: same problem, answer and images as {source.path}:1" for row in (3, 4)
    ]
    assert "; 2 duplicates (kept)" in screened.summary()
    assert [json.loads(line)["action"] for line in log.path.read_text().splitlines()] == ["kept", "kept"]


def test_on_error_raise_stops_at_the_first_bad_row_in_one_line(tokenizer, tmp_path):
    _png(tmp_path / "a.png", 64, 48)
    source = _write(tmp_path / "rows.jsonl", [_row(0), _row(1, "<image><|vision_start|> hi")])
    with pytest.raises(DataError, match=rf"^{tmp_path}/rows.jsonl:2: problem: holds the control token"):
        DataScreen(tokenizer, ImageInputs(), 4096, "raise")(source)


def test_over_long_prompts_are_dropped_under_either_policy_and_exact_at_the_limit(tokenizer, tmp_path):
    _png(tmp_path / "a.png", 64, 48)
    _png(tmp_path / "big.png", 640, 480)
    source = _write(tmp_path / "rows.jsonl", [_row(0), _row(1, images=["big.png"])])
    lengths = [DataScreen(tokenizer, ImageInputs(), 10**6).check(example) for example in
               DataScreen(tokenizer, ImageInputs(), 10**6)(source).examples]  # fmt: skip
    assert lengths[0] < lengths[1]
    screened = DataScreen(tokenizer, ImageInputs(), lengths[0], "raise")(source)  # a prompt of exactly the limit fits
    assert [example.id for example in screened.examples] == ["r0"]
    assert screened.dropped_by_reason() == Counter(overlong=1)
    assert f"over data.max_prompt_length {lengths[0]}" in str(screened.dropped[0])
    with pytest.raises(DataError, match=r"rows: no usable row \(.*0 of 2 rows usable; dropped overlong: 2\)"):
        DataScreen(tokenizer, ImageInputs(), lengths[0] - 1, "skip")(source)


def test_the_screens_prompt_length_is_the_pipelines(tokenizer, tmp_path):
    """The screen sizes images from their headers; the pipeline decodes them: the lengths must agree."""
    from staged_vlm_jax.data.pipeline import PromptBuilder

    rows = [_row(i, images=[_png(tmp_path / f"{i}.png", w, h)]) for i, (w, h) in
            enumerate([(64, 48), (300, 200), (1000, 30), (50, 700)])]  # fmt: skip
    source = _write(tmp_path / "rows.jsonl", rows)
    for images in (ImageInputs(), ImageInputs(pre_resize=(128 * 128, 256 * 256))):
        screen = DataScreen(tokenizer, images, 10**6)
        builder = PromptBuilder(tokenizer, images, "raise")
        for example in screen(source).examples:
            assert screen.check(example) == len(builder(example).input_ids)


def test_verify_images_decodes_at_start_up(tokenizer, tmp_path):
    data = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(data, format="PNG")
    (tmp_path / "a.png").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])  # header intact, data cut
    source = _write(tmp_path / "rows.jsonl", [_row(0)])
    assert len(DataScreen(tokenizer, ImageInputs(), 4096)(source).examples) == 1  # the header is enough here
    with pytest.raises(DataError, match=r"rows.jsonl:1: images\[0\]: cannot decode image"):
        DataScreen(tokenizer, ImageInputs(), 4096, verify_images=True)(source)


@pytest.mark.parametrize("size", [(64, 48), (3000, 2000), (30, 1000), (100, 7), (513, 511)])
@pytest.mark.parametrize("pre_resize", [None, (128 * 128, 512 * 512)])
def test_grid_from_the_size_alone_is_the_preprocessors(size, pre_resize):
    inputs = ImageInputs(QWEN2_VL, "pil", pre_resize)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8))
    data = io.BytesIO()
    image.save(data, format="PNG")
    ref = ImageRef(data.getvalue(), "test", "images[0]", "test.png")
    assert ref.size() == size
    np.testing.assert_array_equal(inputs.grid(*ref.size()), inputs.preprocess(ref.load(pre_resize))[1])
