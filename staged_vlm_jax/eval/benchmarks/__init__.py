"""The paper's benchmarks, each a registered `Benchmark` that scores a model's raw responses officially.

``benchmarks.get("wemath").score(records)`` takes the benchmark's own rows (the fields of its official files: HF
parquet or VLMEvalKit TSV) each with the model's raw response under ``"prediction"``, and returns its official
scores in percent (``{"accuracy": ...}``, WeMath's ``{"score_strict", "score_loose", ...}``, POPE's ``{"accuracy",
"f1", ...}``). Answer extraction (`extraction`) is shared: the last ``\\boxed{}`` first, as the paper's models
answer, then rule-based fallbacks. Each module registers its benchmarks by name on import; importing this
package imports them all.

``benchmarks.get(name).load(path)`` reads the file a user downloaded into those rows, by extension: ``.tsv`` the
VLMEvalKit TSV the paper evaluated on (``MathVista_MINI.tsv``, ...), ``.parquet`` the official HF data set where
its rows give VLMEvalKit's prompt unchanged (`load_records`, one `FileLayout` per extension). Records keep the
file's own fields and their images as given (base64 text, ``{"bytes", "path"}`` structs); a TSV ``image`` cell
naming another row's ``index`` holds that row's image (VLMEvalKit's convention). ``question(record, where)`` is
VLMEvalKit's ``build_prompt`` for the dataset: its images first (one ``<image>`` each), then the text. Every
malformed row is a `DataError` naming ``file:row``.

LLM judge (optional, `eval.judge`): VLMEvalKit asks its judge model to read a response only when its rules cannot.
A benchmark whose VLMEvalKit scorer does so has a `JudgeTask`: which records its rules cannot read (no ``\\boxed{}``
and no rule match), the prompt VLMEvalKit sends (`judge_prompts`) and how a reply is read. The evaluation asks the
judge about exactly those records and hands the scorer the judge's extraction under `JUDGED`; a scorer uses it
where its rules fail (`judged`), and without it scores by rule alone, so a scorer never calls a network itself.
"""

from __future__ import annotations

import ast
import base64
import binascii
import dataclasses
import math
import string
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from etils import epath

from staged_vlm_jax.data.schema import IMAGE_PLACEHOLDER, DataError, ImageRef, RowLocation
from staged_vlm_jax.data.sources import ROW_FORMATS, stored_image

Record = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Question:
    """What the model is asked about a record: VLMEvalKit's prompt text for it, with one ``<image>`` placeholder
    per image in order (the training rows' convention, `schema.IMAGE_PLACEHOLDER`), and those images."""

    text: str
    images: tuple[ImageRef, ...]


# The judge's extraction of a record's response, as the evaluation hands it to the scorer (`JudgeTask`).
JUDGED = "judge_extraction"


def judged(record: Record) -> str | None:
    """The LLM judge's extraction of the record's response, if the evaluation asked a judge about it (the rules
    could not read it) and got a usable reply; None otherwise."""
    value = record.get(JUDGED)
    return value if isinstance(value, str) else None


@dataclasses.dataclass(frozen=True)
class JudgeTask:
    """How VLMEvalKit's LLM judge helps score a benchmark.

    ``wanted(record, position)``: whether the rules cannot read the record's response (no ``\\boxed{}``, no rule
    match), the only records a judge is asked about. ``messages(record)``: the chat messages VLMEvalKit sends its
    judge for it (`judge_prompts`). ``parse(reply, record)``: the extraction in the judge's reply, in the form the
    scorer reads under `JUDGED` (an option letter, "Yes"/"No", an answer string), or None for a reply the scorer
    cannot use (counted as a failed request). A reply that reads "none of them" (an MCQ judge's "Z", a yes/no
    judge's "Unknown") is an extraction: the judge answered, and the record is scored wrong."""

    wanted: Callable[[Record, int], bool]
    messages: Callable[[Record], list[dict[str, str]]]
    parse: Callable[[str, Record], str | None]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark by name: its scorer (records with ``"prediction"`` -> scores in %), which table group it averages
    into ("visual_math", "perception": Table 1; "extended": the appendix's extended suite), and how its local files
    become questions: ``load`` reads a file (HF parquet or VLMEvalKit TSV, by extension) into records, the file's
    own fields, and ``question`` builds a record's prompt (``where``: the file and row, for error messages).
    ``judge``: the LLM-judge step of its VLMEvalKit scorer, if it has one (None: VLMEvalKit scores it by rule)."""

    name: str
    score: Callable[[Sequence[Record]], dict[str, float]]
    load: Callable[[epath.Path], list[dict[str, Any]]]
    question: Callable[[Record, RowLocation], Question]
    group: str = ""
    headline: str = "accuracy"  # the score Table 1 reports
    judge: JudgeTask | None = None


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Adds ``benchmark`` to `BENCHMARKS`; a name registered twice is an error (two scorers for one table)."""
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is registered twice")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get(name: str) -> Benchmark:
    """The registered benchmark ``name``; an unknown name lists the registered ones."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; registered: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def required(record: Record, position: int, field: str, benchmark: str) -> Any:
    """``record[field]``; a missing field, or pandas' empty cell (NaN), is a ValueError naming the benchmark, the
    record's position and the field, so a malformed file fails loudly instead of scoring as wrong answers."""
    if field not in record:
        raise ValueError(f"{benchmark} record {position}: missing field {field!r}")
    value = record[field]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{benchmark} record {position}: field {field!r} is empty")
    return value


def blank(cell: object) -> bool:
    """True for a cell that holds nothing: missing, None, NaN (pandas' empty cell) or only whitespace."""
    return cell is None or (isinstance(cell, float) and math.isnan(cell)) or not str(cell).strip()


def required_text(record: Record, position: int, field: str, benchmark: str) -> str:
    """`required` for a string field: a number where text belongs (a TSV column pandas parsed as numbers) is an
    error rather than a guess at how the number was written."""
    value = required(record, position, field, benchmark)
    if not isinstance(value, str):
        raise ValueError(f"{benchmark} record {position}: field {field!r} must be a string, got {value!r}")
    return value


def accuracy_breakdown(hits: Sequence[float], groups: Sequence[Iterable[str]]) -> dict[str, float]:
    """``{"accuracy", "count", "accuracy/<group>"...}`` in percent; ``hits[i]`` is whether record ``i`` is right (or
    its score in [0, 1], e.g. TextVQA's), ``groups[i]`` names the groups it counts in (e.g. its question type and its
    answer type). Raises ValueError on no records (no score)."""
    if not hits:
        raise ValueError("no records to score")
    by_group: dict[str, list[float]] = defaultdict(list)
    for hit, names in zip(hits, groups, strict=True):
        for name in names:
            by_group[name].append(hit)
    scores = {"accuracy": 100.0 * sum(hits) / len(hits), "count": float(len(hits))}
    scores.update({f"accuracy/{name}": 100.0 * sum(group) / len(group) for name, group in sorted(by_group.items())})
    return scores


# --- Benchmark files ----------------------------------------------------------------------------------------------

# VLMEvalKit's MCQ instruction after the options (ImageMCQDataset.build_prompt), trailing space and newline included.
MCQ_INSTRUCTION = "Please select the correct answer from the options above. \n"


@dataclasses.dataclass(frozen=True)
class FileLayout:
    """What one kind of benchmark file holds: ``required``, the fields every row must have and not leave empty (what
    its prompt and its scorer read, its images included); ``image``, the field holding a row's images; ``keep``,
    which of the file's rows are the benchmark's (default: all); ``check``, a further test of each kept row (raises
    `DataError`)."""

    required: tuple[str, ...]
    image: str = "image"
    keep: Callable[[Record], bool] | None = None
    check: Callable[[Record, RowLocation], None] | None = None


def load_records(path: epath.Path | str, benchmark: str, layouts: Mapping[str, FileLayout]) -> list[dict[str, Any]]:
    """The benchmark's rows of the file at ``path`` as dicts of the file's own fields, read by the reader of its
    extension in `sources.ROW_FORMATS` (a TSV's ``image`` cell naming another row's ``index`` holds that row's
    image) under that extension's layout in ``layouts`` (``".tsv"``, ``".parquet"``).

    Each row is checked as it is read, so a malformed file fails here rather than mid-evaluation: every ``required``
    field present and non-empty, the layout's ``check``, and every image valid base64 (TSV) and an image whose header
    Pillow reads (`ImageRef.size`; the pixels are decoded when the prompt's images load). Raises `DataError` naming
    ``file:row`` (the 0-based data row) and the field, or the file alone for an unknown extension, an unreadable file
    (also a TSV without ``question``, ``answer`` or ``image`` column) and a file with none of the benchmark's rows.
    """
    path = epath.Path(path)
    suffix = path.suffix.lower()
    layout = layouts.get(suffix)
    if layout is None:
        readable = " or ".join(sorted(layouts))
        raise DataError(
            path, "extension", f"{benchmark} reads {readable} files, not {path.suffix!r}", reason="unknown_format"
        )
    records = []
    for row, raw in ROW_FORMATS[suffix].records(path):
        where = RowLocation(path, row)
        if None in raw:  # csv.DictReader puts a row's cells beyond the header under the key None
            raise DataError(where, "row", f"has {len(raw[None])} cell(s) more than the header", reason="malformed_row")
        record = dict(raw)
        if layout.keep is not None and not layout.keep(record):
            continue
        for field in layout.required:
            if field not in record:
                message = f"missing (a {benchmark} {suffix} file has a {field!r} column)"
                raise DataError(where, field, message, reason="missing_field")
            if blank(record[field]):
                raise DataError(where, field, "empty", reason="empty_field")
        if layout.check is not None:
            layout.check(record, where)
        for image in record_images(record, layout.image, where):
            image.size()
        records.append(record)
    if not records:
        raise DataError(path, "rows", f"no {benchmark} rows", reason="empty_file")
    return records


def record_images(record: Record, field: str, where: RowLocation) -> tuple[ImageRef, ...]:
    """The images in ``record[field]`` as `ImageRef`s of ``where``: base64 text (a VLMEvalKit TSV cell; several as
    ``"['<base64>', ...]"``, the list VLMEvalKit's ``toliststr`` reads), an HF ``{"bytes", "path"}`` struct (its
    bytes, else its path, relative to the record's file), bytes, or a list of these. Raises `DataError` for a
    missing or empty field, invalid base64, or an entry that is none of these."""
    value = record.get(field)
    if isinstance(value, str) and len(value) > 1 and value[0] == "[" and value[-1] == "]":
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            raise DataError(where, field, f"not a list of base64 images ({error})", reason="corrupt_image") from error
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
    if not entries:
        raise DataError(where, field, "no image", reason="missing_image")
    if len(entries) == 1:
        return (_image_ref(entries[0], where, field),)
    return tuple(_image_ref(entry, where, f"{field}[{index}]") for index, entry in enumerate(entries))


def _image_ref(entry: object, where: RowLocation, field: str) -> ImageRef:
    if isinstance(entry, str) and entry:
        try:
            data = base64.b64decode(entry, validate=True)
        except binascii.Error as error:
            raise DataError(where, field, f"not valid base64 ({error})", reason="corrupt_image") from error
        return ImageRef(data, where, field, "<base64 image>")
    if isinstance(entry, (bytes, bytearray, memoryview)) and len(entry):
        return ImageRef(bytes(entry), where, field, "<embedded bytes>")
    if isinstance(entry, Mapping) and (image := stored_image(entry, where.file.parent, where, field)) is not None:
        return image
    if blank(entry):
        raise DataError(where, field, "missing or empty image", reason="missing_image")
    raise DataError(
        where,
        field,
        f"expected base64 text, image bytes or a {{'bytes': ..., 'path': ...}} struct, got {entry!r:.80}",
        reason="invalid_images",
    )


def prompt_text(record: Record, field: str, where: RowLocation) -> str:
    """``record[field]``, text a prompt is built from; missing, empty or not text is a `DataError`."""
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(where, field, f"expected non-empty text, got {value!r:.80}", reason="invalid_problem")
    return value


def image_question(record: Record, where: RowLocation, text: str, image_field: str = "image") -> Question:
    """The record's question as VLMEvalKit sends it: every ``build_prompt`` here puts the row's images before the
    text, so the text is one ``<image>`` per image (in order), then ``text``."""
    images = record_images(record, image_field, where)
    return Question(IMAGE_PLACEHOLDER * len(images) + text, images)


def _filled(cell: object) -> bool:
    """Whether VLMEvalKit sees a cell (``not pd.isna``): pandas reads an empty TSV cell as NaN."""
    return cell is not None and cell != "" and not (isinstance(cell, float) and math.isnan(cell))


def mcq_prompt(record: Record, where: RowLocation, *, instruction: bool = True) -> str:
    """The text of VLMEvalKit's ``ImageMCQDataset.build_prompt`` (``vlmeval/dataset/image_mcq.py``).

    ``"Hint: {hint}\\n"`` if the row has a hint, ``"Question: {question}\\n"``, then, if it has options (its filled
    cells of the columns ``A``..``Z``, in that order), ``"Options:\\n"``, ``"{letter}. {text}\\n"`` per option and
    `MCQ_INSTRUCTION`. ``instruction=False`` is ``WeMath.build_prompt`` (same file), which stops after the options.
    """
    question = prompt_text(record, "question", where)
    options = {letter: record[letter] for letter in string.ascii_uppercase if _filled(record.get(letter))}
    hint = record.get("hint")
    prompt = f"Hint: {hint}\n" if _filled(hint) else ""
    prompt += f"Question: {question}\n"
    if options:
        prompt += "Options:\n" + "".join(f"{letter}. {text}\n" for letter, text in options.items())
        if instruction:
            prompt += MCQ_INSTRUCTION
    return prompt


# The benchmarks register on import: visual math, then perception (Table 1's column order), then the extended suite.
from staged_vlm_jax.eval.benchmarks import mathvista, mathvision, mathverse, wemath  # noqa: E402, F401, I001
from staged_vlm_jax.eval.benchmarks import mcq, pope  # noqa: E402, F401
from staged_vlm_jax.eval.benchmarks import dynamath, hallusionbench, vqa  # noqa: E402, F401
