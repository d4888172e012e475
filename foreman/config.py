"""Foreman's settings: flags, ``FOREMAN_*`` environment variables, a TOML file and
defaults (ADR-0022).

:func:`load_settings` reads the environment and the TOML file (``--config``, else
``FOREMAN_CONFIG``), lets explicit overrides (the command line's flags) win, and
validates everything at once: an invalid configuration is one :class:`ConfigError`
naming each bad flag, variable or file entry and its value, one per line.
Precedence: flag > environment > file > default.

Foreman drives a fleet of Ollama hosts (issue 12): :attr:`Settings.backends`, one
:class:`BackendSpec` each, from ``--backend`` (repeatable), ``FOREMAN_BACKEND`` (a
comma-separated list), the file's ``[[backends]]`` tables, else ``OLLAMA_HOST``.
An entry is ``URL``, ``NAME=URL``, ``sim``, ``NAME=sim`` or ``sim:N``.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from foreman.events.log import Durability
from foreman.scheduling import model_name
from foreman.units import parse_duration, parse_size
from foreman.webhooks.signing import secret_key

ENV_PREFIX = "FOREMAN_"
OLLAMA_HOST = "OLLAMA_HOST"
OLLAMA_PORT = 11434
DEFAULT_BACKEND = f"http://127.0.0.1:{OLLAMA_PORT}"
SIM = "sim"
"""The backend that runs Foreman's built-in simulator in-process."""
SIM_MAX = 64
"""The most simulators one ``sim:N`` starts: more is surely a mistake (a host that is
named sim is written ``http://sim:PORT``)."""
BACKEND_NAME = re.compile(r"[A-Za-z0-9._:-]+")
"""What a backend's name is made of; it is unique in the fleet."""
BACKEND_KEYS = ("name", "url", "slots", "models")
"""The keys of a ``[[backends]]`` table in the TOML file."""
MAX_PORT = 65535
SECRET_SETTINGS = frozenset({"webhook_secret", "metrics_token"})
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


def _default_backends() -> str:
    return os.environ.get(OLLAMA_HOST) or DEFAULT_BACKEND


def _valid_address(value: object) -> str:
    return str(parse_address(str(value)))


def _valid_backend(value: object) -> object:
    return normalise_backend(value) if isinstance(value, str) else value


def _valid_secret(value: object) -> object:
    if isinstance(value, str):
        secret_key(value)
    return value


def _comma_separated(value: object) -> list[str] | None:
    """A variable's ``a, b`` (or a file's list) as its items, None if not text."""
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        value = ",".join(value)
    if not isinstance(value, str):
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _origin_list(value: object) -> object:
    """``https://a.example, http://*.b.example`` (or a list, from the file): no spaces,
    ``None`` when empty."""
    origins = _comma_separated(value)
    if origins is None:
        return value
    for origin in origins:
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^\s/]+", origin, re.IGNORECASE):
            raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    return ",".join(origins) or None


def _host_list(value: object) -> object:
    """``a.example, *.b.example, 127.0.0.1, [::1]`` (or a list, from the file): lower
    case, no spaces or brackets, ``None`` when empty."""
    items = _comma_separated(value)
    if items is None:
        return value
    hosts = sorted({host.lower().removeprefix("[").removesuffix("]") for host in items})
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


# -- the fleet -------------------------------------------------------------------------


def _model_set(names: object) -> frozenset[str] | None:
    """Model names by their canonical name (``llama3`` is ``llama3:latest``); None
    unless ``names`` is a collection of names, none of them blank."""
    if not isinstance(names, Iterable) or isinstance(names, str | bytes | Mapping):
        return None
    listed = list(names)
    if not all(isinstance(name, str) and name.strip() for name in listed):
        return None
    return frozenset(model_name(name.strip()) for name in listed)


def _canonical_models(value: object) -> object:
    if value is None:
        return None
    models = _model_set(value)
    if models is None:
        raise ValueError(f"not a collection of model names: {value!r}")
    return models


class BackendSpec(BaseModel):
    """One Ollama host of the fleet; immutable. Constructing one validates it: the URL
    is normalised (:func:`normalise_backend`), model names made canonical."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=rf"^{BACKEND_NAME.pattern}$")
    """Unique in the fleet: letters, digits, ``.``, ``_``, ``-`` and ``:``."""
    url: Annotated[str, BeforeValidator(_valid_backend)]
    """The normalised URL, or :data:`SIM`: a simulator Foreman starts itself."""
    slots: int = Field(1, ge=1)
    """Jobs run at once on this host: set it to the host's ``OLLAMA_NUM_PARALLEL``."""
    models: Annotated[frozenset[str] | None, BeforeValidator(_canonical_models)] = Field(
        None, min_length=1
    )
    """The only models this host runs, by canonical name (``llama3:latest``); None:
    whatever it has installed."""

    @field_serializer("models", when_used="json")
    def _sorted(self, models: frozenset[str] | None) -> list[str] | None:
        return None if models is None else sorted(models)


class _FleetError(ValueError):
    """Invalid backends: each problem is ``(which, message)``, ``which`` naming a
    ``[[backends]]`` table (`` #2``) or empty."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"backends{which}: {message}" for which, message in problems))


class _Host(NamedTuple):
    """A backend before it is named; ``kind`` says how a missing name is made."""

    name: str | None
    url: str
    slots: int = 1
    models: frozenset[str] | None = None
    kind: Literal["url", "sim", "sim:N"] = "url"


_ENTRY = "an http(s) URL such as http://127.0.0.1:11434 or host:port, NAME=URL, sim or sim:N"
_NAME_RULE = "letters, digits, '.', '_', '-' or ':'"
_SIM_FLEET = re.compile(r"sim:(\d+)")


def _normalised(url: object) -> str | None:
    """``sim`` or the URL normalised, or None when it is not one."""
    if not (isinstance(url, str) and url.strip()):
        return None
    try:
        return normalise_backend(url)
    except ValueError:
        return None


def _entry(text: str) -> tuple[list[_Host], str | None]:
    """One entry of ``--backend`` or ``FOREMAN_BACKEND``: its hosts, or a problem."""
    name: str | None
    name, separator, target = text.partition("=")
    if separator and "/" not in name:  # a URL's own "=" would come after its "://"
        name, target = name.strip(), target.strip()
        if not BACKEND_NAME.fullmatch(name):
            return [], f"a backend's name must be {_NAME_RULE}, got {name!r} in {text!r}"
    else:
        name, target = None, text
    if fleet := _SIM_FLEET.fullmatch(target):
        if name is not None:
            return [], f"sim:N takes no NAME= (its hosts are sim-1 to sim-N), got {text!r}"
        if not 1 <= int(fleet[1]) <= SIM_MAX:
            return [], f"sim:N must have N from 1 to {SIM_MAX}, got {text!r}"
        return [_Host(None, SIM, kind="sim:N")] * int(fleet[1]), None
    url = _normalised(target)
    if url is None:
        return [], f"must be {_ENTRY}, got {text!r}"
    return [_Host(name, url, kind="sim" if url == SIM else "url")], None


def _table(table: Mapping[str, object]) -> tuple[_Host | None, list[str]]:
    """One ``[[backends]]`` table: its host, or its problems."""
    problems = [
        f"unknown key {key!r}{_did_you_mean(key, BACKEND_KEYS)}"
        for key in table
        if key not in BACKEND_KEYS
    ]
    name, url, slots, models = (table.get(key) for key in BACKEND_KEYS)
    if not (name is None or (isinstance(name, str) and BACKEND_NAME.fullmatch(name))):
        problems.append(f"name must be {_NAME_RULE}, got {name!r}")
    target = _normalised(url)
    if target is None:
        got = "nothing" if url is None else repr(url)
        problems.append(
            f"url must be an http(s) URL such as {DEFAULT_BACKEND}, host:port or sim, got {got}"
        )
    slots = 1 if slots is None else slots
    if not (type(slots) is int and slots >= 1):  # a TOML true is no number
        problems.append(f"slots must be a whole number >= 1, got {slots!r}")
    allowed = _model_set(models) if isinstance(models, list) else None
    if models is not None and not allowed:
        problems.append(
            f"models must be a list of model names such as ['llama3', 'qwen2:7b'], got {models!r}"
        )
    if problems or target is None or not isinstance(slots, int):
        return None, problems
    kind: Literal["url", "sim"] = "sim" if target == SIM else "url"
    return _Host(name if isinstance(name, str) else None, target, slots, allowed, kind), []


def _url_name(url: str) -> str:
    """A URL backend's default name: its ``host:port`` (an IPv6 host without brackets)."""
    split = urllib.parse.urlsplit(url)
    return f"{split.hostname}:{split.port}"


def _named(hosts: list[_Host]) -> tuple[list[BackendSpec], list[str]]:
    """Name the hosts that have no name: a URL by its host:port; simulators ``sim``
    when a lone ``sim`` is the only one, else ``sim-1``, ``sim-2``, ... in order."""
    sims = [host for host in hosts if host.name is None and host.kind != "url"]
    numbers = iter(range(1, len(sims) + 1))
    lone = len(sims) == 1 and sims[0].kind == "sim"
    named: list[_Host] = []
    problems: list[str] = []
    for host in hosts:
        name = host.name
        if name is None and host.kind == "url":
            name = _url_name(host.url)
            if not BACKEND_NAME.fullmatch(name):
                problems.append(
                    f"{host.url} has no host:port made of {_NAME_RULE} to be named by: "
                    f"give it a name, NAME={host.url}"
                )
        elif name is None:
            name = SIM if lone else f"{SIM}-{next(numbers)}"
        named.append(host._replace(name=name))
    for name, count in Counter(host.name for host in named).items():
        if count > 1:
            problems.append(
                f"{count} backends are named {name!r}: give each its own name (NAME=URL)"
            )
    if problems:
        return [], problems
    return [
        BackendSpec(name=host.name, url=host.url, slots=host.slots, models=host.models)
        for host in named
    ], []


def _fleet(value: object) -> object:
    """The backends from flags or variables (strings, each a comma-separated list of
    entries), from the file (``[[backends]]`` tables, or strings), or given as
    :class:`BackendSpec` s; in the order given."""
    items = [value] if isinstance(value, str | Mapping) else value
    if not isinstance(items, list | tuple):
        return value  # not a fleet: pydantic says so
    hosts: list[_Host] = []
    problems: list[tuple[str, str]] = []
    for number, item in enumerate(items, 1):
        if isinstance(item, BackendSpec):
            hosts.append(_Host(item.name, item.url, item.slots, item.models))
        elif isinstance(item, str):
            for text in filter(None, (text.strip() for text in item.split(","))):
                entry, problem = _entry(text)
                hosts.extend(entry)
                problems.extend([("", problem)] if problem else [])
        elif isinstance(item, Mapping):
            host, table_problems = _table(item)
            hosts.extend([host] if host else [])
            problems.extend((f" #{number}", problem) for problem in table_problems)
        else:
            problems.append(
                (f" #{number}", f"must be a [[backends]] table or {_ENTRY}, got {item!r}")
            )
    if problems:
        raise _FleetError(problems)
    if not hosts:
        raise _FleetError([("", "must list at least one backend, got none")])
    specs, naming = _named(hosts)
    if naming:
        raise _FleetError([("", problem) for problem in naming])
    return tuple(specs)


class _Environment(EnvSettingsSource):
    """The environment, but ``backends`` comes from ``FOREMAN_BACKEND`` (as
    ``--backend`` is named: one entry or several), as text."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name == "backends":
            variable = env_name(field_name)
            variable = variable if self.case_sensitive else variable.lower()
            return self.env_vars.get(variable), field_name, False
        return super().get_field_value(field, field_name)


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
    backends: Annotated[tuple[BackendSpec, ...], NoDecode, BeforeValidator(_fleet)] = Field(
        default_factory=_default_backends, validate_default=True, description=_ENTRY
    )
    """The Ollama hosts jobs run on, in the order given; never empty. From ``--backend``
    / ``FOREMAN_BACKEND``, the file's ``[[backends]]``, else ``$OLLAMA_HOST``."""
    db: Path = Field(Path("foreman.db"), description="a file path")
    """The event log."""
    config: Path | None = Field(None, description="a TOML file path")
    """The TOML file :func:`load_settings` read settings from; None: none."""
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
    probe_interval: Duration = Field(
        30.0, gt=0, description="a duration > 0 (seconds, or such as 30s, 5m)"
    )
    """How often every backend host is asked what it has loaded and installed (hosts
    are also used directly); a host found not answering is marked down."""
    public_url: Annotated[str | None, BeforeValidator(_base_url)] = Field(
        None, description="an http(s) URL such as https://foreman.example:11435"
    )
    """The URL others reach Foreman at: webhook payloads link artifacts under it.
    Default: the address Foreman listens on."""
    metrics_token: SecretStr | None = Field(
        None, min_length=16, description="text of at least 16 characters"
    )
    """A bearer token that reads ``GET /metrics`` and nothing else, for a Prometheus
    scraper (ADR-0044); unset: ``/metrics`` takes an admin key, as other admin routes."""
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
    origins: Annotated[str | None, BeforeValidator(_origin_list)] = Field(
        None, description="origins separated by commas, such as https://app.example; * matches"
    )
    """Browser origins allowed besides the loopback ones and the app schemes
    (``foreman.api.browsers``); a request from any other origin is refused."""
    auth: Annotated[Literal["keys", "off"], BeforeValidator(_lower)] = Field(
        "keys", description="one of keys, off"
    )
    """``keys``: once a key is issued (``foreman keys create``), every request but
    ``/healthz`` needs one; with none issued Foreman starts only on loopback. ``off``:
    no key is ever asked for, wherever Foreman listens (say so only when something in
    front of it authenticates)."""
    webhook_allowed_hosts: Annotated[str | None, BeforeValidator(_host_list)] = Field(
        None,
        description="host names or addresses separated by commas; *.example.com for subdomains",
    )
    """Hosts webhooks may reach even at a loopback, private or other internal address (a
    receiver on this machine, in development); any other host only at public ones
    (ADR-0040)."""
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environment(settings_cls), dotenv_settings, file_secret_settings

    @property
    def address(self) -> Address:
        return parse_address(self.listen)

    @property
    def on_loopback(self) -> bool:
        """Whether Foreman listens on a loopback address only."""
        host = self.address.host
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def artifact_root(self) -> Path:
        return self.artifacts_dir or self.db.with_suffix(".artifacts")

    @property
    def allowed_hosts(self) -> frozenset[str]:
        hosts = self.webhook_allowed_hosts
        return frozenset() if hosts is None else frozenset(hosts.split(","))

    @property
    def webhook_key(self) -> bytes | None:
        secret = self.webhook_secret
        return None if secret is None else secret_key(secret.get_secret_value())


_SINGULAR = {"backends": "backend"}
"""Settings whose flag and variable name one item: ``--backend``, ``FOREMAN_BACKEND``."""


def env_name(setting: str) -> str:
    return f"{ENV_PREFIX}{_SINGULAR.get(setting, setting).upper()}"


def flag_name(setting: str) -> str:
    return f"--{_SINGULAR.get(setting, setting).replace('_', '-')}"


def _did_you_mean(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Given(NamedTuple):
    """What a configuration is made of, before it is validated."""

    flags: dict[str, Any]
    config: Path | None
    file: dict[str, Any]
    """The file's settings (without unknown keys)."""
    problems: list[str]
    """The file's problems: unreadable, not TOML, unknown keys."""


def _read_config(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The settings in a TOML file, and its problems, each naming the file."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        return {}, [f"{path}: cannot read it: {error.strerror or error}"]
    except ValueError as error:  # TOMLDecodeError, or not UTF-8
        return {}, [f"{path}: not valid TOML: {' '.join(str(error).split())}"]
    known = Settings.model_fields.keys() - {"config"}
    problems = [
        f"{path}: config: a file cannot name another one; use --config or FOREMAN_CONFIG"
        if key == "config"
        else f"{path}: unknown setting {key!r}{_did_you_mean(key, known)}"
        for key in document
        if key not in known
    ]
    return {key: value for key, value in document.items() if key in known}, problems


def _gather(overrides: dict[str, Any]) -> _Given:
    """The flags (overrides that are not None; ``backend`` is ``backends``) and the
    file they or ``FOREMAN_CONFIG`` name."""
    overrides = dict(overrides)
    backend = overrides.pop("backend", None)
    if backend is not None:
        if overrides.get("backends") is not None:
            raise TypeError("give backend or backends, not both")
        overrides["backends"] = backend
    unknown = sorted(overrides.keys() - Settings.model_fields.keys())
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(unknown)}")
    flags = {setting: value for setting, value in overrides.items() if value is not None}
    config = flags.get("config") or os.environ.get(env_name("config"))
    path = None if config is None else Path(config)
    file, problems = _read_config(path) if path is not None else ({}, [])
    return _Given(flags, path, file, problems)


def _source(setting: str, given: _Given) -> str:
    variable = env_name(setting)
    if setting in given.flags:
        return "flag"
    if os.environ.get(variable):
        return f"env {variable}"
    if setting in given.file:
        return f"file {given.config}"
    if setting == "backends" and os.environ.get(OLLAMA_HOST):
        return f"env {OLLAMA_HOST}"
    return "default"


def setting_sources(**overrides: Any) -> dict[str, str]:
    """Where each setting's value comes from: ``flag``, ``env NAME``, ``file PATH`` or
    ``default`` (overrides that are None do not count, as in :func:`load_settings`)."""
    given = _gather(overrides)
    return {setting: _source(setting, given) for setting in Settings.model_fields}


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment, the TOML file and defaults, with
    ``overrides`` (settings by field name, from flags) winning; overrides that are
    None are ignored. ``backend`` is ``backends``: a string (one entry, or several
    separated by commas) or a list of them; ``config`` is the TOML file, else
    ``$FOREMAN_CONFIG``.

    Raises :class:`ConfigError` listing every problem, one per line, each naming the
    flag, variable or file entry it came from, what is valid, and the value given.
    """
    given = _gather(overrides)
    from_file = {
        setting: value
        for setting, value in given.file.items()
        if setting not in given.flags and not os.environ.get(env_name(setting))
    }
    try:
        settings = Settings(**from_file, **given.flags)
    except ValidationError as error:
        raise ConfigError(given.problems + _problems(error, given)) from None
    if given.problems:
        raise ConfigError(given.problems)
    return settings


def _problems(error: ValidationError, given: _Given) -> list[str]:
    problems: list[str] = []
    invalid: dict[str, Any] = {}
    for problem in error.errors():
        invalid.setdefault(str(problem["loc"][0]), problem)
    for setting, problem in invalid.items():
        source = _source(setting, given)
        if source == "flag":
            where, value = flag_name(setting), given.flags[setting]
        elif source.startswith("file "):
            where, value = f"{given.config}: {setting}", given.file[setting]
        else:
            where = source.removeprefix("env ") if source != "default" else env_name(setting)
            value = os.environ.get(where)
        fleet = problem.get("ctx", {}).get("error")
        if isinstance(fleet, _FleetError):
            problems.extend(f"{where}{which}: {message}" for which, message in fleet.problems)
            continue
        expected = Settings.model_fields[setting].description
        shown = "a value not shown here" if setting in SECRET_SETTINGS else repr(value)
        problems.append(f"{where}: must be {expected}, got {shown}")
    return problems
