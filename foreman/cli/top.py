"""``foreman top``: the dashboard's picture in a terminal, for an operator on SSH.

It polls ``GET /summary`` (with the key in FOREMAN_API_KEY, as every remote command)
and redraws: the queue, each host with what it runs, and the last hour as sparklines.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich import box
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from foreman.api.dashboard import Summary
from foreman.cli.remote import call, url_option
from foreman.cli.render import stdout_console

BARS = " ▁▂▃▄▅▆▇█"


@click.command()
@url_option
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True)
@click.option("--once", is_flag=True, help="Print the picture once and exit (for scripts).")
def top(url: str, interval: float, once: bool) -> None:
    """The queue by model, priority and tenant, each backend and its running jobs, and
    the last hour's throughput, model swaps and GPU busy time, redrawn every --interval."""
    console = stdout_console()
    if once:
        console.print(picture(_summary(url)))
        return
    with Live(picture(_summary(url)), console=console, screen=True, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(picture(_summary(url)), refresh=True)


def _summary(url: str) -> Summary:
    answer: dict[str, Any] = call("GET", url, "/summary", ok=200)
    return Summary.model_validate(answer)


def picture(summary: Summary) -> Group:
    queue = Table("model", "priority", "tenant", "queued", "running", box=box.SIMPLE_HEAD)
    for row in summary.queue:
        queue.add_row(
            row.model, str(row.priority), row.tenant or "", str(row.queued), str(row.running)
        )
    hosts = Table("backend", "state", "loaded", "running", "jobs", box=box.SIMPLE_HEAD)
    for host in summary.backends:
        jobs = ", ".join(f"{job.id} {job.model} {job.elapsed or 0:.0f}s" for job in host.jobs)
        hosts.add_row(host.name, host.state, host.loaded or "", str(host.running), jobs)
    hour = summary.hour
    return Group(
        Text(f"Foreman at {summary.at}", style="bold"),
        queue,
        hosts,
        Text("last hour, per minute (oldest first)", style="bold"),
        Text(f"finished {sparkline(hour.finished)} {sum(hour.finished)}"),
        Text(f"swaps    {sparkline(hour.swaps)} {sum(hour.swaps)}"),
        Text(f"busy     {sparkline(hour.busy)} {sum(hour.busy):.0f} s"),
    )


def sparkline(values: list[int] | list[float]) -> str:
    top_value = max(values, default=0) or 1
    return "".join(BARS[round(value / top_value * (len(BARS) - 1))] for value in values)
