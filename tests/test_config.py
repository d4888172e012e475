"""Settings from defaults, ``FOREMAN_*`` variables and flags; ``foreman config``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from foreman.config import (
    Address,
    ConfigError,
    Settings,
    load_settings,
    setting_sources,
)
from foreman.events.log import Durability
from foreman.units import format_duration, format_size, parse_duration, parse_size

MiB = 1024**2
DEFAULTS = {
    "listen": "127.0.0.1:11435",
    "backend": "http://127.0.0.1:11434",
    "db": "foreman.db",
    "max_attempts": 3,
    "job_timeout": None,
    "max_body": 32 * MiB,
    "max_wait": 60.0,
    "max_queue": 512,
    "shutdown_grace": 5.0,
    "artifacts_dir": None,
    "artifact_inline_max": 256 * 1024,
    "job_ttl": 7 * 24 * 3600.0,
    "janitor_interval": 60.0,
    "public_url": None,
    "webhook_secret": None,
    "webhook_timeout": 10.0,
    "webhook_backoff": 2.0,
    "webhook_max_retries": 5,
    "webhook_concurrency": 16,
    "webhook_allowed_hosts": None,
    "durability": "full",
    "log_format": "text",
    "header_timeout": 5.0,
    "body_timeout": 60.0,
    "max_passthrough": 64,
    "passthrough_timeout": 300.0,
    "max_listings": 4,
    "stream_stall": 30.0,
}


def clean_environ() -> dict[str, str]:
    """The environment without any Foreman setting or the developer's OLLAMA_HOST."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("FOREMAN_") and key != "OLLAMA_HOST"
    }


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in os.environ.keys() - clean_environ().keys():
        monkeypatch.delenv(key)


# -- defaults and the environment ----------------------------------------------------


def test_defaults() -> None:
    settings = load_settings()
    assert settings.model_dump(mode="json") == DEFAULTS
    assert settings.address == Address("127.0.0.1", 11435)
    assert settings.durability is Durability.FULL
    assert setting_sources() == dict.fromkeys(DEFAULTS, "default")


@pytest.mark.parametrize(
    ("variable", "value", "setting", "expected"),
    [
        ("FOREMAN_LISTEN", "0.0.0.0:8080", "listen", "0.0.0.0:8080"),
        ("FOREMAN_BACKEND", "http://gpu-box:11434", "backend", "http://gpu-box:11434"),
        ("FOREMAN_BACKEND", "sim", "backend", "sim"),
        ("FOREMAN_DB", "/var/lib/foreman/queue.db", "db", Path("/var/lib/foreman/queue.db")),
        ("FOREMAN_MAX_ATTEMPTS", "5", "max_attempts", 5),
        ("FOREMAN_JOB_TIMEOUT", "10m", "job_timeout", 600.0),
        ("FOREMAN_JOB_TIMEOUT", "90", "job_timeout", 90.0),
        ("FOREMAN_JOB_TIMEOUT", "none", "job_timeout", None),
        ("FOREMAN_MAX_BODY", "1048576", "max_body", MiB),
        ("FOREMAN_MAX_BODY", "8MiB", "max_body", 8 * MiB),
        ("FOREMAN_MAX_WAIT", "2m30s", "max_wait", 150.0),
        ("FOREMAN_MAX_QUEUE", "64", "max_queue", 64),
        ("FOREMAN_SHUTDOWN_GRACE", "0", "shutdown_grace", 0.0),
        ("FOREMAN_ARTIFACTS_DIR", "/srv/outputs", "artifacts_dir", Path("/srv/outputs")),
        ("FOREMAN_ARTIFACT_INLINE_MAX", "1MiB", "artifact_inline_max", MiB),
        ("FOREMAN_JOB_TTL", "168h", "job_ttl", 7 * 86400.0),
        ("FOREMAN_JOB_TTL", "36h", "job_ttl", 36 * 3600.0),
        ("FOREMAN_JANITOR_INTERVAL", "5m", "janitor_interval", 300.0),
        (
            "FOREMAN_PUBLIC_URL",
            "https://gpu.example:8443/",
            "public_url",
            "https://gpu.example:8443",
        ),
        ("FOREMAN_WEBHOOK_TIMEOUT", "500ms", "webhook_timeout", 0.5),
        ("FOREMAN_WEBHOOK_BACKOFF", "1m", "webhook_backoff", 60.0),
        ("FOREMAN_WEBHOOK_MAX_RETRIES", "0", "webhook_max_retries", 0),
        ("FOREMAN_WEBHOOK_CONCURRENCY", "4", "webhook_concurrency", 4),
        (
            "FOREMAN_WEBHOOK_ALLOWED_HOSTS",
            " Hooks.Example, *.corp.example ,",
            "allowed_hosts",
            frozenset({"hooks.example", "*.corp.example"}),
        ),
        ("FOREMAN_WEBHOOK_SECRET", "whsec_c2VjcmV0IGJ5dGVz", "webhook_key", b"secret bytes"),
        ("FOREMAN_WEBHOOK_SECRET", "plain words", "webhook_key", b"plain words"),
        ("FOREMAN_DURABILITY", "normal", "durability", Durability.NORMAL),
        ("FOREMAN_DURABILITY", "OFF", "durability", Durability.OFF),
        ("FOREMAN_LOG_FORMAT", "json", "log_format", "json"),
        ("FOREMAN_MAX_PASSTHROUGH", "8", "max_passthrough", 8),
        ("FOREMAN_PASSTHROUGH_TIMEOUT", "2m", "passthrough_timeout", 120.0),
        ("FOREMAN_MAX_LISTINGS", "1", "max_listings", 1),
        ("FOREMAN_STREAM_STALL", "500ms", "stream_stall", 0.5),
    ],
)
def test_each_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, setting: str, expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), setting) == expected
    assert setting_sources()[variable.removeprefix("FOREMAN_").lower()] == f"env {variable}"


def test_an_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREMAN_MAX_ATTEMPTS", "")
    assert load_settings().max_attempts == 3
    assert setting_sources()["max_attempts"] == "default"


def test_listen_takes_ipv6_in_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREMAN_LISTEN", "[0:0::1]:11435")
    settings = load_settings()
    assert settings.listen == "[::1]:11435"
    assert settings.address == Address("::1", 11435)


@pytest.mark.parametrize(
    ("ollama_host", "backend"),
    [
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        (":8080", "http://127.0.0.1:8080"),
        ("http://gpu-box", "http://gpu-box:80"),
        ("https://gpu-box", "https://gpu-box:443"),
        ("https://gpu-box:8443/ollama/", "https://gpu-box:8443/ollama"),
        ("[::1]", "http://[::1]:11434"),
        ("http://127.0.0.1:11434/", "http://127.0.0.1:11434"),
    ],
)
def test_backend_falls_back_to_ollama_host_normalised_as_ollama_does(
    monkeypatch: pytest.MonkeyPatch, ollama_host: str, backend: str
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama_host)
    assert load_settings().backend == backend
    assert setting_sources()["backend"] == "env OLLAMA_HOST"


def test_foreman_backend_beats_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    monkeypatch.setenv("FOREMAN_BACKEND", "gpu-box")
    assert load_settings().backend == "http://gpu-box:11434"
    assert setting_sources()["backend"] == "env FOREMAN_BACKEND"


# -- overrides -------------------------------------------------------------------------


def test_overrides_beat_the_environment_and_none_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOREMAN_LISTEN", "0.0.0.0:1")
    monkeypatch.setenv("FOREMAN_DB", "env.db")
    settings = load_settings(listen="127.0.0.1:2", db=None, backend="sim")
    assert (settings.listen, settings.db, settings.backend) == (
        "127.0.0.1:2",
        Path("env.db"),
        "sim",
    )
    sources = setting_sources(listen="127.0.0.1:2", db=None, backend="sim")
    assert (sources["listen"], sources["db"], sources["backend"]) == (
        "flag",
        "env FOREMAN_DB",
        "flag",
    )


def test_an_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unknown settings: colour"):
        load_settings(colour="blue")


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.max_attempts = 9  # type: ignore[misc]


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FOREMAN_LISTEN", "127.0.0.1:70000"),
        ("FOREMAN_LISTEN", "127.0.0.1"),
        ("FOREMAN_LISTEN", ":11435"),
        ("FOREMAN_LISTEN", "::1:11435"),
        ("FOREMAN_BACKEND", "ftp://x"),
        ("FOREMAN_BACKEND", "gpu-box:99999"),
        ("FOREMAN_MAX_ATTEMPTS", "0"),
        ("FOREMAN_MAX_ATTEMPTS", "three"),
        ("FOREMAN_JOB_TIMEOUT", "-5s"),
        ("FOREMAN_JOB_TIMEOUT", "0"),
        ("FOREMAN_MAX_WAIT", "soon"),
        ("FOREMAN_MAX_WAIT", "5 minutes"),
        ("FOREMAN_SHUTDOWN_GRACE", "-1"),
        ("FOREMAN_MAX_BODY", "lots"),
        ("FOREMAN_MAX_BODY", "0"),
        ("FOREMAN_MAX_QUEUE", "-3"),
        ("FOREMAN_DURABILITY", "sometimes"),
        ("FOREMAN_LOG_FORMAT", "xml"),
        ("FOREMAN_PUBLIC_URL", "gpu.example"),
        ("FOREMAN_WEBHOOK_TIMEOUT", "0"),
        ("FOREMAN_WEBHOOK_CONCURRENCY", "0"),
        ("FOREMAN_WEBHOOK_ALLOWED_HOSTS", "http://hooks.example/"),
    ],
)
def test_an_invalid_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    (problem,) = raised.value.problems
    assert problem.startswith(f"{variable}: must be ")
    assert problem.endswith(f", got {value!r}")


def test_an_invalid_secret_is_reported_without_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOREMAN_WEBHOOK_SECRET", "whsec_not*base64")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "not*base64" not in str(raised.value)
    assert str(raised.value).startswith("FOREMAN_WEBHOOK_SECRET: must be whsec_ and base64")


def test_every_problem_is_reported_one_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREMAN_MAX_ATTEMPTS", "three")
    monkeypatch.setenv("OLLAMA_HOST", "ftp://x")
    with pytest.raises(ConfigError) as raised:
        load_settings(listen="nowhere")
    assert str(raised.value).splitlines() == [
        "--listen: must be host:port with a port from 0 to 65535, such as 127.0.0.1:11435, "
        "0.0.0.0:11435 or [::1]:11435, got 'nowhere'",
        "OLLAMA_HOST: must be 'sim' or an http(s) URL such as http://127.0.0.1:11434 or "
        "host:port, got 'ftp://x'",
        "FOREMAN_MAX_ATTEMPTS: must be a whole number >= 1, got 'three'",
    ]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(max_queue=0)


# -- durations and sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (12, 12.0),
        (2.5, 2.5),
        ("2.5", 2.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("1m0.5s", 60.5),
        ("-5s", -5.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "1d", "5 m", "m", "inf", "nan"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.0, 0.25, 45.0, 60.0, 600.0, 5400.0, 90061.5])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 45, 60, 5400, 0.5)] == [
        "0s",
        "45s",
        "1m",
        "1h30m",
        "0.5s",
    ]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("32MiB", 32 * MiB),
        ("512 KiB", 512 * 1024),
        ("1.5kib", 1536),
        ("2GB", 2_000_000_000),
        ("100b", 100),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "32M", "MiB", "-1", "1e6"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_format_size() -> None:
    sizes = [32 * MiB, 1536, 1000, 2 * 1024**3]
    assert [format_size(n) for n in sizes] == ["32MiB", "1536", "1000", "2GiB"]


# -- foreman config ----------------------------------------------------------------------


def foreman_config(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foreman.cli", "config", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**clean_environ(), **env},
        check=False,
    )


@pytest.mark.slow  # a `foreman config` process
def test_config_prints_a_table_of_settings_and_sources() -> None:
    done = foreman_config("--listen", "[::1]:8000", FOREMAN_MAX_QUEUE="64", OLLAMA_HOST="gpu-box")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:]}
    assert rows["FOREMAN_LISTEN"] == ["[::1]:8000", "flag"]
    assert rows["FOREMAN_BACKEND"] == ["http://gpu-box:11434", "env", "OLLAMA_HOST"]
    assert rows["FOREMAN_MAX_QUEUE"] == ["64", "env", "FOREMAN_MAX_QUEUE"]
    assert rows["FOREMAN_MAX_BODY"] == ["32MiB", "default"]
    assert rows["FOREMAN_JOB_TIMEOUT"] == ["none", "default"]
    assert rows["FOREMAN_MAX_WAIT"] == ["1m", "default"]
    assert len(rows) == len(DEFAULTS)


@pytest.mark.slow  # a `foreman config` process
def test_config_never_prints_the_webhook_secret() -> None:
    for args in ((), ("--json",)):
        done = foreman_config(*args, FOREMAN_WEBHOOK_SECRET="whsec_c2VjcmV0IGJ5dGVz")
        assert done.returncode == 0, done.stderr
        assert "c2VjcmV0IGJ5dGVz" not in done.stdout
        assert "**********" in done.stdout


@pytest.mark.slow  # a `foreman config` process
def test_config_json() -> None:
    done = foreman_config("--json", "--db", "flag.db", FOREMAN_JOB_TIMEOUT="1h")
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["settings"] == {**DEFAULTS, "db": "flag.db", "job_timeout": 3600.0}
    assert output["sources"] == {
        **dict.fromkeys(DEFAULTS, "default"),
        "db": "flag",
        "job_timeout": "env FOREMAN_JOB_TIMEOUT",
    }


@pytest.mark.slow  # a `foreman config` process
def test_config_exits_2_naming_every_bad_value() -> None:
    done = foreman_config("--backend", "ftp://x", FOREMAN_MAX_ATTEMPTS="three")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "Error: invalid configuration:",
        "  --backend: must be 'sim' or an http(s) URL such as http://127.0.0.1:11434 or "
        "host:port, got 'ftp://x'",
        "  FOREMAN_MAX_ATTEMPTS: must be a whole number >= 1, got 'three'",
    ]
