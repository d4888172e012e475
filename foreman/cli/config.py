"""``foreman config``: the effective settings and where each comes from (ADR-0022).

:func:`settings_options` adds ``--listen``, ``--backend`` and ``--db`` to a command
and :func:`cli_settings` turns them into :class:`~foreman.config.Settings`, so that
``foreman serve`` takes the same flags and ``foreman config`` can check its command line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource
from rich import box
from rich.table import Table
from rich.text import Text

from foreman.cli.render import stdout_console
from foreman.config import (
    DEFAULT_BACKEND,
    OLLAMA_HOST,
    ConfigError,
    Settings,
    env_name,
    load_settings,
    setting_sources,
)
from foreman.units import format_duration, format_size

Command = TypeVar("Command", bound=Callable[..., Any])

_FLAGS = "foreman.config.flags"
"""``ctx.meta`` key: the settings given as flags on the command line."""


class InvalidConfiguration(click.ClickException):
    """Printed as ``Error: invalid configuration`` and the problems; exit status 2."""

    exit_code = 2

    def __init__(self, error: ConfigError) -> None:
        problems = "".join(f"\n  {problem}" for problem in error.problems)
        super().__init__(f"invalid configuration:{problems}")


def _remember_flag(ctx: click.Context, param: click.Parameter, value: object) -> None:
    """Keep a value only when it was typed on the command line: one from the
    environment is left to :func:`load_settings`, so that its source shows as env."""
    if param.name and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        ctx.meta.setdefault(_FLAGS, {})[param.name] = value


def _option(setting: str, help_: str, **kwargs: Any) -> Callable[[Command], Command]:
    field = Settings.model_fields[setting]
    kwargs.setdefault("show_default", True)
    return click.option(
        f"--{setting}",
        envvar=env_name(setting),
        show_envvar=True,
        default=None if field.default_factory else field.default,
        expose_value=False,
        callback=_remember_flag,
        help=help_,
        **kwargs,
    )


_OPTIONS = (
    _option("listen", "Address the HTTP server listens on, host:port."),
    _option(
        "backend",
        "The Ollama server (URL or host:port), or 'sim' for the built-in simulator.",
        show_default=f"${OLLAMA_HOST}, else {DEFAULT_BACKEND}",
    ),
    _option("db", "The event log.", type=click.Path(dir_okay=False, path_type=Path)),
)


def settings_options(command: Command) -> Command:
    """Add the settings that are flags (``--listen``, ``--backend``, ``--db``) to a
    command; read them with :func:`cli_settings`."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def flag_overrides(ctx: click.Context) -> dict[str, Any]:
    """The settings given as flags on this command line."""
    return dict(ctx.meta.get(_FLAGS, {}))


def cli_settings(ctx: click.Context) -> Settings:
    """The effective settings for a command decorated with :func:`settings_options`;
    an invalid configuration exits with status 2 and the problems, no traceback."""
    try:
        return load_settings(**flag_overrides(ctx))
    except ConfigError as error:
        raise InvalidConfiguration(error) from None


def _display(setting: str, value: object) -> str:
    """A setting's value as it could be written back: sizes in binary units, durations
    (every float setting) like ``1h30m``."""
    if value is None:
        return "none"
    if setting == "max_body" and isinstance(value, int):
        return format_size(value)
    if isinstance(value, float):
        return format_duration(value)
    return str(value)


@click.command()
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Output JSON, for scripts.")
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings and where each comes from (flag, env or default)."""
    settings = cli_settings(ctx)
    sources = setting_sources(**flag_overrides(ctx))
    if as_json:
        click.echo(json.dumps({"settings": settings.model_dump(mode="json"), "sources": sources}))
        return
    rows = Table("setting", "value", "source", box=box.SIMPLE_HEAD, show_edge=False)
    for setting, value in settings:
        cells = env_name(setting), _display(setting, value), sources[setting]
        rows.add_row(*map(Text, cells))
    stdout_console().print(rows)
