"""The JSON lines log of finished runs: appended while running, read to resume."""

from __future__ import annotations

import os
import pathlib

from mtl_keras.experiments.record import RunRecord


def append(log_path: str | os.PathLike | None, record: RunRecord,
           settings: dict) -> None:
    """Appends one finished run (nothing when `log_path` is None)."""
    if log_path is None:
        return
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(record.to_json(settings) + "\n")


def resumed(log_path: str | os.PathLike | None, settings: dict) -> list[RunRecord]:
    """The runs logged in `log_path`, all trained with `settings`.

    A line cut short (a run killed while writing it) is dropped from the
    file, so that the run is trained again.

    Raises:
        ValueError: a logged run has other settings.
    """
    if log_path is None or not pathlib.Path(log_path).exists():
        return []
    log_path = pathlib.Path(log_path)
    text = log_path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        log_path.write_text(text)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record, logged = RunRecord.from_json(line)
        if logged != settings:
            raise ValueError(
                f"{log_path}, line {number}: run trained with {logged}, not the "
                f"current settings {settings}. Resume with the same settings, "
                "or write to another file."
            )
        records.append(record)
    return records
