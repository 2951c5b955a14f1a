"""Readers that turn data files into validated `Example`s: EasyR1 json / jsonl / parquet and VLMEvalKit TSV.

Every stage's data enters through `read_rows`, which picks a reader by file extension from `ROW_FORMATS`. A
reader is two steps: ``records`` lists a file's raw records cheaply (a JSON line, a parquet row, a TSV row) and
``build`` turns one record into an `Example`. Only ``build`` can fail for a single row, so under
``on_error="skip"`` a bad row is counted and the next one read, while a file that cannot be read at all (not
JSON, not parquet, no TSV header) always raises. Every failure is a `DataError` naming ``file:row``. A
directory is a data set written by ``staged-vlm data convert``: a TFDS data set, read through tfds by
`staged_vlm_jax.data.array_record`, which registers its reader.

EasyR1 rows (json, jsonl, parquet) hold ``problem``, ``answer``, ``images`` and optionally ``pass_rate`` and
``id`` (other keys are ignored); the key names can be changed as EasyR1's ``data.prompt_key`` /
``data.answer_key`` / ``data.image_key`` can (the paper's own data pipeline writes ``prompt`` and
``image_path``). ``images`` is a list whose entries are paths, relative ones resolved against ``image_root``
(default: the data file's folder), or HF ``datasets`` image structs ``{"bytes": ..., "path": ...}`` (the bytes
when present, else the path). EasyR1 itself joins relative paths to ``data.image_dir`` or leaves them relative
to the working directory; defaulting to the data file's folder makes a data set relocatable. A missing,
``None`` or empty ``images`` is a text-only row.

A ``.json`` file is a JSON array of rows, or, as for HF ``datasets`` (which EasyR1 loads ``.json`` and
``.jsonl`` with), JSON lines when its first non-blank character is not ``[``.

VLMEvalKit TSV rows (``index``, ``question``, option columns ``A``, ``B``, …, ``answer``, ``image`` as base64)
become single-image multiple-choice rows in the paper's Stage-1 format (`schema.mcq_problem`), the answer being
the letter. As in VLMEvalKit, an ``image`` cell of at most 64 characters that equals another row's ``index``
reuses that row's image, and empty option cells are not options.

With ``verify_images=True`` (the default) every image is decoded once while reading, so a missing or corrupt
image is reported (or skipped) up front; the decoded pixels are dropped, since `Example` holds lazy
`ImageRef`s. Pass False for large sets when start-up time matters: a bad image then raises the same
`DataError` (file, row and image) when the pipeline loads it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import (
    CAPABILITIES,
    ON_ERROR_POLICIES,
    DataError,
    ErrorPolicy,
    Example,
    ImageRef,
    RowLocation,
    SkipCounter,
    mcq_problem,
)
from staged_vlm_jax.paths import PathLike, as_path

logger = logging.getLogger(__name__)

# VLMEvalKit stores a repeated image once; later rows name the row holding it by its index (at most 64 chars).
_TSV_IMAGE_REFERENCE_MAX_CHARS = 64
_PARQUET_BATCH_ROWS = 256


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One data file of a capability; image paths in it are relative to ``image_root`` (default: its folder).

    ``repeat``: how many times each row appears per epoch when sources are concatenated. ``append_format`` False:
    its prompts get no think/boxed instruction (`Example.append_format`).
    """

    path: PathLike
    capability: str
    image_root: PathLike | None = None
    repeat: int = 1
    append_format: bool = True


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What `read_rows` was asked for, as every ``build`` step sees it."""

    image_root: epath.Path
    capability: str
    problem_key: str = "problem"
    answer_key: str = "answer"
    image_key: str = "images"


@dataclasses.dataclass(frozen=True)
class RowFormat:
    """A file format: ``records`` yields (row number, raw record); ``build`` makes one record an `Example`."""

    records: Callable[[epath.Path], Iterator[tuple[int, Any]]]
    build: Callable[[Any, RowLocation, ReadOptions], Example]


# By file extension, lower case with the dot (".jsonl"); `read_rows` picks the reader from it.
ROW_FORMATS: dict[str, RowFormat] = {}


def register_format(row_format: RowFormat, *extensions: str) -> None:
    """Make `read_rows` read files with these extensions (lower case, with the dot: ``".jsonl"``) as ``row_format``."""
    for extension in extensions:
        ROW_FORMATS[extension] = row_format


def read_rows(
    path: PathLike,
    *,
    capability: str,
    image_root: PathLike | None = None,
    on_error: ErrorPolicy = "raise",
    skipped: SkipCounter | None = None,
    verify_images: bool = True,
    problem_key: str = "problem",
    answer_key: str = "answer",
    image_key: str = "images",
) -> Iterator[Example]:
    """Yield the file's rows as `Example`s of ``capability``, in file order.

    ``on_error="raise"`` raises the first row's `DataError`; ``"skip"`` records it in ``skipped`` and goes on.
    If no ``skipped`` counter is given, one is made and its `SkipCounter.summary` logged (warning) when reading
    ends with rows skipped; pass one to aggregate over several files and report it yourself. Errors about the
    whole file (unknown extension, unreadable file) always raise. Rows without ``id`` get ``"{file stem}:{row}"``.
    """
    path = as_path(path)
    if on_error not in ON_ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {sorted(ON_ERROR_POLICIES)}, got {on_error!r}")
    if capability not in CAPABILITIES:
        raise ValueError(f"capability must be one of {CAPABILITIES}, got {capability!r}")
    row_format = ROW_FORMATS.get("" if path.is_dir() else path.suffix.lower())  # "": a converted directory
    if row_format is None:
        raise DataError(
            path,
            "extension",
            f"unknown data file type {path.suffix!r}; readable: {sorted(ROW_FORMATS)}",
            reason="unknown_format",
        )
    options = ReadOptions(
        image_root=as_path(image_root) if image_root is not None else path.parent,
        capability=capability,
        problem_key=problem_key,
        answer_key=answer_key,
        image_key=image_key,
    )
    handle_error = ON_ERROR_POLICIES[on_error]
    counter = skipped if skipped is not None else SkipCounter()
    try:
        for row, record in row_format.records(path):
            location = RowLocation(path, row)
            counter.rows_seen += 1
            try:
                example = row_format.build(record, location, options)
                if verify_images:
                    for image in example.images:
                        image.load()
            except DataError as error:
                handle_error(error, counter)
                continue
            yield example
    finally:
        if skipped is None and counter.total:
            logger.warning("%s: %s", path, counter.summary())


def _row_id(value: object, location: RowLocation) -> str:
    if value is None:
        return f"{location.file.stem}:{location.row}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(location, "id", f"expected a string or an integer, got {value!r}", reason="invalid_id")
    return str(value)


def _image_ref(entry: object, index: int, location: RowLocation, options: ReadOptions) -> ImageRef:
    """An EasyR1 ``images`` entry -> `ImageRef`: a path, or an HF ``{"bytes", "path"}`` struct."""
    field = f"{options.image_key}[{index}]"
    image = stored_image(entry, options.image_root, location, field)
    if image is None:
        raise DataError(
            location,
            field,
            f"expected an image path or a {{'bytes': ..., 'path': ...}} struct, got {entry!r:.80}",
            reason="invalid_images",
        )
    return image


def stored_image(entry: object, root: epath.Path, where: RowLocation, field: str) -> ImageRef | None:
    """An HF ``datasets`` image struct ``{"bytes", "path"}`` (its bytes when present, else its path) or a path, as
    an `ImageRef`, relative paths resolved against ``root``; None for anything else."""
    image_path = entry.get("path") if isinstance(entry, Mapping) else entry
    data = entry.get("bytes") if isinstance(entry, Mapping) else None
    if isinstance(data, (bytes, bytearray, memoryview)) and data:
        return ImageRef(bytes(data), where, field, image_path or "<embedded bytes>")
    if data is None and isinstance(image_path, str) and image_path:
        resolved = root / image_path  # an absolute image_path replaces the root
        return ImageRef(resolved, where, field, str(resolved))
    return None


def build_easyr1_row(record: Any, location: RowLocation, options: ReadOptions) -> Example:
    """One EasyR1-schema mapping -> `Example` (see the module docstring for the keys and image forms)."""
    if not isinstance(record, Mapping):
        raise DataError(location, "row", f"expected a JSON object, got {type(record).__name__}", reason="malformed_row")
    entries = record.get(options.image_key)
    if entries is None:
        entries = []
    if not isinstance(entries, (list, tuple)):
        raise DataError(
            location,
            options.image_key,
            f"expected a list of images, got {type(entries).__name__}",
            reason="invalid_images",
        )
    return Example(
        id=_row_id(record.get("id"), location),
        problem=record.get(options.problem_key),
        answer=record.get(options.answer_key),
        images=tuple(_image_ref(entry, index, location, options) for index, entry in enumerate(entries)),
        capability=options.capability,
        pass_rate=record.get("pass_rate"),
        location=location,
    )


@dataclasses.dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSON-lines file, undecoded: parsed in ``build``, so a bad line is one bad row."""

    data: bytes


def _json_lines(path: epath.Path) -> Iterator[tuple[int, JsonLine]]:
    # Binary, so that a line that is not valid UTF-8 is one malformed row rather than an unreadable file.
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield number, JsonLine(line)


def _first_character(path: epath.Path) -> str:
    with path.open("rb") as file:
        while chunk := file.read(1 << 16):
            if chunk.strip():
                return chunk.lstrip()[:1].decode("utf-8", errors="replace")
    return ""


def _json_records(path: epath.Path) -> Iterator[tuple[int, Any]]:
    if _first_character(path) != "[":
        yield from _json_lines(path)
        return
    try:
        rows = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, "file", f"not a valid JSON array ({error})", reason="unreadable_file") from error
    yield from enumerate(rows)


def _build_json_record(record: Any, location: RowLocation, options: ReadOptions) -> Example:
    """A parsed JSON-array element, or a `JsonLine` (JSON-lines files, and ``.json`` files written as lines)."""
    if isinstance(record, JsonLine):
        try:
            record = json.loads(record.data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(location, "row", f"not valid JSON ({error})", reason="malformed_row") from error
    return build_easyr1_row(record, location, options)


def _parquet_records(path: epath.Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from error
    import pyarrow

    with contextlib.ExitStack() as stack:
        try:
            parquet_file = parquet.ParquetFile(stack.enter_context(path.open("rb")))
        except (pyarrow.ArrowException, OSError) as error:
            raise DataError(path, "file", f"not a readable parquet file ({error})", reason="unreadable_file") from error
        row = 0
        for batch in parquet_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                yield row, record
                row += 1


def _tsv_records(path: epath.Path) -> Iterator[tuple[int, dict[str, str | None]]]:
    # Base64 images exceed csv's default 128 KiB field limit; 2**31 - 1 is the largest every platform accepts.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # epath's open takes no newline=; csv needs the untranslated line ends (quoted fields may hold "\r\n").
    with io.TextIOWrapper(path.open("rb"), encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file, delimiter="\t")
        missing = {"question", "answer", "image"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                path, "header", f"VLMEvalKit TSV lacks column(s) {sorted(missing)}", reason="unreadable_file"
            )
        rows = list(reader)
    images_by_index = {row["index"]: row["image"] for row in rows if row.get("index")}
    for position, row in enumerate(rows):
        image = row["image"] or ""
        if len(image) <= _TSV_IMAGE_REFERENCE_MAX_CHARS and image in images_by_index:
            row = {**row, "image": images_by_index[image]}
        yield position, row


def build_vlmevalkit_row(record: Mapping[str, str | None], location: RowLocation, options: ReadOptions) -> Example:
    """One VLMEvalKit TSV row -> single-image MCQ `Example` (`schema.mcq_problem`; answer = option letter)."""
    question, answer, image = record["question"], record["answer"] or None, record["image"]
    # Option columns are single capital letters; a short row leaves cells None and extra cells sit under key None.
    choices = {
        column: text
        for column, text in record.items()
        if isinstance(column, str) and len(column) == 1 and column.isupper() and text
    }
    if not question:
        raise DataError(location, "question", "missing or empty", reason="invalid_problem")
    if answer is not None and answer not in choices:
        raise DataError(
            location,
            "answer",
            f"{answer!r} is not one of the row's option letters {sorted(choices)}",
            reason="invalid_answer",
        )
    if not image:
        raise DataError(location, "image", "empty image cell", reason="missing_image")
    try:
        image_bytes = base64.b64decode(image, validate=True)
    except binascii.Error as error:
        raise DataError(location, "image", f"not valid base64 ({error})", reason="corrupt_image") from error
    return Example(
        id=_row_id(record.get("index") or None, location),
        problem=mcq_problem(question, choices),
        answer=answer,
        images=(ImageRef(image_bytes, location, "image", "<base64 image>"),),
        capability=options.capability,
        location=location,
    )


register_format(RowFormat(records=_json_lines, build=_build_json_record), ".jsonl")
register_format(RowFormat(records=_json_records, build=_build_json_record), ".json")
register_format(RowFormat(records=_parquet_records, build=build_easyr1_row), ".parquet")
register_format(RowFormat(records=_tsv_records, build=build_vlmevalkit_row), ".tsv")
