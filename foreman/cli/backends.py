"""``foreman backends …``: see a running Foreman's fleet, drain a host or resume it."""

from __future__ import annotations

import json
from typing import Any

import click
from rich import box
from rich.table import Table

from foreman.cli.remote import call, json_option, url_option
from foreman.cli.render import stdout_console


@click.group()
def backends() -> None:
    """The backend hosts: list them, drain one for maintenance, resume it."""


@backends.command(name="list")
@url_option
@json_option
def list_(url: str, as_json: bool) -> None:
    """Each host: its state, loaded model, jobs running, jobs done and loads."""
    _show(call("GET", url, "/backends", ok=200)["backends"], as_json)


def _change(action: str, help_: str) -> click.Command:
    """``foreman backends ACTION NAME``: ``POST /backends/NAME/ACTION``."""

    @click.command(name=action, help=help_)
    @click.argument("name")
    @url_option
    @json_option
    def command(name: str, url: str, as_json: bool) -> None:
        _show([call("POST", url, f"/backends/{name}/{action}", ok=200)], as_json)

    return command


backends.add_command(_change("drain", "Let NAME finish the jobs it runs and give it no more."))
backends.add_command(_change("resume", "Give NAME work again."))


def _show(hosts: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(hosts))
        return
    table = Table("backend", "url", "state", "loaded", "running", "done", "loads")
    table.box = box.SIMPLE_HEAD
    table.show_edge = False
    for host in hosts:
        loaded = ", ".join(host["loaded"]) or "-"
        cells = (host["name"], host["url"], host["state"], loaded)
        table.add_row(*cells, *(str(host[count]) for count in ("running", "done", "loads")))
    stdout_console().print(table)
