"""Per-step training metrics: one JSON line per optimizer step in `metrics.jsonl`, plus TensorBoard scalars.

The JSON lines file is the source of truth (plots and tests read it); TensorBoard is for watching a run live.
Both are written with only the `tensorboard` package so the trainer does not depend on TensorFlow or torch.
The workdir may be remote (`staged_vlm_jax.paths`): the JSON lines file is rewritten whole at each step (object
stores cannot append, and a whole-file replace never leaves a half-written line), and TensorBoard events go
through TensorBoard's own filesystem layer; a TensorBoard failure is reported once and training goes on.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from staged_vlm_jax.paths import PathLike, as_path, write_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _to_python(value: Any) -> Any:
    """Unwraps numpy/JAX 0-d values, which neither `json` nor the TensorBoard proto accept."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MetricsFileError(ValueError):
    """A metrics.jsonl line that is not a record (hand-edited, or damaged on disk), named by file:line."""


def read_metrics(path: PathLike) -> list[dict]:
    """Parses a metrics.jsonl file, ignoring a last line left unfinished by a kill mid-write (files written
    before the whole-file rewrite could have one). Raises `MetricsFileError` naming ``file:line`` for any other
    line that is not a JSON object with an integer ``global_step``."""
    path = as_path(path)
    lines = path.read_text().splitlines()
    rows = []
    for lineno, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                break  # a partial last line: the process died while writing it
            raise MetricsFileError(f"{path}:{lineno}: corrupt metrics line ({e}); delete or fix it") from e
        if not isinstance(row, dict) or not isinstance(row.get("global_step"), int):
            raise MetricsFileError(f"{path}:{lineno}: expected a JSON object with an integer global_step, got "
                                   f"{line[:80]!r}; delete or fix the line")  # fmt: skip
        rows.append(row)
    return rows


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def truncate_metrics(path: PathLike, last_global_step: int) -> int:
    """Keeps only rows with `global_step <= last_global_step`, as a resume from that checkpoint re-runs the rest.

    The file is replaced atomically, so a kill during the rewrite leaves the old file intact. A missing file is
    left missing. Returns how many rows were kept.
    """
    path = as_path(path)
    if not path.exists():
        return 0
    rows = [row for row in read_metrics(path) if row["global_step"] <= last_global_step]
    write_atomic(path, _lines(rows))
    return len(rows)


class MetricsWriter:
    """Adds one record per optimizer step to `workdir/metrics.jsonl` and `workdir/tensorboard/`."""

    def __init__(self, workdir: PathLike) -> None:
        self.workdir = as_path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / METRICS_FILE
        self._text = self.path.read_text() if self.path.exists() else ""
        self._tb_failed = False
        self._tb: EventFileWriter | None = None
        self._tensorboard(lambda: setattr(self, "_tb", EventFileWriter(os.fspath(self.workdir / "tensorboard"))))

    def _tensorboard(self, write: Callable[[], object]) -> None:
        """Runs one TensorBoard write; on the first failure (e.g. a remote filesystem TensorBoard cannot append
        to) warns once and writes no more events: metrics.jsonl stays complete."""
        if self._tb_failed:
            return
        try:
            write()
        except Exception as error:  # noqa: BLE001 - any TensorBoard I/O failure; metrics.jsonl is the record
            logger.warning("TensorBoard events for %s stop here (metrics.jsonl goes on): %s", self.workdir, error)
            self._tb, self._tb_failed = None, True

    def _event(self, event: event_pb2.Event) -> None:
        def write() -> None:
            self._tb.add_event(event)
            self._tb.flush()

        self._tensorboard(write)

    def write(self, record: dict) -> None:
        """Writes one step's record; numeric values (other than `global_step`, the TB step) also go to TensorBoard.

        The file is replaced whole and synced before returning, so a SIGKILL loses at most this record.
        """
        record = {key: _to_python(value) for key, value in record.items()}
        step = record.get("global_step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"metrics record needs an int global_step, got {step!r}")
        self._text += _lines([record])
        write_atomic(self.path, self._text)
        values = [
            summary_pb2.Summary.Value(tag=key, simple_value=float(value))
            for key, value in sorted(record.items())
            if key != "global_step" and _is_number(value)
        ]
        if values:
            summary = summary_pb2.Summary(value=values)
            self._event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def truncate(self, last_global_step: int) -> int:
        """Drops rows after `last_global_step` when resuming from that checkpoint; returns how many rows were kept.

        Also logs a TensorBoard session START at the next step, which makes TensorBoard discard the old run's
        events for the steps about to be re-run instead of showing both.
        """
        kept = truncate_metrics(self.path, last_global_step)
        self._text = self.path.read_text() if self.path.exists() else ""
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._event(event_pb2.Event(wall_time=time.time(), step=last_global_step + 1, session_log=start))
        return kept

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
