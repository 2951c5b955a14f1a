"""Screening a data source before anything trains: every row built into its prompt once, at start-up.

EasyR1 builds every prompt of its data set before training (``filter_overlong_prompts`` runs the processor over
each row), so the rows a run draws from, and with them its step count, are fixed before step 1. Screening does
the same without decoding images (their sizes come from the file headers, `ImageInputs.grid`), and turns every
row-level problem into a `DataError` naming ``file:row``:

* what `read_rows` refuses: malformed rows, missing fields, ``<image>`` placeholders that do not match the images;
* ``control_token``: the problem holds one of the tokenizer's special tokens as text (``<|im_end|>``,
  ``<|image_pad|>``, ...), which the chat template would tokenise as the real control token;
* ``missing_image`` / ``corrupt_image`` / ``unprocessable_image``: an image whose header cannot be read or whose
  size the processor refuses (with ``verify_images`` every image is decoded as well);
* ``overlong``: a prompt over ``max_prompt_length`` tokens, image tokens included. EasyR1 drops these silently
  whatever else is configured, so they are dropped under either ``on_error`` (and listed).

Under ``on_error="raise"`` the first row error (over-long prompts excepted) stops the run before training, in one
line; under ``"skip"`` the row is dropped. A source with no usable row is an error under either. Dropped rows,
and duplicates (same problem, answer and images; kept, as EasyR1 keeps them), are listed with their reasons in
``<workdir>/data_errors.jsonl`` (`DataErrorLog`) so that nothing is dropped without a trace.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import tqdm
from etils import epath
from transformers import PreTrainedTokenizerFast

from staged_vlm_jax.data.batch import ImageTokenMismatchError
from staged_vlm_jax.data.images import ImageInputs
from staged_vlm_jax.data.prompts import build_prompt
from staged_vlm_jax.data.schema import (
    ON_ERROR_POLICIES,
    DataError,
    ErrorPolicy,
    Example,
    SkipCounter,
)
from staged_vlm_jax.data.sources import DataSource, read_rows
from staged_vlm_jax.paths import as_path

OVERLONG = "overlong"
DUPLICATE = "duplicate"


@dataclasses.dataclass(frozen=True)
class ScreenedSource:
    """A source's usable rows (in file order), every row it dropped and why, and the kept rows repeating an
    earlier one."""

    source: DataSource
    examples: tuple[Example, ...]
    rows_seen: int
    dropped: tuple[DataError, ...]
    duplicates: tuple[DataError, ...]

    def dropped_by_reason(self) -> collections.Counter[str]:
        return collections.Counter(error.reason for error in self.dropped)

    def summary(self) -> str:
        """``PATH: 118 of 120 rows usable; dropped overlong: 1, missing_image: 1; 3 duplicates (kept)``."""
        line = f"{self.source.path}: {len(self.examples)} of {self.rows_seen} rows usable"
        if self.dropped:
            line += "; dropped " + ", ".join(f"{r}: {n}" for r, n in self.dropped_by_reason().most_common())
        if self.duplicates:
            line += f"; {len(self.duplicates)} duplicates (kept)"
        return line


class DataErrorLog:
    """``data_errors.jsonl``: one JSON line per dropped (or duplicate) row, written once however often the run
    is resumed (rows already in the file are not written again)."""

    def __init__(self, path: epath.Path) -> None:
        self.path = path
        self._written = set()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self._written.add(self._key(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a half-written last line of a killed run: its row is written again
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _key(entry: dict[str, Any]) -> tuple:
        return entry["where"], entry["field"], entry["reason"]

    def write(self, errors: Iterable[DataError], action: str) -> None:
        """Appends the errors not yet in the file; ``action`` says what happened to the row (skipped, kept)."""
        entries = [{"where": str(error.where), "field": error.field, "reason": error.reason, "action": action,
                    "message": str(error)} for error in errors]  # fmt: skip
        new = [entry for entry in entries if self._key(entry) not in self._written]
        if not new:
            return
        with self.path.open("a") as file:
            file.write("".join(json.dumps(entry) + "\n" for entry in new))
        self._written.update(map(self._key, new))


class DataScreen:
    """Screens sources for a tokenizer, image settings and prompt budget (module docstring), each source once."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        images: ImageInputs,
        max_prompt_length: int,
        on_error: ErrorPolicy = "raise",
        *,
        verify_images: bool = False,
        log: DataErrorLog | None = None,
    ) -> None:
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {sorted(ON_ERROR_POLICIES)}, got {on_error!r}")
        self.tokenizer, self.images, self.max_prompt_length = tokenizer, images, max_prompt_length
        self.on_error, self.verify_images, self.log = on_error, verify_images, log
        self.control_tokens = tuple(token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
        self._screened: dict[DataSource, ScreenedSource] = {}

    def __call__(self, source: DataSource) -> ScreenedSource:
        key = dataclasses.replace(source, repeat=1)  # how often a stage repeats the rows changes nothing here
        if key not in self._screened:
            self._screened[key] = self._screen(key)
        return self._screened[key]

    def _screen(self, source: DataSource) -> ScreenedSource:
        skipped = SkipCounter()
        rows = read_rows(source.path, capability=source.capability, image_root=source.image_root,
                         on_error=self.on_error, skipped=skipped, verify_images=self.verify_images)  # fmt: skip
        examples, overlong, duplicates, first_seen = [], [], [], {}
        for example in tqdm.tqdm(rows, desc=f"screening {as_path(source.path).name}", unit="row", disable=None,
                                 leave=False):  # fmt: skip
            if not source.append_format:
                example = dataclasses.replace(example, append_format=False)
            try:
                self.check(example)
            except DataError as error:
                if error.reason == OVERLONG:
                    overlong.append(error)
                else:
                    ON_ERROR_POLICIES[self.on_error](error, skipped)
                continue
            key = _content_key(example)
            if key in first_seen:
                where = example.location or example.id
                duplicates.append(DataError(where, "row", f"same problem, answer and images as {first_seen[key]}",
                                            reason=DUPLICATE))  # fmt: skip
            else:
                first_seen[key] = example.location or example.id
            examples.append(example)
        dropped = (*skipped.errors, *overlong)
        screened = ScreenedSource(source, tuple(examples), skipped.rows_seen, dropped, tuple(duplicates))
        if self.log is not None:
            self.log.write(screened.dropped, "skipped")
            self.log.write(screened.duplicates, "kept")
        if not examples:
            raise DataError(source.path, "rows", f"no usable row ({screened.summary()}); fix the data, or "
                            "data.max_prompt_length if the prompts are too long", reason="no_usable_rows")  # fmt: skip
        return screened

    def check(self, example: Example) -> int:
        """The row's prompt length in tokens; raises `DataError` for what the module docstring lists."""
        where = example.location if example.location is not None else f"example {example.id!r}"
        for token in self.control_tokens:
            if token in example.problem:
                raise DataError(where, "problem", f"holds the control token {token!r} as text, which the chat "
                                "template would read as the token itself; remove or escape it",
                                reason="control_token")  # fmt: skip
        grids = []
        for image in example.images:
            width, height = image.size()
            try:
                grids.append(self.images.grid(width, height))
            except ValueError as error:
                raise DataError(where, image.field, f"image {image.name!r} ({width}x{height}): {error}",
                                reason="unprocessable_image") from error  # fmt: skip
        try:
            ids = build_prompt(self.tokenizer, example.problem, grids, merge_size=self.images.settings.merge_size,
                               problem_id=example.id, append_format=example.append_format)  # fmt: skip
        except ImageTokenMismatchError as error:
            raise DataError(where, "problem", str(error), reason="image_token_mismatch") from error
        if len(ids) > self.max_prompt_length:
            raise DataError(where, "problem", f"the prompt is {len(ids)} tokens (images included), over "
                            f"data.max_prompt_length {self.max_prompt_length}", reason=OVERLONG)  # fmt: skip
        return len(ids)


def _content_key(example: Example) -> tuple:
    images = tuple(hashlib.sha1(image.source).hexdigest() if isinstance(image.source, bytes) else str(image.source)
                   for image in example.images)  # fmt: skip
    return example.problem, example.answer, images
