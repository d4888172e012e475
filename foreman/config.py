"""Foreman's settings: flags, ``FOREMAN_*`` environment variables and defaults (ADR-0022).

:func:`load_settings` reads the environment, lets explicit overrides (the command
line's flags) win, and validates everything at once: an invalid configuration is one
:class:`ConfigError` naming each bad variable or flag and its value, one per line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from foreman.events.log import Durability
from foreman.units import parse_duration, parse_size
from foreman.webhooks.signing import secret_key

ENV_PREFIX = "FOREMAN_"
OLLAMA_HOST = "OLLAMA_HOST"
OLLAMA_PORT = 11434
DEFAULT_BACKEND = f"http://127.0.0.1:{OLLAMA_PORT}"
SIM = "sim"
"""The backend that runs Foreman's built-in simulator in-process."""
MAX_PORT = 65535
SECRET_SETTINGS = frozenset({"webhook_secret"})
"""Settings whose values are never printed, not even when they are invalid."""


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class Address(NamedTuple):
    """A host and port to listen on; an IPv6 host is kept without its brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(value: str) -> Address:
    """``host:port``, an IPv6 host in brackets (``[::1]:11435``); port 0 lets the OS
    choose a free one."""
    host, _, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = str(ipaddress.IPv6Address(host[1:-1]))
    elif ":" in host:
        raise ValueError(f"an IPv6 host goes in brackets: {value!r}")
    if not host:
        raise ValueError(f"not host:port: {value!r}")
    if not (port.isascii() and port.isdigit()) or int(port) > MAX_PORT:
        raise ValueError(f"not a port from 0 to {MAX_PORT}: {port!r}")
    return Address(host, int(port))


def normalise_backend(value: str) -> str:
    """``sim``, or the backend's URL normalised as Ollama's own clients read
    ``OLLAMA_HOST``: ``http://`` and port 11434 unless given (80/443 with an explicit
    scheme), host 127.0.0.1 unless given, no trailing slash."""
    text = value.strip()
    if text == SIM:
        return SIM
    scheme, separator, rest = text.partition("://")
    port = OLLAMA_PORT
    if not separator:
        scheme, rest = "http", text
    elif scheme in ("http", "https"):
        port = 80 if scheme == "http" else 443
    else:
        raise ValueError(f"not an http(s) URL: {value!r}")
    split = urllib.parse.urlsplit(f"{scheme}://{rest}")
    if split.query or split.fragment:
        raise ValueError(f"a backend URL has no query or fragment: {value!r}")
    host = split.hostname or "127.0.0.1"
    port = split.port or port  # raises ValueError when out of range
    if ":" in host:
        host = f"[{host}]"
    path = split.path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


def _lower(value: object) -> object:
    return value.lower().strip() if isinstance(value, str) else value


def _none_or_duration(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return value if value is None else parse_duration(value)


def _default_backend() -> str:
    return os.environ.get(OLLAMA_HOST) or DEFAULT_BACKEND


def _valid_address(value: object) -> str:
    return str(parse_address(str(value)))


def _valid_backend(value: object) -> object:
    return normalise_backend(value) if isinstance(value, str) else value


def _valid_secret(value: object) -> object:
    if isinstance(value, str):
        secret_key(value)
    return value


def _host_list(value: object) -> object:
    """``a.example, *.b.example``: lower case, no spaces, ``None`` when empty."""
    if not isinstance(value, str):
        return value
    hosts = sorted({host.strip().lower() for host in value.split(",") if host.strip()})
    for host in hosts:
        if not re.fullmatch(r"(\*\.)?[a-z0-9_.:-]+", host):
            raise ValueError(f"not a host name: {host!r}")
    return ",".join(hosts) or None


def _base_url(value: object) -> object:
    if not isinstance(value, str):
        return value
    split = urllib.parse.urlsplit(value.strip())
    if split.scheme not in ("http", "https") or not split.hostname or split.query:
        raise ValueError(f"not an http(s) base URL: {value!r}")
    return value.strip().rstrip("/")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    """Foreman's effective configuration; immutable. Each field's ``description`` says
    what a valid value is (the error messages quote it)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="forbid"
    )

    listen: Annotated[str, BeforeValidator(_valid_address)] = Field(
        "127.0.0.1:11435",
        description="host:port with a port from 0 to 65535, "
        "such as 127.0.0.1:11435, 0.0.0.0:11435 or [::1]:11435",
    )
    """Where the HTTP server listens; :attr:`address` is its parsed form."""
    backend: Annotated[str, BeforeValidator(_valid_backend)] = Field(
        default_factory=_default_backend,
        validate_default=True,
        description=f"{SIM!r} or an http(s) URL such as {DEFAULT_BACKEND} or host:port",
    )
    """The Ollama server jobs run on (normalised URL), or ``sim``; defaults to
    ``$OLLAMA_HOST``."""
    db: Path = Field(Path("foreman.db"), description="a file path")
    """The event log."""
    max_attempts: int = Field(3, ge=1, description="a whole number >= 1")
    """Attempts a job gets before it fails for good."""
    job_timeout: Annotated[float | None, BeforeValidator(_none_or_duration)] = Field(
        None,
        gt=0,
        description="a duration > 0 (seconds, or such as 90s, 10m, 1h30m) or 'none'",
    )
    """The longest one attempt may run against the backend; None: no limit."""
    max_body: Annotated[int, BeforeValidator(parse_size)] = Field(
        32 * 1024**2,
        ge=1,
        description="a size >= 1 byte: a whole number of bytes, or such as 32MiB or 512KiB",
    )
    """Largest request body accepted; a larger one is refused with 413."""
    max_wait: Duration = Field(
        60.0, gt=0, description="a duration > 0 (seconds, or such as 30s, 2m, 1h30m)"
    )
    """The starvation bound: a job queued this long runs next even if that swaps the
    model."""
    max_queue: int = Field(512, ge=1, description="a whole number >= 1")
    """Queued jobs beyond this are refused with 503 and ``Retry-After``."""
    shutdown_grace: Duration = Field(
        5.0, ge=0, description="a duration >= 0 (seconds, or such as 5s, 1m)"
    )
    """How long the running job may finish after SIGINT/SIGTERM before it is stopped."""
    artifacts_dir: Path | None = Field(
        None, description="a directory path (default: beside the database, NAME.artifacts)"
    )
    """Where jobs' outputs are stored."""
    artifact_inline_max: Annotated[int, BeforeValidator(parse_size)] = Field(
        256 * 1024,
        ge=0,
        description="a size >= 0: a whole number of bytes, or such as 256KiB or 1MiB",
    )
    """An output up to this size is shown inline in ``GET /jobs/{id}``; a larger one
    only by its URL."""
    job_ttl: Duration = Field(
        7 * 24 * 3600.0, gt=0, description="a duration > 0 (seconds, or such as 168h, 12h30m)"
    )
    """How long a finished job is kept before the janitor prunes it."""
    janitor_interval: Duration = Field(
        60.0, gt=0, description="a duration > 0 (seconds, or such as 30s, 5m)"
    )
    """How often the janitor looks for work."""
    public_url: Annotated[str | None, BeforeValidator(_base_url)] = Field(
        None, description="an http(s) URL such as https://foreman.example:11435"
    )
    """The URL others reach Foreman at: webhook payloads link artifacts under it.
    Default: the address Foreman listens on."""
    webhook_secret: Annotated[SecretStr | None, BeforeValidator(_valid_secret)] = Field(
        None, description="whsec_ and base64 (Standard Webhooks), or any other non-empty text"
    )
    """Signs every webhook (``webhook-signature``, ``X-Foreman-Signature``); unset:
    webhooks go unsigned."""
    webhook_timeout: Duration = Field(
        10.0, gt=0, description="a duration > 0 (seconds, or such as 10s, 500ms)"
    )
    """How long one delivery attempt may take, all of it."""
    webhook_backoff: Duration = Field(
        2.0, gt=0, description="a duration > 0 (seconds, or such as 2s, 500ms)"
    )
    """The wait before a delivery's first retry; it doubles for each one after."""
    webhook_max_retries: int = Field(5, ge=0, description="a whole number >= 0")
    """Retries after a delivery's first try; then it is abandoned."""
    webhook_concurrency: int = Field(16, ge=1, description="a whole number >= 1")
    """Deliveries in flight at once, each to a different job's receiver."""
    webhook_allowed_hosts: Annotated[str | None, BeforeValidator(_host_list)] = Field(
        None, description="host names separated by commas; *.example.com allows subdomains"
    )
    """When set, webhooks go only to these hosts (checked on submission and on every
    attempt); unset: anywhere."""
    durability: Annotated[Durability, BeforeValidator(_lower)] = Field(
        Durability.FULL, description=f"one of {', '.join(Durability)}"
    )
    """The event log's fsync policy (ADR-0015)."""
    log_format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = Field(
        "text", description="one of text, json"
    )
    """Logs on stderr: readable lines, or one JSON object a line."""
    # Floods and stalls: no caller holds up the others.
    max_passthrough: int = Field(64, ge=1, description="a whole number >= 1")
    """Pass-through calls to the backend (``/api/tags``, ``/api/embed``, ...) in flight at
    once; one more is refused at once with 503 and ``Retry-After``."""
    passthrough_timeout: Duration = Field(
        300.0, gt=0, description="a duration > 0 (seconds, or such as 30s, 5m)"
    )
    """The longest one pass-through call may take; then 504."""
    max_listings: int = Field(4, ge=1, description="a whole number >= 1")
    """``GET /jobs`` listings in flight at once; one more is refused at once with 503
    and ``Retry-After``."""
    stream_stall: Duration = Field(
        30.0, gt=0, description="a duration > 0 (seconds, or such as 30s, 500ms)"
    )
    """How long a streaming caller may take no line of its answer before its job is
    cancelled (``client_stalled``); its connection is cut after twice as long."""
    # Slow senders: how long a client may take to send a request.
    header_timeout: Duration = Field(
        5.0, gt=0, description="a duration > 0 (seconds, or such as 5s, 500ms)"
    )
    """How long a connection may take to send a whole request head, from when it opens
    or its previous response ends; then it is closed. Also how long an idle
    connection is kept alive."""
    body_timeout: Duration = Field(
        60.0, gt=0, description="a duration > 0 (seconds, or such as 60s, 2m)"
    )
    """How long a request's whole body may take to arrive once its head has; then 408,
    and the connection is closed."""

    @property
    def address(self) -> Address:
        return parse_address(self.listen)

    @property
    def artifact_root(self) -> Path:
        return self.artifacts_dir or self.db.with_suffix(".artifacts")

    @property
    def allowed_hosts(self) -> frozenset[str] | None:
        hosts = self.webhook_allowed_hosts
        return None if hosts is None else frozenset(hosts.split(","))

    @property
    def webhook_key(self) -> bytes | None:
        secret = self.webhook_secret
        return None if secret is None else secret_key(secret.get_secret_value())


def env_name(setting: str) -> str:
    return f"{ENV_PREFIX}{setting.upper()}"


def flag_name(setting: str) -> str:
    return f"--{setting.replace('_', '-')}"


def _env_names(setting: str) -> list[str]:
    """The variables a setting is read from, first match wins."""
    return [env_name(setting), *([OLLAMA_HOST] if setting == "backend" else [])]


def setting_sources(**overrides: Any) -> dict[str, str]:
    """Where each setting's value comes from: ``flag``, ``env NAME`` or ``default``
    (overrides that are None do not count, as in :func:`load_settings`)."""
    sources: dict[str, str] = {}
    for setting in Settings.model_fields:
        given = [name for name in _env_names(setting) if os.environ.get(name)]
        if overrides.get(setting) is not None:
            sources[setting] = "flag"
        else:
            sources[setting] = f"env {given[0]}" if given else "default"
    return sources


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment and defaults, with ``overrides`` (settings by
    field name, from flags) winning; overrides that are None are ignored.

    Raises :class:`ConfigError` listing every invalid setting, one per line, each naming
    the flag or variable it came from, what is valid, and the value given.
    """
    unknown = sorted(overrides.keys() - Settings.model_fields.keys())
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(unknown)}")
    given = {setting: value for setting, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        invalid = dict.fromkeys(str(problem["loc"][0]) for problem in error.errors())
    sources = setting_sources(**given)
    problems: list[str] = []
    for setting in invalid:
        source = sources[setting]
        if source == "flag":
            where, value = flag_name(setting), given[setting]
        else:
            where = source.removeprefix("env ") if source != "default" else env_name(setting)
            value = os.environ.get(where)
        expected = Settings.model_fields[setting].description
        shown = "a value not shown here" if setting in SECRET_SETTINGS else repr(value)
        problems.append(f"{where}: must be {expected}, got {shown}")
    raise ConfigError(problems)
