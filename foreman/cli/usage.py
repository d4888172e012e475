"""``foreman usage``: each tenant's jobs, tokens and GPU time since a moment."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
from rich import box
from rich.table import Table

from foreman.api.usage import DEFAULT_SPAN, UsageReport, report
from foreman.cli.events import db_option, opened_log
from foreman.cli.remote import NoAnswer, call, json_option, url_option
from foreman.cli.render import stdout_console
from foreman.events.usage import usage_since


@click.command()
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]),
    help="From this moment (UTC unless it says otherwise); default: a day ago.",
)
@click.option("--tenant", help="Only this tenant's.")
@url_option
@db_option
@json_option
def usage(since: datetime | None, tenant: str | None, url: str, db: Path, as_json: bool) -> None:
    """Each tenant's jobs, prompt and completion tokens and GPU seconds, from the log:
    through the running Foreman, else from the log at --db."""
    start = (since or datetime.now(UTC) - DEFAULT_SPAN).replace(
        tzinfo=(since and since.tzinfo) or UTC
    )
    query = {"since": start.isoformat()} | ({"tenant": tenant} if tenant else {})
    try:
        answer: dict[str, Any] = call("GET", url, f"/usage?{urlencode(query)}", ok=200)
    except NoAnswer:
        click.echo(f"no Foreman answers at {url}: reading the event log {db}", err=True)
        with opened_log(db) as log:
            answer = report(start, usage_since(log, start, tenant), tenant).model_dump()
    if as_json:
        click.echo(json.dumps(answer))
        return
    shown = UsageReport.model_validate(answer)
    table = Table(
        "tenant",
        "jobs",
        "succeeded",
        "failed",
        "cancelled",
        "prompt tokens",
        "completion tokens",
        "GPU seconds",
    )
    table.box = box.SIMPLE_HEAD
    table.show_edge = False
    for row in shown.tenants:
        table.add_row(
            row.tenant or "(no key)",
            *(
                f"{value:,}"
                for value in (
                    row.jobs,
                    row.succeeded,
                    row.failed,
                    row.cancelled,
                    row.prompt_tokens,
                    row.completion_tokens,
                )
            ),
            f"{row.gpu_seconds:,.1f}",
        )
    console = stdout_console()
    console.print(f"since {shown.since}", markup=False)
    console.print(table)
