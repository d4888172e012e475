"""What the operator reads: events and jobs as JSON objects, one-line summaries, tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from foreman.events.jobs import Job
from foreman.events.log import EVENT_COLUMNS
from foreman.events.replay import Progress as ProgressCallback
from foreman.events.summary import error_text, summary
from foreman.events.types import EVENT_TYPES, stored_data

UNLIMITED_WIDTH = 10_000
"""Console width when stdout is not a terminal: piped tables keep whole lines."""


def event_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A raw event row in ``export``'s shape, with ``data`` parsed into an object."""
    event = dict(zip(EVENT_COLUMNS, row, strict=True))
    event["data"] = stored_data(event.pop("data"))
    return event


def job_dict(job: Job) -> dict[str, Any]:
    fields = job._asdict()
    if job.error is not None:
        fields["error"] = job.error._asdict()
    return fields


def event_line(row: Sequence[Any]) -> str:
    """A raw event row as one JSON line, ``data`` embedded verbatim: the exact text
    the hash chain covers, so the chain can be recomputed from an export."""
    envelope = dict(zip(EVENT_COLUMNS, row, strict=True))
    data = envelope.pop("data")
    return f'{json.dumps(envelope)[:-1]}, "data": {data}}}\n'


def write_jsonl(rows: Iterable[Sequence[Any]], out: IO[str]) -> None:
    for row in rows:
        out.write(event_line(row))


def stdout_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = UNLIMITED_WIDTH
    return console


NUMERIC_COLUMNS = frozenset({"seq", "version", "attempts", "priority"})
MIN_WIDTHS = {"type": max(map(len, EVENT_TYPES))}


def _table(*columns: str, header: bool = True) -> Table:
    """A table whose columns are at least as wide as their names, so that tables printed
    one after another without headers (``tail --follow``) line up with the first."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, show_header=header)
    for name in columns:
        table.add_column(
            name,
            justify="right" if name in NUMERIC_COLUMNS else "left",
            min_width=max(len(name), MIN_WIDTHS.get(name, 0)),
            no_wrap=name != "summary",
        )
    return table


def _add_row(table: Table, *cells: object) -> None:
    table.add_row(*(Text("" if cell is None else str(cell)) for cell in cells))


def events_table(
    events: Iterable[dict[str, Any]], *, header: bool = True, stream: bool = True
) -> Table:
    columns = ["seq", "recorded_at", *(["stream"] if stream else []), "version", "type"]
    table = _table(*columns, "summary", header=header)
    for event in events:
        _add_row(table, *(event[c] for c in columns), summary(event["type"], event["data"]))
    return table


JOB_COLUMNS = (
    "id",
    "kind",
    "model",
    "state",
    "backend",
    "attempts",
    "priority",
    "created_at",
    "updated_at",
)


def jobs_table(jobs: Iterable[Job]) -> Table:
    table = _table(*JOB_COLUMNS)
    for job in jobs:
        _add_row(table, *(getattr(job, column) for column in JOB_COLUMNS))
    return table


def job_grid(job: Job) -> Table:
    """The job's current state, one field a line; unset optional fields are left out."""
    grid = Table.grid(padding=(0, 2))
    fields: list[tuple[str, object]] = [
        ("job", job.id),
        ("state", job.state),
        ("kind", job.kind),
        ("model", job.model),
        ("tenant", job.tenant),
        ("priority", job.priority),
        ("origin", job.origin),
        ("attempts", job.attempts),
        ("backend", job.backend),
        ("version", job.version),
        ("created", job.created_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
        ("updated", job.updated_at),
        ("error", job.error and error_text(*job.error)),
        ("cancel reason", job.cancel_reason),
        ("result", job.result_seq and f"event {job.result_seq} (JobSucceeded)"),
        ("state webhook", job.state_webhook_url),
        ("idempotency key", job.idempotency_key),
    ]
    for name, value in fields:
        if value is not None:
            _add_row(grid, name, value)
    return grid


@contextmanager
def progress_bar(description: str) -> Iterator[ProgressCallback | None]:
    """A ``progress(done, total)`` callback drawing a bar on stderr, or None when stderr
    is not a terminal (the bar would only be noise in a log file)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
