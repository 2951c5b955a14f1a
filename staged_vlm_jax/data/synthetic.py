"""Synthetic data sets for the three capabilities, written to disk exactly as real data is (EasyR1 jsonl + PNG).

The CPU testbed (``configs/demo.py``) trains a tiny VLM through the paper's three stages without downloading
anything, so it needs stand-ins for DOCCI MCQs, ORZ-Math and the visual-math mix that a 1–5 M parameter model
can learn from 56–112 px images:

* ``perception``: four-option MCQs about drawn shapes — colour, count, position, size — in the paper's Stage-1
  row format (`schema.mcq_problem`); the answer is a letter A–D.
* ``text_reasoning``: arithmetic and one-variable algebra word problems, text only; integer answers.
* ``visual_reasoning``: counting plus arithmetic over drawn shapes, and area / perimeter read off a figure on a
  unit grid. Like the paper's Stage-3 mix — GeoQA170K and ArxivQA are four-option MCQs, CLEVR-Math is free-form
  numbers, Math PUMA has both — a fraction `VISUAL_MCQ_FRACTION` (one half, our estimate of that mix) of the rows
  are four-option MCQs in the Stage-1 format whose options are the answer and three nearby integers (answer: a
  letter); the rest ask for the integer. Without the MCQs, stage 3 would teach the model that every image question
  is answered with a number, and perception's letters would vanish for a reason the real data does not have.

Difficulty in [0, 1] (the row's ``pass_rate`` is ``0.95 − 0.8 · difficulty``, so difficulty curricula have
something to sort by), per capability, and what the testbed's ``max_difficulty=0.3`` keeps:

* perception: colour — (shapes − 1) / 2, 1–3 shapes; count — 0.7 · (count − 1) / 4 + 0.3 · others / 3, 1–5 targets
  among 0–3 others; position — (shapes − 1) / 3, 1–4 shapes; size — uniform, the size gap to the target shrinking
  from 0.45 to 0.15 of a cell. At ≤ 0.3: one shape (colour, position), 1–2 targets (count), gaps ≥ 0.36 cells.
* text_reasoning: 0.6 · operation (add 0, subtract 0.1, multiply 0.3, divide 0.4, two steps 0.5, linear equation
  0.6) + 0.4 · magnitude (operands ≤ 10, ≤ 50, ≤ 200 → 0, 0.5, 1). At ≤ 0.3: every operation but the equation
  with operands ≤ 10, and addition / subtraction up to 50.
* visual_reasoning: total count 0–0.6 (2–9 shapes), count difference 0.3–0.7, points 0.4–1, shapes left after a
  removal 0.4–0.9, rectangle area 0.4–0.8, perimeter 0.57–0.9, right-triangle area 0.7–1 (by the sizes and numbers
  involved). At ≤ 0.3: counting 2–5 shapes and "how many more" of 2 against 1 — as MCQ or as a number.

`write_synthetic` writes ``{capability}.jsonl`` and ``images/*.png`` and the data is then read back with
`sources.read_rows`, so the testbed exercises the same reader, validation and image decoding as real data.
Every answer is a plain string (an integer or a letter) the paper's ``math`` reward grades exactly.

Generation is deterministic: one NumPy ``Generator`` seeded from (seed, capability) draws every row in order,
so the same seed gives byte-identical files (for the same NumPy and Pillow versions) and the first k rows of a
larger set equal a k-row set.

Longer than most modules because it holds one generator per capability and family of figures (shapes, counting,
geometry, arithmetic) with their drawing code; they share the writer and the difficulty scale, and splitting
them apart would scatter that one contract.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from staged_vlm_jax.data.schema import CAPABILITIES, IMAGE_PLACEHOLDER, mcq_problem
from staged_vlm_jax.paths import PathLike, as_path

MIN_IMAGE_SIZE = 56  # below this the smallest shapes (a quarter of a 4x4 grid cell) blur into a few pixels
BACKGROUND = (255, 255, 255)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 200, 20),
    "purple": (150, 60, 190),
    "orange": (245, 130, 20),
}
COLOUR_NAMES = tuple(COLOURS)
SCENE_GRID = 4  # shapes sit in distinct cells of a 4x4 grid, so they never overlap and quadrants are whole cells
FIGURE_GRID = 7  # unit grid of the geometry figures
LETTERS = "ABCD"
VISUAL_MCQ_FRACTION = 0.5  # of visual_reasoning rows asked as four-option MCQs (see the module docstring)


@dataclasses.dataclass(frozen=True)
class Shape:
    """A drawn object: ``kind`` in `SHAPES`, ``colour`` in `COLOURS`, grid cell, and size as a fraction of a cell."""

    kind: str
    colour: str
    row: int
    column: int
    scale: float

    @property
    def description(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclasses.dataclass(frozen=True)
class SyntheticRow:
    """One generated row before it is written: ``image`` is None for text-only rows."""

    problem: str
    answer: str
    image: Image.Image | None
    difficulty: float

    @property
    def pass_rate(self) -> float:
        return round(0.95 - 0.8 * self.difficulty, 3)


RowGenerator = Callable[[np.random.Generator, int], SyntheticRow]
GENERATORS: dict[str, RowGenerator] = {}


def register_generator(capability: str) -> Callable[[RowGenerator], RowGenerator]:
    """Register the row generator of a capability (one of `CAPABILITIES`)."""

    def add(generator: RowGenerator) -> RowGenerator:
        GENERATORS[capability] = generator
        return generator

    return add


Box = tuple[float, float, float, float]
# How each shape kind fills its bounding box (left, top, right, bottom).
SHAPE_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, Box, tuple[int, int, int]], None]] = {
    "circle": lambda draw, box, fill: draw.ellipse(box, fill=fill),
    "square": lambda draw, box, fill: draw.rectangle(box, fill=fill),
    "triangle": lambda draw, box, fill: draw.polygon(
        [((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill
    ),
}
SHAPES = tuple(SHAPE_DRAWERS)


def draw_scene(shapes: list[Shape], image_size: int) -> Image.Image:
    """White square image with each shape centred in its cell of a `SCENE_GRID` x `SCENE_GRID` grid."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = image_size / SCENE_GRID
    for shape in shapes:
        centre_x, centre_y = (shape.column + 0.5) * cell, (shape.row + 0.5) * cell
        radius = shape.scale * cell / 2
        box = (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)
        SHAPE_DRAWERS[shape.kind](draw, box, COLOURS[shape.colour])
    return image


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str], count: int) -> list[str]:
    """``count`` distinct items in random order."""
    return [items[index] for index in rng.choice(len(items), size=count, replace=False)]


def _cells(rng: np.random.Generator, count: int, allowed: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """``count`` distinct grid cells, from ``allowed`` or the whole grid."""
    pool = allowed or [(row, column) for row in range(SCENE_GRID) for column in range(SCENE_GRID)]
    return [pool[index] for index in rng.choice(len(pool), size=count, replace=False)]


def _scale(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.6, 0.9))


def _mcq(rng: np.random.Generator, question: str, correct: str, distractors: list[str]) -> tuple[str, str]:
    """(problem, answer letter) with the correct option and the three distractors in random order."""
    options = [correct, *distractors]
    order = rng.permutation(len(options))
    by_letter = {LETTERS[slot]: options[index] for slot, index in enumerate(order)}
    answer = LETTERS[int(np.argmax(order == 0))]
    return mcq_problem(question, by_letter), answer


# Perception questions: each returns (question, correct option, distractor options, shapes, difficulty).
PerceptionQuestion = Callable[[np.random.Generator], tuple[str, str, list[str], list[Shape], float]]


def _colour_question(rng: np.random.Generator) -> tuple[str, str, list[str], list[Shape], float]:
    # The target is the only shape of its kind, so "the <kind>" names it.
    kinds = _pick(rng, SHAPES, int(rng.integers(1, len(SHAPES) + 1)))
    colours = _pick(rng, COLOUR_NAMES, 4)
    cells = _cells(rng, len(kinds))
    shapes = [
        Shape(kind, colours[0] if index == 0 else _pick(rng, COLOUR_NAMES, 1)[0], *cell, _scale(rng))
        for index, (kind, cell) in enumerate(zip(kinds, cells, strict=True))
    ]
    return f"What colour is the {kinds[0]}?", colours[0], colours[1:], shapes, (len(kinds) - 1) / 2


def _count_question(rng: np.random.Generator) -> tuple[str, str, list[str], list[Shape], float]:
    kind, *others = _pick(rng, SHAPES, len(SHAPES))
    count, extra = int(rng.integers(1, 6)), int(rng.integers(0, 4))
    kinds = [kind] * count + [others[int(rng.integers(len(others)))] for _ in range(extra)]
    shapes = [
        Shape(shape_kind, _pick(rng, COLOUR_NAMES, 1)[0], *cell, _scale(rng))
        for shape_kind, cell in zip(kinds, _cells(rng, len(kinds)), strict=True)
    ]
    wrong = _pick(rng, [str(number) for number in range(1, 9) if number != count], 3)
    return f"How many {kind}s are there?", str(count), wrong, shapes, 0.7 * (count - 1) / 4 + 0.3 * extra / 3


_QUADRANTS = {
    "top left": (0, 0),
    "top right": (0, 1),
    "bottom left": (1, 0),
    "bottom right": (1, 1),
}


def _position_question(rng: np.random.Generator) -> tuple[str, str, list[str], list[Shape], float]:
    quadrant, *wrong = _pick(rng, tuple(_QUADRANTS), 4)
    half = SCENE_GRID // 2
    top, left = (offset * half for offset in _QUADRANTS[quadrant])
    target_cell = _cells(rng, 1, [(top + r, left + c) for r in range(half) for c in range(half)])[0]
    descriptions = [(kind, colour) for kind in SHAPES for colour in COLOUR_NAMES]
    chosen = [descriptions[index] for index in rng.choice(len(descriptions), size=1 + int(rng.integers(0, 4)))]
    # Distractors must not share the target's description, or "the <colour> <kind>" would be ambiguous.
    chosen = [chosen[0]] + [description for description in chosen[1:] if description != chosen[0]]
    free_cells = [
        (row, column) for row in range(SCENE_GRID) for column in range(SCENE_GRID) if (row, column) != target_cell
    ]
    cells = [target_cell, *_cells(rng, len(chosen) - 1, free_cells)]
    shapes = [Shape(kind, colour, *cell, _scale(rng)) for (kind, colour), cell in zip(chosen, cells, strict=True)]
    question = f"Where is the {shapes[0].description} in the image?"
    return question, quadrant, wrong, shapes, (len(shapes) - 1) / 3


def _size_question(rng: np.random.Generator) -> tuple[str, str, list[str], list[Shape], float]:
    superlative = ("largest", "smallest")[int(rng.integers(2))]
    difficulty = float(rng.uniform(0, 1))
    gap = 0.45 - 0.3 * difficulty  # how much smaller (or larger) than the target every other shape is, in cells
    kinds = [SHAPES[int(index)] for index in rng.integers(len(SHAPES), size=4)]
    colours = _pick(rng, COLOUR_NAMES, 4)  # distinct colours make the four descriptions distinct
    if superlative == "largest":
        scales = [0.95] + [float(rng.uniform(0.35, 0.95 - gap)) for _ in range(3)]
    else:
        scales = [0.35] + [float(rng.uniform(0.35 + gap, 0.95)) for _ in range(3)]
    shapes = [
        Shape(kind, colour, *cell, scale)
        for kind, colour, cell, scale in zip(kinds, colours, _cells(rng, 4), scales, strict=True)
    ]
    options = [shape.description for shape in shapes]
    return f"Which shape is the {superlative}?", options[0], options[1:], shapes, difficulty


PERCEPTION_QUESTIONS: dict[str, PerceptionQuestion] = {
    "colour": _colour_question,
    "count": _count_question,
    "position": _position_question,
    "size": _size_question,
}


@register_generator("perception")
def perception_row(rng: np.random.Generator, image_size: int) -> SyntheticRow:
    """A four-option MCQ about a drawn scene; answer is the letter of the correct option."""
    kind = tuple(PERCEPTION_QUESTIONS)[int(rng.integers(len(PERCEPTION_QUESTIONS)))]
    question, correct, distractors, shapes, difficulty = PERCEPTION_QUESTIONS[kind](rng)
    problem, answer = _mcq(rng, question, correct, distractors)
    return SyntheticRow(problem, answer, draw_scene(shapes, image_size), difficulty)


# Word problems: each takes (rng, magnitude level 0..2) and returns (problem, integer answer, base difficulty).
WordProblem = Callable[[np.random.Generator, int], tuple[str, int, float]]
_MAGNITUDES = (10, 50, 200)  # largest operand at each level


def _operand(rng: np.random.Generator, level: int, low: int = 2) -> int:
    return int(rng.integers(low, _MAGNITUDES[level] + 1))


def _addition(rng: np.random.Generator, level: int) -> tuple[str, int, float]:
    a, b = _operand(rng, level), _operand(rng, level)
    return f"Tom has {a} apples and buys {b} more. How many apples does he have now?", a + b, 0.0


def _subtraction(rng: np.random.Generator, level: int) -> tuple[str, int, float]:
    a, b = sorted((_operand(rng, level), _operand(rng, level)), reverse=True)
    return f"A shop has {a} books and sells {b}. How many books are left?", a - b, 0.1


def _multiplication(rng: np.random.Generator, level: int) -> tuple[str, int, float]:
    a, b = _operand(rng, level), int(rng.integers(2, 10))
    return f"Each box holds {a} pens. How many pens are in {b} boxes?", a * b, 0.3


def _division(rng: np.random.Generator, level: int) -> tuple[str, int, float]:
    share, children = _operand(rng, level), int(rng.integers(2, 10))
    question = f"{share * children} sweets are shared equally by {children} children. How many does each child get?"
    return question, share, 0.4


def _linear_equation(rng: np.random.Generator, level: int) -> tuple[str, int, float]:
    x, a, b = _operand(rng, level, low=1), int(rng.integers(2, 10)), _operand(rng, level)
    return f"Solve for x: {a}x + {b} = {a * x + b}.", x, 0.6


def _two_steps(rng: np.random.Generator, level: int) -> tuple[str, int, float]:
    a, b = _operand(rng, level), _operand(rng, level)
    c = int(rng.integers(1, a + b + 1))
    question = f"Ann has {a} coins. She gets {b} more and then gives away {c}. How many coins does she have?"
    return question, a + b - c, 0.5


WORD_PROBLEMS: dict[str, WordProblem] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "division": _division,
    "linear_equation": _linear_equation,
    "two_steps": _two_steps,
}


@register_generator("text_reasoning")
def text_reasoning_row(rng: np.random.Generator, image_size: int) -> SyntheticRow:
    """An arithmetic or algebra word problem with an integer answer; no image (``image_size`` is unused)."""
    kind = tuple(WORD_PROBLEMS)[int(rng.integers(len(WORD_PROBLEMS)))]
    level = int(rng.integers(len(_MAGNITUDES)))
    problem, answer, base = WORD_PROBLEMS[kind](rng, level)
    return SyntheticRow(problem, str(answer), None, 0.6 * base + 0.4 * level / (len(_MAGNITUDES) - 1))


# Visual maths: each takes (rng, image size) and returns (question, integer answer, image, difficulty).
VisualProblem = Callable[[np.random.Generator, int], tuple[str, int, Image.Image, float]]


def _random_shapes(rng: np.random.Generator, kinds: list[str]) -> list[Shape]:
    cells = _cells(rng, len(kinds))
    return [
        Shape(kind, _pick(rng, COLOUR_NAMES, 1)[0], *cell, _scale(rng)) for kind, cell in zip(kinds, cells, strict=True)
    ]


def _total_count(rng: np.random.Generator, image_size: int) -> tuple[str, int, Image.Image, float]:
    count = int(rng.integers(2, 10))
    kinds = [SHAPES[int(index)] for index in rng.integers(len(SHAPES), size=count)]
    image = draw_scene(_random_shapes(rng, kinds), image_size)
    return "How many shapes are there in total?", count, image, (count - 2) / 7 * 0.6


def _count_difference(rng: np.random.Generator, image_size: int) -> tuple[str, int, Image.Image, float]:
    more, fewer = _pick(rng, SHAPES, 2)
    fewer_count = int(rng.integers(1, 4))
    more_count = int(rng.integers(fewer_count + 1, 7))
    image = draw_scene(_random_shapes(rng, [more] * more_count + [fewer] * fewer_count), image_size)
    question = f"How many more {more}s than {fewer}s are there?"
    return question, more_count - fewer_count, image, 0.3 + 0.4 * (more_count + fewer_count - 3) / 6


def _points(rng: np.random.Generator, image_size: int) -> tuple[str, int, Image.Image, float]:
    count, others, value = int(rng.integers(1, 6)), int(rng.integers(0, 4)), int(rng.integers(2, 10))
    target, *other_kinds = _pick(rng, SHAPES, len(SHAPES))
    kinds = [target] * count + [other_kinds[int(rng.integers(len(other_kinds)))] for _ in range(others)]
    image = draw_scene(_random_shapes(rng, kinds), image_size)
    question = f"Each {target} is worth {value} points. How many points are all the {target}s worth?"
    return question, count * value, image, 0.4 + 0.4 * (count - 1) / 4 + 0.2 * others / 3


def _remaining(rng: np.random.Generator, image_size: int) -> tuple[str, int, Image.Image, float]:
    kinds = [SHAPES[int(index)] for index in rng.integers(len(SHAPES), size=int(rng.integers(3, 9)))]
    removed = kinds[int(rng.integers(len(kinds)))]
    image = draw_scene(_random_shapes(rng, kinds), image_size)
    question = f"If all the {removed}s are removed, how many shapes are left?"
    return question, len(kinds) - kinds.count(removed), image, 0.4 + 0.5 * (len(kinds) - 3) / 5


def _draw_figure(rng: np.random.Generator, image_size: int, polygon_cells: list[tuple[int, int]]) -> Image.Image:
    """A light unit grid of `FIGURE_GRID` cells per side with a filled polygon given in grid-corner coordinates."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = image_size // FIGURE_GRID
    margin = (image_size - cell * FIGURE_GRID) // 2
    for line in range(FIGURE_GRID + 1):
        offset = margin + line * cell
        draw.line([(offset, margin), (offset, margin + FIGURE_GRID * cell)], fill=(200, 200, 200))
        draw.line([(margin, offset), (margin + FIGURE_GRID * cell, offset)], fill=(200, 200, 200))
    colour = COLOURS[_pick(rng, COLOUR_NAMES, 1)[0]]
    draw.polygon([(margin + x * cell, margin + y * cell) for x, y in polygon_cells], fill=colour, outline=(0, 0, 0))
    return image


def _rectangle(rng: np.random.Generator) -> tuple[int, int, int, int]:
    width, height = (int(side) for side in rng.integers(1, FIGURE_GRID, size=2))
    left = int(rng.integers(0, FIGURE_GRID - width + 1))
    top = int(rng.integers(0, FIGURE_GRID - height + 1))
    return left, top, width, height


def _rectangle_area(rng: np.random.Generator, image_size: int) -> tuple[str, int, Image.Image, float]:
    left, top, width, height = _rectangle(rng)
    corners = [(left, top), (left + width, top), (left + width, top + height), (left, top + height)]
    image = _draw_figure(rng, image_size, corners)
    question = "Each grid square is 1 unit wide. What is the area of the shaded rectangle?"
    return question, width * height, image, 0.4 + 0.4 * (width * height) / (FIGURE_GRID - 1) ** 2


def _rectangle_perimeter(rng: np.random.Generator, image_size: int) -> tuple[str, int, Image.Image, float]:
    left, top, width, height = _rectangle(rng)
    corners = [(left, top), (left + width, top), (left + width, top + height), (left, top + height)]
    image = _draw_figure(rng, image_size, corners)
    question = "Each grid square is 1 unit wide. What is the perimeter of the shaded rectangle?"
    return question, 2 * (width + height), image, 0.5 + 0.4 * (width + height) / (2 * (FIGURE_GRID - 1))


def _triangle_area(rng: np.random.Generator, image_size: int) -> tuple[str, int, Image.Image, float]:
    # A right triangle; when the height is odd the base is even, so the area (base * height / 2) is an integer.
    height = int(rng.integers(1, FIGURE_GRID))
    base = int(rng.integers(1, FIGURE_GRID)) if height % 2 == 0 else 2 * int(rng.integers(1, FIGURE_GRID // 2 + 1))
    left, top = int(rng.integers(0, FIGURE_GRID - base + 1)), int(rng.integers(0, FIGURE_GRID - height + 1))
    image = _draw_figure(rng, image_size, [(left, top), (left, top + height), (left + base, top + height)])
    question = "Each grid square is 1 unit wide. What is the area of the shaded triangle?"
    return question, base * height // 2, image, 0.7 + 0.3 * (base * height) / (FIGURE_GRID - 1) ** 2


VISUAL_PROBLEMS: dict[str, VisualProblem] = {
    "total_count": _total_count,
    "count_difference": _count_difference,
    "points": _points,
    "remaining": _remaining,
    "rectangle_area": _rectangle_area,
    "rectangle_perimeter": _rectangle_perimeter,
    "triangle_area": _triangle_area,
}


def _numeric_distractors(rng: np.random.Generator, answer: int) -> list[str]:
    """Three distinct non-negative integers within a few of ``answer``: wrong options a miscount would give."""
    nearby = [answer + offset for offset in (-3, -2, -1, 1, 2, 3, 4) if answer + offset >= 0]
    return [str(number) for number in _pick(rng, nearby, 3)]


@register_generator("visual_reasoning")
def visual_reasoning_row(rng: np.random.Generator, image_size: int) -> SyntheticRow:
    """Counting + arithmetic over a drawn scene, or area / perimeter of a figure on a unit grid; asked as a
    four-option MCQ (answer: a letter) with probability `VISUAL_MCQ_FRACTION`, else for the integer."""
    kind = tuple(VISUAL_PROBLEMS)[int(rng.integers(len(VISUAL_PROBLEMS)))]
    question, answer, image, difficulty = VISUAL_PROBLEMS[kind](rng, image_size)
    if rng.random() < VISUAL_MCQ_FRACTION:
        problem, letter = _mcq(rng, question, str(answer), _numeric_distractors(rng, answer))
        return SyntheticRow(problem, letter, image, difficulty)
    return SyntheticRow(IMAGE_PLACEHOLDER + question, str(answer), image, difficulty)


def write_synthetic(
    out_dir: PathLike,
    capability: str,
    num_rows: int,
    seed: int,
    image_size: int = MIN_IMAGE_SIZE,
    max_difficulty: float = 1.0,
) -> epath.Path:
    """Write ``num_rows`` rows of ``capability`` to ``out_dir/{capability}.jsonl`` (+ ``out_dir/images/``).

    Rows are EasyR1-schema JSON objects ``{"id", "problem", "answer", "images", "pass_rate"}`` (``images`` omitted
    for text rows) with image paths relative to ``out_dir``; images are ``image_size``² RGB PNGs. Rows harder than
    ``max_difficulty`` are redrawn (a tiny model's testbed keeps to the easy end: small numbers, few objects).
    Returns the jsonl path. Same (capability, num_rows, seed, image_size, max_difficulty) -> byte-identical files.
    """
    if capability not in GENERATORS:
        raise ValueError(f"no synthetic generator for capability {capability!r}; known: {sorted(GENERATORS)}")
    if num_rows < 1:
        raise ValueError(f"num_rows must be positive, got {num_rows}")
    if not 0.0 <= max_difficulty <= 1.0:
        raise ValueError(f"max_difficulty must be in [0, 1], got {max_difficulty}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")
    out_dir = as_path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, CAPABILITIES.index(capability)])
    path = out_dir / f"{capability}.jsonl"
    with path.open("w", encoding="utf-8") as rows:
        for index in range(num_rows):
            generated = GENERATORS[capability](rng, image_size)
            while generated.difficulty > max_difficulty:
                generated = GENERATORS[capability](rng, image_size)
            row: dict[str, object] = {
                "id": f"{capability}-{seed}-{index:05d}",
                "problem": generated.problem,
                "answer": generated.answer,
            }
            if generated.image is not None:
                image_path = f"images/{capability}_{index:05d}.png"
                with (out_dir / image_path).open("wb") as image_file:
                    generated.image.save(image_file, format="PNG")
                row["images"] = [image_path]
            row["pass_rate"] = generated.pass_rate
            rows.write(json.dumps(row) + "\n")
    return path
