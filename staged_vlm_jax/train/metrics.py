"""Per-step training metrics: one JSON line per optimizer step in `metrics.jsonl`, plus TensorBoard scalars.

The JSON lines file is the source of truth (plots and tests read it); TensorBoard is for watching a run live.
Both are written with only the `tensorboard` package so the trainer does not depend on TensorFlow or torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

METRICS_FILE = "metrics.jsonl"


def _to_python(value: Any) -> Any:
    """Unwraps numpy/JAX 0-d values, which neither `json` nor the TensorBoard proto accept."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: str | Path) -> list[dict]:
    """Parses a metrics.jsonl file, ignoring a last line left unfinished by a kill mid-write."""
    path = Path(path)
    lines = path.read_text().splitlines()
    rows = []
    for lineno, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                break  # a partial last line: the process died while writing it
            raise ValueError(f"{path}:{lineno}: corrupt metrics line: {e}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def truncate_metrics(path: str | Path, last_global_step: int) -> int:
    """Keeps only rows with `global_step <= last_global_step`, as a resume from that checkpoint re-runs the rest.

    The file is replaced atomically, so a kill during the rewrite leaves the old file intact. A missing file is
    left missing. Returns how many rows were kept.
    """
    path = Path(path)
    if not path.exists():
        return 0
    rows = [row for row in read_metrics(path) if row["global_step"] <= last_global_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows)


class MetricsWriter:
    """Appends one record per optimizer step to `workdir/metrics.jsonl` and `workdir/tensorboard/`."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / METRICS_FILE
        self._tb = EventFileWriter(str(self.workdir / "tensorboard"))

    def write(self, record: dict) -> None:
        """Writes one step's record; numeric values (other than `global_step`, the TB step) also go to TensorBoard.

        The line is fsync'd before returning, so a SIGKILL loses at most the line being written.
        """
        record = {key: _to_python(value) for key, value in record.items()}
        step = record.get("global_step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"metrics record needs an int global_step, got {step!r}")
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        values = [
            summary_pb2.Summary.Value(tag=key, simple_value=float(value))
            for key, value in sorted(record.items())
            if key != "global_step" and _is_number(value)
        ]
        if values:
            summary = summary_pb2.Summary(value=values)
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
            self._tb.flush()

    def truncate(self, last_global_step: int) -> int:
        """Drops rows after `last_global_step` when resuming from that checkpoint; returns how many rows were kept.

        Also logs a TensorBoard session START at the next step, which makes TensorBoard discard the old run's
        events for the steps about to be re-run instead of showing both.
        """
        kept = truncate_metrics(self.path, last_global_step)
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=last_global_step + 1, session_log=start))
        self._tb.flush()
        return kept

    def close(self) -> None:
        self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
