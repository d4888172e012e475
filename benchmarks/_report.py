"""Output shared by the benchmarks: an aligned table for people, ``--json`` for tools."""

from __future__ import annotations

import gc
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

Cell = str | int | float | None


ROOT = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The project's commit, ``-dirty`` when ``foreman/`` has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "foreman"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if changes else head


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "commit": commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def headline(info: dict[str, Any]) -> str:
    return (
        f"foreman {info['commit']}, {info['date']}, {info['cpus']} CPUs, "
        f"Python {info['python']}, SQLite {info['sqlite']}"
    )


def progress(message: str) -> None:
    """Progress goes to stderr, so ``--json`` output on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def median_run(runs: Sequence[T], seconds: Callable[[T], float]) -> T:
    """The run with the median time (the faster middle one of an even count)."""
    return sorted(runs, key=seconds)[(len(runs) - 1) // 2]


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def fmt_float(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def _text(cell: Cell) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, float):
        return fmt_float(cell)
    if isinstance(cell, int):
        return fmt_int(cell)
    return cell


class Stopwatch:
    """Wall time and garbage-collector time, summed over the ``with`` blocks it times."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.gc_seconds = 0.0
        self._started = 0.0
        self._gc_started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_started

    def __enter__(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._started
        gc.callbacks.remove(self._on_gc)


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], *, left: int = 1) -> str:
    """An aligned text table: the first ``left`` columns left-aligned, the rest
    (numbers) right-aligned."""
    texts = [[_text(cell) for cell in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in texts)) for i, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(list(headers)), rule, *(line(row) for row in texts)])


def emit(as_json: bool, document: dict[str, Any], text: str) -> None:
    """Print the JSON document, or the human report under a line naming the machine."""
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        print(f"{headline(document['machine'])}\n\n{text}")
