"""The training example every stage consumes, its validation, and what happens to rows that fail it.

All three stages read rows in EasyR1's schema — ``problem`` (the prompt, with one ``<image>`` placeholder per
image), ``answer`` (a string, graded by the reward), ``images`` and optional ``pass_rate`` — whatever file
format they come in. `Example` is that row after reading: it validates itself on construction, so a bad row
fails where it is read, with a message naming its file and row, instead of inside a pipeline worker or a reward
call with no context. Readers (`staged_vlm_jax.data.sources`) choose per call whether a bad row raises or is
skipped and counted (`ON_ERROR_POLICIES`, `SkipCounter`).

The placeholder rule is EasyR1's, checked against ``verl/utils/dataset.py`` (``RLHFDataset._build_messages``):
the prompt is split on ``<image>`` and one image slot is put at each occurrence, in order; the row's images are
handed to the processor separately, in list order. EasyR1 does *not* prepend missing placeholders: a row with
images but no ``<image>`` builds a prompt with no image slots, and the mismatch surfaces much later, in the HF
processor or the model's forward ("Image features and image tokens do not match"). So a row is valid only if
``problem.count("<image>") == len(images)``, text-only rows included (a stray ``<image>`` there would be an
image slot with no image).

Images are lazy references (`ImageRef`: a file path or the encoded bytes), not decoded arrays. Stage 1 and 3
sets hold thousands of images of up to 2048² pixels: decoded, they do not fit in a host's memory, and a Grain
pipeline wants cheap records that workers decode on demand. Each reference remembers the file and row that
named it, so a decode failure in a worker still raises a `DataError` naming ``file:row`` and the image.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np
from etils import epath
from PIL import Image

from staged_vlm_jax.data.images import easyr1_resize

CAPABILITIES = ("perception", "text_reasoning", "visual_reasoning")
IMAGE_PLACEHOLDER = "<image>"
# The paper's Stage-1 row format (VLM-CapCurriculum data_pipeline/format_for_training.py, PROMPT_TEMPLATE).
MCQ_INSTRUCTION = "Respond using only the letter corresponding to the correct answer."

ErrorPolicy = Literal["raise", "skip"]


@dataclasses.dataclass(frozen=True)
class RowLocation:
    """Where a row came from: ``file:row`` in messages, or just ``file`` for errors about the whole file.

    ``row`` is the 1-based line number for JSON lines (what an editor shows) and the 0-based position for JSON
    arrays, parquet and TSV data rows (what ``rows[i]`` / ``table[i]`` gives).
    """

    file: epath.Path
    row: int | None = None

    def __str__(self) -> str:
        return str(self.file) if self.row is None else f"{self.file}:{self.row}"


class DataError(ValueError):
    """A row (or file) that cannot be used, with where it is, which field is wrong, and why.

    ``reason`` is a short stable key (``"missing_answer"``, ``"corrupt_image"``, …) that `SkipCounter` counts by.
    """

    def __init__(self, where: RowLocation | str, field: str, message: str, *, reason: str) -> None:
        super().__init__(f"{where}: {field}: {message}")
        self.where = where
        self.field = field
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One image of a row, decoded on demand: a file to open, or the encoded image bytes themselves.

    ``where`` and ``field`` (e.g. ``images[1]``) name the row entry that referred to it; ``name`` is how messages
    call the image (its path, or the path stored beside embedded bytes).
    """

    source: epath.Path | bytes
    where: RowLocation | str
    field: str
    name: str

    def load(self, pixel_range: tuple[int, int] | None = None) -> np.ndarray:
        """The image as a uint8 [H, W, 3] RGB array; with ``pixel_range`` (min, max pixels) first resized into it
        as EasyR1 does (`images.easyr1_resize`, in the file's own mode).

        Converted with Pillow's ``convert("RGB")`` (alpha dropped, palettes expanded), as EasyR1's
        ``process_image`` does before the HF processor. Raises `DataError` with reason ``missing_image`` for a
        file that cannot be opened, ``corrupt_image`` for data Pillow cannot decode (truncated, not an image,
        over Pillow's decompression-bomb limit) and ``unprocessable_image`` for one the pre-resize cannot shrink
        or grow into the range (an extreme aspect ratio collapses a side to zero).
        """
        image = self._open(lambda opened: opened.load())
        if pixel_range is not None:
            try:
                image = easyr1_resize(image, *pixel_range)
            except ValueError as error:
                message = f"cannot resize image {self.name!r} ({image.width}x{image.height}) into {pixel_range} pixels"
                raise DataError(self.where, self.field, f"{message}: {error}", reason="unprocessable_image") from error
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def size(self) -> tuple[int, int]:
        """(width, height) from the file's header, without decoding the pixels (so a truncated file passes here and
        fails in `load`); raises `DataError` as `load` does for a missing or unreadable file."""
        return self._open(lambda image: None).size

    def _open(self, read: Callable[[Image.Image], object]) -> Image.Image:
        """The opened image after ``read`` (Pillow's ``load`` decodes it), with failures as `DataError`s."""
        try:
            data = self.source if isinstance(self.source, bytes) else self.source.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                read(image)
                return image
        except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
            raise DataError(
                self.where, self.field, f"cannot open image {self.name!r}: {error.strerror}", reason="missing_image"
            ) from error
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(
                self.where, self.field, f"cannot decode image {self.name!r}: {error}", reason="corrupt_image"
            ) from error


@dataclasses.dataclass(frozen=True)
class Example:
    """One training or evaluation row, validated on construction (raises `DataError`).

    Invariants: ``capability`` is one of `CAPABILITIES`; ``id`` and ``problem`` are non-empty strings;
    ``answer`` is a non-empty string (EasyR1 stores answers as strings and the reward compares strings, so a
    number is rejected rather than guessed at: ``7`` vs ``"7.0"`` vs ``"7"`` grade differently);
    ``problem.count("<image>") == len(images)`` (EasyR1's rule, see the module docstring); ``pass_rate`` is None
    or a finite number in [0, 1]. ``location`` (not part of equality) is where the row was read from; errors
    name it, or the id when there is none. ``append_format`` False keeps the prompt free of the think/boxed
    instruction (a caption-SFT source's prompts are the paper's bare caption request).
    """

    id: str
    problem: str
    answer: str
    images: tuple[ImageRef, ...]
    capability: str
    pass_rate: float | None = None
    append_format: bool = True
    location: RowLocation | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = self.location if self.location is not None else f"example {self.id!r}"
        for check in _EXAMPLE_CHECKS:
            check(self, where)


def _check_capability(example: Example, where: RowLocation | str) -> None:
    if example.capability not in CAPABILITIES:
        raise DataError(
            where,
            "capability",
            f"unknown capability {example.capability!r}; expected one of {CAPABILITIES}",
            reason="unknown_capability",
        )


def _check_id(example: Example, where: RowLocation | str) -> None:
    if not isinstance(example.id, str) or not example.id:
        raise DataError(where, "id", f"expected a non-empty string, got {example.id!r}", reason="invalid_id")


def _check_problem(example: Example, where: RowLocation | str) -> None:
    if not isinstance(example.problem, str) or not example.problem.strip():
        raise DataError(
            where, "problem", f"expected a non-empty string, got {_describe(example.problem)}", reason="invalid_problem"
        )


def _check_answer(example: Example, where: RowLocation | str) -> None:
    if example.answer is None or (isinstance(example.answer, str) and not example.answer.strip()):
        raise DataError(
            where, "answer", "missing or empty (every row needs a ground-truth answer)", reason="missing_answer"
        )
    if not isinstance(example.answer, str):
        raise DataError(
            where,
            "answer",
            f"expected a string (EasyR1 stores answers as strings), got {_describe(example.answer)}",
            reason="answer_not_string",
        )


def _check_images(example: Example, where: RowLocation | str) -> None:
    if not isinstance(example.images, tuple) or not all(isinstance(image, ImageRef) for image in example.images):
        raise DataError(
            where, "images", f"expected a tuple of ImageRef, got {_describe(example.images)}", reason="invalid_images"
        )
    placeholders = example.problem.count(IMAGE_PLACEHOLDER)
    if placeholders != len(example.images):
        raise DataError(
            where,
            "problem",
            f"has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the row has {len(example.images)} image(s); "
            f"EasyR1 puts one image at each {IMAGE_PLACEHOLDER} and adds none, so the counts must be equal",
            reason="placeholder_mismatch",
        )


def _check_pass_rate(example: Example, where: RowLocation | str) -> None:
    rate = example.pass_rate
    if rate is None:
        return
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and 0 <= rate <= 1):
        raise DataError(
            where,
            "pass_rate",
            f"expected None or a number in [0, 1], got {_describe(rate)}",
            reason="invalid_pass_rate",
        )


# In order: text fields first, so a row with several faults reports the most basic one.
_EXAMPLE_CHECKS: tuple[Callable[[Example, RowLocation | str], None], ...] = (
    _check_capability,
    _check_id,
    _check_problem,
    _check_answer,
    _check_images,
    _check_pass_rate,
)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def mcq_problem(question: str, options: Mapping[str, str]) -> str:
    """A multiple-choice ``problem`` in the paper's Stage-1 format, for a row with one image.

    ``"<image>{question}\\nOptions:\\nA: {A}\\n…\\nD: {D}\\n" + MCQ_INSTRUCTION + "\\n"``, options in the given
    order (letter -> text); the answer is the letter. Byte-for-byte the template of VLM-CapCurriculum's
    ``format_for_training.py`` for four options.
    """
    lines = [f"{IMAGE_PLACEHOLDER}{question}", "Options:"]
    lines += [f"{letter}: {text}" for letter, text in options.items()]
    lines.append(MCQ_INSTRUCTION)
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class SkipCounter:
    """Rows skipped under ``on_error="skip"``: every error (for ``data_errors.jsonl``), counted by
    `DataError.reason`."""

    rows_seen: int = 0
    counts: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: list[DataError] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def first_error(self) -> DataError | None:
        return self.errors[0] if self.errors else None

    def record(self, error: DataError) -> None:
        self.counts[error.reason] += 1
        self.errors.append(error)

    def summary(self) -> str:
        """One line: ``skipped 3 of 120 rows (missing_image: 2, answer_not_string: 1); first: <message>``."""
        if not self.counts:
            return f"skipped 0 of {self.rows_seen} rows"
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.counts.most_common())
        return f"skipped {self.total} of {self.rows_seen} rows ({reasons}); first: {self.first_error}"


def _raise(error: DataError, skipped: SkipCounter) -> None:
    raise error


# What a reader does with a row's DataError, by the ``on_error`` setting (``data.on_error`` in configs).
ON_ERROR_POLICIES: dict[str, Callable[[DataError, SkipCounter], None]] = {
    "raise": _raise,
    "skip": lambda error, skipped: skipped.record(error),
}
