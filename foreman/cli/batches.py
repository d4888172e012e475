"""``foreman batches …``: follow a running Foreman's Batch API batches, cancel one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import click
from rich import box
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from foreman.cli.remote import call, json_option, url_option
from foreman.cli.render import stdout_console
from foreman.events.batches import ENDED

BAR_WIDTH = 20
WATCH_INTERVAL = 1.0
"""Seconds between two looks at a watched batch."""
TIMESTAMPS = (
    ("created", "created_at"),
    ("in progress", "in_progress_at"),
    ("finalizing", "finalizing_at"),
    ("cancelling", "cancelling_at"),
    ("completed", "completed_at"),
    ("failed", "failed_at"),
    ("expired", "expired_at"),
    ("cancelled", "cancelled_at"),
    ("expires", "expires_at"),
)
"""A batch's unix timestamps, in the order they are set, with their labels."""


@click.group()
def batches() -> None:
    """The Batch API's batches: follow them, cancel one."""


@batches.command(name="list")
@click.option(
    "--limit",
    type=click.IntRange(1, 100),
    default=20,
    show_default=True,
    help="Batches to show, newest first.",
)
@click.option("--after", metavar="ID", help="Start after this batch (the next page).")
@url_option
@json_option
def list_(limit: int, after: str | None, url: str, as_json: bool) -> None:
    """Each batch: its status, endpoint, progress, request counts and times."""
    query = {"limit": limit} | ({"after": after} if after is not None else {})
    page = call("GET", url, f"/v1/batches?{urlencode(query)}", ok=200)
    if as_json:
        click.echo(json.dumps(page))
        return
    stdout_console().print(batches_table(page["data"]))
    if page["has_more"]:
        click.echo(f"more: foreman batches list --after {page['last_id']}")


@batches.command()
@click.argument("batch_id", metavar="ID")
@click.option("--watch", is_flag=True, help="Refresh every second until the batch has ended.")
@url_option
@json_option
def show(batch_id: str, watch: bool, url: str, as_json: bool) -> None:
    """The batch ID: its status, files, times, metadata, errors and progress."""
    found = _get(url, batch_id)
    if watch:
        console = stdout_console()
        if as_json or not console.is_terminal:
            found = _follow(url, batch_id, found, lambda _: None)
        else:
            first = batch_details(found)
            with Live(first, console=console, auto_refresh=False, transient=True) as live:

                def update(batch: dict[str, Any]) -> None:
                    live.update(batch_details(batch), refresh=True)

                found = _follow(url, batch_id, found, update)
    _print(found, as_json)


@batches.command()
@click.argument("batch_id", metavar="ID")
@url_option
@json_option
def cancel(batch_id: str, url: str, as_json: bool) -> None:
    """Cancel the batch ID: lines not yet run are dropped, results so far are kept."""
    _print(call("POST", url, f"{_path(batch_id)}/cancel", ok=200), as_json)


def _path(batch_id: str) -> str:
    return f"/v1/batches/{quote(batch_id, safe='')}"


def _get(url: str, batch_id: str) -> dict[str, Any]:
    found: dict[str, Any] = call("GET", url, _path(batch_id), ok=200)
    return found


def _follow(
    url: str, batch_id: str, found: dict[str, Any], update: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Look at the batch every second, ``update`` with each look, until it has ended."""
    while found["status"] not in ENDED:
        time.sleep(WATCH_INTERVAL)
        found = _get(url, batch_id)
        update(found)
    return found


def _print(found: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(found))
    else:
        stdout_console().print(batch_details(found))


def progress(counts: dict[str, int]) -> Text:
    """``███████░░░  70%``: the share of the lines that have ended (completed or failed).
    Some progress always shows, and only a batch whose every line ended looks done."""
    total = counts["total"]
    done = counts["completed"] + counts["failed"]
    filled, percent = (BAR_WIDTH * done // total, 100 * done // total) if total else (0, 0)
    if 0 < done < total:
        filled = min(max(filled, 1), BAR_WIDTH - 1)
    bar = Text()
    bar.append("█" * filled, style="green")
    bar.append("░" * (BAR_WIDTH - filled), style="bright_black")
    bar.append(f" {percent:>3}%")
    return bar


def _counts(counts: dict[str, int]) -> str:
    return f"{counts['completed']}/{counts['failed']}/{counts['total']}"


def _time(stamp: int) -> str:
    """A unix timestamp in local time, to the second."""
    return datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def batches_table(found: list[dict[str, Any]]) -> Table:
    table = Table("batch", "status", "endpoint", "progress", "completed/failed/total")
    table.add_column("created")
    table.add_column("expires")
    table.box = box.SIMPLE_HEAD
    table.show_edge = False
    for batch in found:
        counts = batch["request_counts"]
        table.add_row(
            batch["id"],
            batch["status"],
            batch["endpoint"],
            progress(counts),
            _counts(counts),
            _time(batch["created_at"]),
            _time(batch["expires_at"]),
        )
    return table


def batch_details(batch: dict[str, Any]) -> RenderableType:
    """The batch, one field a line (unset ones left out), then its errors if any."""
    grid = Table.grid(padding=(0, 2))
    counts = batch["request_counts"]
    fields: list[tuple[str, RenderableType | None]] = [
        ("batch", batch["id"]),
        ("status", batch["status"]),
        ("endpoint", batch["endpoint"]),
        ("window", batch["completion_window"]),
        ("progress", progress(counts)),
        (
            "requests",
            f"{counts['completed']} completed, {counts['failed']} failed, {counts['total']} in all",
        ),
        ("input file", batch["input_file_id"]),
        ("output file", batch["output_file_id"]),
        ("error file", batch["error_file_id"]),
    ]
    fields += [(label, _time(batch[key])) for label, key in TIMESTAMPS if batch[key] is not None]
    fields += [(f"metadata {key}", value) for key, value in (batch["metadata"] or {}).items()]
    for name, value in fields:
        if value is not None:
            grid.add_row(Text(name), Text(value) if isinstance(value, str) else value)
    errors = (batch["errors"] or {}).get("data") or []
    if not errors:
        return grid
    lines = [Text(f"error: {_error(error)}", style="red") for error in errors]
    return Group(grid, *lines)


def _error(error: dict[str, Any]) -> str:
    where = f" (line {error['line']})" if error.get("line") is not None else ""
    code = f"{error['code']}: " if error.get("code") else ""
    return f"{code}{error.get('message')}{where}"
