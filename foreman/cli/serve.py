"""``foreman serve``: run Foreman until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
import signal

import click
import trio

from foreman import logs
from foreman.cli.config import InvalidConfiguration, cli_settings, settings_options
from foreman.config import Settings
from foreman.supervisor import Unprotected, protected_keyring, run_foreman

logger = logging.getLogger(__name__)


@click.command()
@settings_options
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Serve Ollama's API with a durable queue in front of the backend."""
    settings = cli_settings(ctx)
    logs.configure(settings.log_format)
    try:
        protected_keyring(settings)  # refused before anything starts
    except Unprotected as refused:
        raise InvalidConfiguration(refused) from None
    trio.run(_serve, settings)


async def _serve(settings: Settings) -> None:
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for number in signals:
                    logger.info("%s received", signal.Signals(number).name)
                    stop.set()
                    return

            nursery.start_soon(stop_on_signal)
            await run_foreman(settings, stop)
            nursery.cancel_scope.cancel()
