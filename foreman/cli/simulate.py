"""``foreman simulate``: run the Ollama simulator on its own, until Ctrl-C."""

from __future__ import annotations

import signal
from functools import partial

import click
import trio

from foreman.simulator import SimModel, SimulatorConfig, parse_models, serve_simulator

DEMO_LOAD_LATENCY = 2.0
DEMO_TOKEN_LATENCY = 0.05


def _models(ctx: click.Context, param: click.Parameter, value: str) -> tuple[SimModel, ...]:
    try:
        return parse_models(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:11434",
    show_default=True,
    envvar="FOREMAN_SIM_LISTEN",
    show_envvar=True,
    help="HOST:PORT to listen on (port 0: any free port).",
)
@click.option(
    "--models",
    default="llama3=4.7GB,qwen2=4.4GB,nomic-embed-text=274MB",
    show_default=True,
    callback=_models,
    help='Comma-separated NAME[=SIZE]; a name containing "embed" is an embedding model.',
)
@click.option(
    "--load-latency",
    type=click.FloatRange(min=0),
    default=DEMO_LOAD_LATENCY,
    show_default=True,
    help="Seconds to load a model (a swap, or a change of load options).",
)
@click.option(
    "--token-latency",
    type=click.FloatRange(min=0),
    default=DEMO_TOKEN_LATENCY,
    show_default=True,
    help="Seconds per generated token.",
)
@click.option(
    "--tokens",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Tokens per response.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Generations of the resident model at once (OLLAMA_NUM_PARALLEL).",
)
def simulate(
    listen: str,
    models: tuple[SimModel, ...],
    load_latency: float,
    token_latency: float,
    tokens: int,
    parallel: int,
) -> None:
    """Serve Ollama's API from a simulated GPU (one model resident at a time).

    Faults are armed at run time: POST /_sim/faults, e.g.
    '{"kind": "status", "status": 500, "times": 3}'; POST /_sim/outage
    '{"seconds": 5}' refuses connections for 5 s; GET /_sim/stats counts
    model loads and generations. See docs/design/adr/0023-ollama-simulator.md.
    """
    config = SimulatorConfig(
        listen=listen,
        models=models,
        load_latency=load_latency,
        token_latency=token_latency,
        tokens=tokens,
        parallel=parallel,
    )
    try:
        trio.run(_run, config)
    except BaseExceptionGroup as group:  # Trio's nurseries wrap what their tasks raise
        refused = group.subgroup(OSError)
        if refused is None:
            raise
        raise click.ClickException(f"cannot listen on {listen}: {_first(refused)}") from None


def _first(group: BaseExceptionGroup[OSError]) -> OSError:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


async def _run(config: SimulatorConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def until_signal() -> None:
            async for _ in signals:
                return

        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                partial(serve_simulator, config, shutdown_trigger=until_signal)
            )
            names = ", ".join(model.name for model in config.models)
            click.echo(f"Ollama simulator on {url} serving {names} (Ctrl-C stops)")
