"""``foreman config``: the effective settings, where each comes from, and the fleet of
backends (ADR-0022).

:func:`settings_options` adds ``--listen``, ``--backend`` (repeatable), ``--db`` and
``--config`` to a command and :func:`cli_settings` turns them into
:class:`~foreman.config.Settings`, so that ``foreman serve`` takes the same flags and
``foreman config`` can check its command line.
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
    BackendSpec,
    ConfigError,
    Settings,
    env_name,
    flag_name,
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
        flag_name(setting),
        setting,
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
        "backends",
        "An Ollama host: URL or host:port, NAME=URL, 'sim' (the built-in simulator) or "
        "'sim:N' (N of them). Repeat it, or separate entries with commas, for a fleet.",
        multiple=True,
        show_default=f"the config file's [[backends]], else ${OLLAMA_HOST}, else {DEFAULT_BACKEND}",
    ),
    _option("db", "The event log.", type=click.Path(dir_okay=False, path_type=Path)),
    _option(
        "config",
        "A TOML file of settings by name, and the fleet as [[backends]] tables.",
        type=click.Path(path_type=Path),
        show_default=False,
    ),
)


def settings_options(command: Command) -> Command:
    """Add the settings that are flags (``--listen``, ``--backend``, ``--db``,
    ``--config``) to a command; read them with :func:`cli_settings`."""
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
    if setting == "backends" and isinstance(value, tuple):
        return ", ".join(spec.name for spec in value if isinstance(spec, BackendSpec))
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
    """Print the effective settings and where each comes from (flag, env, file or
    default), then the backends."""
    settings = cli_settings(ctx)
    sources = setting_sources(**flag_overrides(ctx))
    if as_json:
        click.echo(json.dumps({"settings": settings.model_dump(mode="json"), "sources": sources}))
        return
    rows = Table("setting", "value", "source", box=box.SIMPLE_HEAD, show_edge=False)
    for setting, value in settings:
        cells = env_name(setting), _display(setting, value), sources[setting]
        rows.add_row(*map(Text, cells))
    fleet = Table("backend", "url", "slots", "models", box=box.SIMPLE_HEAD, show_edge=False)
    fleet.columns[2].justify = "right"
    for spec in settings.backends:
        models = "any" if spec.models is None else ", ".join(sorted(spec.models))
        fleet.add_row(*map(Text, (spec.name, spec.url, str(spec.slots), models)))
    console = stdout_console()
    console.print(rows)
    console.print()
    console.print(fleet)
