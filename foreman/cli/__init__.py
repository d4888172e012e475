"""The ``foreman`` command line; each command group lives in a module of its own."""

from __future__ import annotations

import click

from foreman import __version__
from foreman.cli.backends import backends
from foreman.cli.backups import backup, restore
from foreman.cli.batches import batches
from foreman.cli.config import config
from foreman.cli.events import events
from foreman.cli.keys import keys
from foreman.cli.serve import serve
from foreman.cli.simulate import simulate
from foreman.cli.top import top
from foreman.cli.usage import usage
from foreman.cli.webhooks import webhooks

__all__ = ["main"]


@click.group(name="foreman")
@click.version_option(__version__, prog_name="foreman")
def main() -> None:
    """Foreman: a durable, event-sourced job queue in front of Ollama."""


main.add_command(serve)
main.add_command(events)
main.add_command(simulate)
main.add_command(config)
main.add_command(webhooks)
main.add_command(backends)
main.add_command(batches)
main.add_command(keys)
main.add_command(usage)
main.add_command(backup)
main.add_command(restore)
main.add_command(top)
