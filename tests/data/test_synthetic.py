"""Synthetic data: deterministic by seed, read back through the real readers, answers graded correct by `math`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from staged_vlm_jax.data import synthetic
from staged_vlm_jax.data.schema import CAPABILITIES, IMAGE_PLACEHOLDER
from staged_vlm_jax.data.sources import read_rows
from staged_vlm_jax.rl.rewards.scores import math_score

ROWS = 40


def _files(directory) -> dict[str, bytes]:
    directory = Path(directory)
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


def test_every_capability_has_a_generator():
    assert set(synthetic.GENERATORS) == set(CAPABILITIES)


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path, capability):
    first = synthetic.write_synthetic(tmp_path / "a", capability, 12, seed=3)
    synthetic.write_synthetic(tmp_path / "b", capability, 12, seed=3)
    synthetic.write_synthetic(tmp_path / "c", capability, 12, seed=4)
    assert first == tmp_path / "a" / f"{capability}.jsonl"
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (tmp_path / "a" / first.name).read_bytes() != (tmp_path / "c" / first.name).read_bytes()


def test_a_smaller_set_is_a_prefix_of_a_larger_one(tmp_path):
    small = synthetic.write_synthetic(tmp_path / "small", "visual_reasoning", 5, seed=0).read_text().splitlines()
    large = synthetic.write_synthetic(tmp_path / "large", "visual_reasoning", 9, seed=0).read_text().splitlines()
    assert large[:5] == small


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_rows_read_back_valid_with_answers_graded_correct(tmp_path, capability):
    path = synthetic.write_synthetic(tmp_path, capability, ROWS, seed=0, image_size=84)
    examples = list(read_rows(path, capability=capability))  # validates rows and decodes every image
    assert len(examples) == ROWS
    for example in examples:
        response = "<think>x</think> \\boxed{" + example.answer + "}"
        assert math_score(response, example.answer)["accuracy"] == 1.0, example
        assert example.problem.count(IMAGE_PLACEHOLDER) == len(example.images)
        assert 0.0 <= example.pass_rate <= 1.0
        for image in example.images:
            pixels = image.load()
            assert pixels.shape == (84, 84, 3) and pixels.dtype == np.uint8
    pass_rates = {example.pass_rate for example in examples}
    assert len(pass_rates) > 5, "difficulty should vary across rows"
    if capability == "text_reasoning":
        assert all(example.images == () for example in examples)
        assert all(example.answer.isdigit() for example in examples)
    else:
        assert all(len(example.images) == 1 for example in examples)


def test_perception_rows_are_four_option_mcqs_with_balanced_letters(tmp_path):
    examples = list(read_rows(synthetic.write_synthetic(tmp_path, "perception", ROWS, seed=1), capability="perception"))
    for example in examples:
        assert example.answer in "ABCD" and len(example.answer) == 1
        assert all(f"\n{letter}: " in example.problem for letter in "ABCD")
    assert {example.answer for example in examples} == set("ABCD")


def test_text_answers_are_integers(tmp_path):
    rows = synthetic.write_synthetic(tmp_path, "text_reasoning", ROWS, seed=2).read_text().splitlines()
    assert all(int(json.loads(row)["answer"]) >= 0 for row in rows)


def test_visual_rows_mix_mcqs_over_integer_options_and_integer_answers(tmp_path):
    rows = 400
    path = synthetic.write_synthetic(tmp_path, "visual_reasoning", rows, seed=2, max_difficulty=0.3)
    examples = list(read_rows(path, capability="visual_reasoning"))
    mcqs = [example for example in examples if example.answer in tuple("ABCD")]
    assert abs(len(mcqs) / rows - synthetic.VISUAL_MCQ_FRACTION) < 0.1  # binomial sd at 400 rows: 0.025
    assert {example.answer for example in mcqs} == set("ABCD")
    for example in mcqs:
        options = dict(
            line.split(": ", 1) for line in example.problem.splitlines() if line[:3] in ("A: ", "B: ", "C: ", "D: ")
        )
        assert len(set(options.values())) == 4 and all(int(option) >= 0 for option in options.values())
    free_form = [example for example in examples if example not in mcqs]
    assert free_form and all(int(example.answer) >= 0 and "Options:" not in example.problem for example in free_form)


def test_drawn_scene_puts_each_shape_in_its_colour_at_its_cell_centre():
    size = 56
    shapes = [
        synthetic.Shape(kind, colour, row, column, 0.6)
        for (kind, colour), (row, column) in zip(
            [("circle", "red"), ("square", "blue"), ("triangle", "green")], [(0, 0), (1, 3), (3, 2)], strict=True
        )
    ]
    pixels = np.asarray(synthetic.draw_scene(shapes, size))
    cell = size / synthetic.SCENE_GRID
    for shape in shapes:
        centre = pixels[int((shape.row + 0.5) * cell), int((shape.column + 0.5) * cell)]
        assert tuple(centre) == synthetic.COLOURS[shape.colour], shape
    assert tuple(pixels[int(2.5 * cell), int(0.5 * cell)]) == synthetic.BACKGROUND


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="no synthetic generator for capability 'ocr'"):
        synthetic.write_synthetic(tmp_path, "ocr", 1, seed=0)
    with pytest.raises(ValueError, match="num_rows must be positive"):
        synthetic.write_synthetic(tmp_path, "perception", 0, seed=0)
    with pytest.raises(ValueError, match="image_size must be at least 56"):
        synthetic.write_synthetic(tmp_path, "perception", 1, seed=0, image_size=28)
    with pytest.raises(ValueError, match="max_difficulty must be in"):
        synthetic.write_synthetic(tmp_path, "perception", 1, seed=0, max_difficulty=1.5)


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_max_difficulty_keeps_the_easy_end_deterministically(tmp_path, capability):
    def pass_rates(directory, cap):
        path = synthetic.write_synthetic(directory, capability, ROWS, seed=0, max_difficulty=cap)
        return [json.loads(line)["pass_rate"] for line in path.read_text().splitlines()]

    easy = pass_rates(tmp_path / "easy", 0.3)
    assert min(easy) >= round(0.95 - 0.8 * 0.3, 3)
    assert min(pass_rates(tmp_path / "all", 1.0)) < min(easy)  # the cap did remove something
    assert _files(tmp_path / "easy") == _files(synthetic.write_synthetic(tmp_path / "again", capability, ROWS, seed=0,
                                                                         max_difficulty=0.3).parent)  # fmt: skip
