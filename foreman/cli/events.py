"""``foreman events …``: the operator's view of the event log.

Every command but ``replay`` (without ``--until``) opens the log read-only, so
it can run beside a live server and never changes the file.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import click

from foreman.cli.render import (
    event_dict,
    events_table,
    job_dict,
    job_grid,
    jobs_table,
    progress_bar,
    stdout_console,
    write_jsonl,
)
from foreman.events import audit
from foreman.events.jobs import JobsProjection, with_unreadable_events
from foreman.events.log import EVENT_COLUMNS, EventLog, LogError
from foreman.events.replay import rebuild, seq_at, state_at
from foreman.events.store import open_log
from foreman.events.types import delivery_stream

DEFAULT_DB = "foreman.db"
POLL_SECONDS = 0.2

db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="FOREMAN_DB",
    default=DEFAULT_DB,
    show_default=True,
    show_envvar=True,
    help="The event log.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON, for scripts.")


@click.group()
def events() -> None:
    """Read, export, verify and replay the event log."""


@contextmanager
def opened_log(path: Path, *, read_only: bool = True) -> Iterator[EventLog]:
    """The log at ``path``, its errors turned into a clean message and exit code 1.

    The file must exist even when opening for writing: a mistyped path must not
    create an empty log.
    """
    if not path.is_file():
        raise click.ClickException(f"no such event log: {path}")
    try:
        log = open_log(path, read_only=read_only)
    except (LogError, sqlite3.Error) as error:
        raise click.ClickException(f"cannot open event log {path}: {error}") from error
    try:
        yield log
    except (sqlite3.Error, ValueError) as error:
        raise click.ClickException(f"event log {path}: {error}") from error
    finally:
        log.close()


# -- tail ----------------------------------------------------------------------


@events.command()
@db_option
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the last events to print.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they are committed.")
@json_option
def tail(db: Path, lines: int, follow: bool, as_json: bool) -> None:
    """Print the last events; --follow keeps printing new ones (Ctrl-C stops)."""
    with opened_log(db) as log, suppress(KeyboardInterrupt):
        after = _print_new(log, _tail_start(log, lines), as_json=as_json, header=True)
        while follow:
            time.sleep(POLL_SECONDS)
            after = _print_new(log, after, as_json=as_json, header=False)


def _tail_start(log: EventLog, lines: int) -> int:
    """The seq after which the last ``lines`` events begin."""
    (first,) = log.conn.execute(
        "SELECT min(seq) FROM (SELECT seq FROM events ORDER BY seq DESC LIMIT ?)", (lines,)
    ).fetchone()
    return log.head()[0] if first is None else int(first) - 1


def _print_new(log: EventLog, after: int, *, as_json: bool, header: bool) -> int:
    """Print the events after ``after``; returns the last seq printed (or ``after``)."""
    new = list(log.rows(after))
    if as_json:
        write_jsonl(new, sys.stdout)
        sys.stdout.flush()
    elif new or header:
        stdout_console().print(events_table(list(map(event_dict, new)), header=header))
    return int(new[-1][0]) if new else after


# -- show ----------------------------------------------------------------------


@events.command()
@db_option
@click.argument("job_id")
@json_option
def show(db: Path, job_id: str, as_json: bool) -> None:
    """Show a job's history, event by event (its webhook deliveries' too), and its
    current state."""
    with opened_log(db) as log, log.snapshot():
        job = JobsProjection().load(log.conn, [job_id]).get(job_id)
        history = [
            event_dict(row)
            for row in log.conn.execute(
                f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE stream IN (?, ?) "
                "ORDER BY seq",
                (job_id, delivery_stream(job_id)),
            )
        ]
    if job is None and not history:
        raise click.ClickException(f"no such job: {job_id}")
    if as_json:
        click.echo(json.dumps({"job": job and job_dict(job), "events": history}))
        return
    console = stdout_console()
    if job is None:
        console.print(f"job {job_id} is no longer in the jobs projection", markup=False)
    else:
        console.print(job_grid(job))
    console.print()
    console.print(events_table(history, stream=False))


# -- export --------------------------------------------------------------------


@events.command()
@db_option
@click.option(
    "--format",
    "format_",
    type=click.Choice(["jsonl"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one JSON object per event and line.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write to this file instead of stdout.",
)
def export(db: Path, format_: str, output: str) -> None:
    """Export every event in seq order, streamed row by row."""
    with opened_log(db) as log, click.open_file(output, "w", encoding="utf-8") as out:
        write_jsonl(log.rows(), out)


# -- verify --------------------------------------------------------------------


@events.command()
@db_option
@json_option
def verify(db: Path, as_json: bool) -> None:
    """Check the hash chain, the events, and the projections against a replay."""
    with opened_log(db) as log:
        with progress_bar("verifying") as progress:
            problems = audit.verify(log, progress)
        (count,) = log.conn.execute("SELECT count(*) FROM events").fetchone()
        (jobs,) = log.conn.execute("SELECT count(*) FROM jobs").fetchone()
    first_bad = min((p.seq for p in problems if p.seq is not None), default=None)
    if as_json:
        found = [{"seq": p.seq, "message": p.message} for p in problems]
        report = {"ok": not problems, "events": count, "first_bad_seq": first_bad}
        click.echo(json.dumps({**report, "problems": found}))
    elif problems:
        _print_problems(problems, count, first_bad)
    else:
        click.echo(f"sound: {count} events, hash chain verified, {jobs} jobs match replay")
    if problems:
        raise SystemExit(1)


def _print_problems(problems: list[audit.Problem], count: int, first_bad: int | None) -> None:
    click.echo(f"NOT sound: {len(problems)} problems in {count} events")
    if first_bad is None:
        click.echo("first bad seq: none, the events are sound; a stored projection is not")
    else:
        message = next(p.message for p in problems if p.seq == first_bad)
        click.echo(f"first bad seq: {first_bad}: {message}")
    click.echo("problems:")
    for problem in problems:
        click.echo(f"  {'-' if problem.seq is None else problem.seq}: {problem.message}")


# -- replay --------------------------------------------------------------------


def _parse_until(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> int | datetime | None:
    """An event seq, or an ISO-8601 moment (a naive one is taken as UTC)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdecimal():
        return int(text)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an event seq (a whole number) nor an ISO-8601 "
            "timestamp such as 2026-11-28T15:00:00Z or 2026-11-28T16:00:00+01:00"
        ) from None


@events.command()
@db_option
@click.option(
    "--until",
    metavar="SEQ|TIMESTAMP",
    callback=_parse_until,
    help="Show the jobs as they stood after this seq, or at this moment, instead of "
    "rebuilding (in memory: the stored projection is left alone).",
)
@json_option
def replay(db: Path, until: int | datetime | None, as_json: bool) -> None:
    """Rebuild the projections, or show the jobs as they stood --until a point."""
    if until is None:
        _rebuild(db, as_json=as_json)
    else:
        _replay_until(db, until, as_json=as_json)


def _rebuild(db: Path, *, as_json: bool) -> None:
    with opened_log(db, read_only=False) as log:
        started = time.perf_counter()
        count = 0
        for projection in log.projections:
            with progress_bar(f"rebuilding {projection.name}") as progress:
                count = rebuild(log, projection, progress)
        seconds = time.perf_counter() - started
        names = ", ".join(projection.name for projection in log.projections)
        unreadable = [job.unreadable for job in with_unreadable_events(log)]
    rate = count / seconds if seconds > 0 else 0.0
    if as_json:
        report = {"events": count, "seconds": seconds, "events_per_second": rate}
        click.echo(json.dumps({**report, "unreadable_events": unreadable}))
        return
    click.echo(f"rebuilt {names} from {count} events in {seconds:.3f} s ({rate:,.0f} events/s)")
    if unreadable:
        seqs = ", ".join(str(seq) for seq in unreadable)
        click.echo(
            f"{len(unreadable)} jobs quarantined: events {seqs} cannot be read back "
            "(`foreman events verify` says why); unfinished ones are failed when Foreman starts"
        )


def _replay_until(db: Path, until: int | datetime, *, as_json: bool) -> None:
    with opened_log(db) as log:
        seq = until if isinstance(until, int) else seq_at(log, until)
        seq = min(seq, log.head()[0])
        with progress_bar("replaying") as progress:
            states = state_at(log, JobsProjection(), seq, progress)
    jobs = sorted(states.values(), key=lambda job: (job.created_at, job.id))
    if as_json:
        click.echo(json.dumps({"until_seq": seq, "jobs": [job_dict(job) for job in jobs]}))
        return
    console = stdout_console()
    console.print(jobs_table(jobs))
    console.print(f"{len(jobs)} jobs as they stood after seq {seq}", markup=False)
