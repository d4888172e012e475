"""Settings from defaults, ``FOREMAN_*`` variables, a TOML file and flags; the fleet of
backends; ``foreman config``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
from click.testing import CliRunner

from foreman.cli import main
from foreman.config import (
    SIM,
    Address,
    BackendSpec,
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
    "backends": [
        {"name": "127.0.0.1:11434", "url": "http://127.0.0.1:11434", "slots": 1, "models": None}
    ],
    "db": "foreman.db",
    "config": None,
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
    "probe_interval": 30.0,
    "public_url": None,
    "metrics_token": None,
    "webhook_secret": None,
    "webhook_timeout": 10.0,
    "webhook_backoff": 2.0,
    "webhook_max_retries": 5,
    "webhook_concurrency": 16,
    "origins": None,
    "auth": "keys",
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


def urls(settings: Settings) -> list[str]:
    return [backend.url for backend in settings.backends]


def names(settings: Settings) -> list[str]:
    return [backend.name for backend in settings.backends]


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
        ("FOREMAN_PROBE_INTERVAL", "10s", "probe_interval", 10.0),
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
            "FOREMAN_ORIGINS",
            " https://app.example, http://*.corp.example:8080 ,",
            "origins",
            "https://app.example,http://*.corp.example:8080",
        ),
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


def test_webhook_allowed_hosts_take_names_wildcards_and_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = "Hooks.Example, *.corp.example, [::1],127.1"
    monkeypatch.setenv("FOREMAN_WEBHOOK_ALLOWED_HOSTS", hosts)
    assert load_settings().allowed_hosts == {"hooks.example", "*.corp.example", "::1", "127.1"}
    monkeypatch.delenv("FOREMAN_WEBHOOK_ALLOWED_HOSTS")
    assert load_settings().allowed_hosts == frozenset()  # no exceptions: public addresses only


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
    assert urls(load_settings()) == [backend]
    assert setting_sources()["backends"] == "env OLLAMA_HOST"


def test_foreman_backend_beats_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    monkeypatch.setenv("FOREMAN_BACKEND", "gpu-box")
    assert load_settings().backends == (
        BackendSpec(name="gpu-box:11434", url="http://gpu-box:11434"),
    )
    assert setting_sources()["backends"] == "env FOREMAN_BACKEND"


@pytest.mark.parametrize(
    ("value", "url"), [("http://gpu-box:11434", "http://gpu-box:11434"), ("sim", SIM)]
)
def test_foreman_backend_names_one_backend(
    monkeypatch: pytest.MonkeyPatch, value: str, url: str
) -> None:
    monkeypatch.setenv("FOREMAN_BACKEND", value)
    assert urls(load_settings()) == [url]


# -- overrides -------------------------------------------------------------------------


def test_overrides_beat_the_environment_and_none_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOREMAN_LISTEN", "0.0.0.0:1")
    monkeypatch.setenv("FOREMAN_DB", "env.db")
    settings = load_settings(listen="127.0.0.1:2", db=None, backend="sim")
    assert (settings.listen, settings.db, settings.backends) == (
        "127.0.0.1:2",
        Path("env.db"),
        (BackendSpec(name="sim", url=SIM),),
    )
    sources = setting_sources(listen="127.0.0.1:2", db=None, backend="sim")
    assert (sources["listen"], sources["db"], sources["backends"]) == (
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
        ("FOREMAN_ORIGINS", "app.example"),
        ("FOREMAN_ORIGINS", "https://app.example/path"),
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
        "OLLAMA_HOST: must be an http(s) URL such as http://127.0.0.1:11434 or host:port, "
        "NAME=URL, sim or sim:N, got 'ftp://x'",
        "FOREMAN_MAX_ATTEMPTS: must be a whole number >= 1, got 'three'",
    ]


def test_direct_construction_validates_too() -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings(max_queue=0)


# -- the fleet of backends ------------------------------------------------------------


def test_backend_may_be_given_several_times() -> None:
    settings = load_settings(backend=["sim", "gpu=http://10.0.0.5", "10.0.0.6:8080"])
    assert settings.backends == (
        BackendSpec(name="sim", url=SIM),
        BackendSpec(name="gpu", url="http://10.0.0.5:80"),
        BackendSpec(name="10.0.0.6:8080", url="http://10.0.0.6:8080"),
    )
    assert setting_sources(backend=["sim"])["backends"] == "flag"


def test_foreman_backend_is_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "ignored-box")
    monkeypatch.setenv("FOREMAN_BACKEND", " a=gpu-a , gpu-b:8080,,https://gpu-c/ollama/ ")
    settings = load_settings()
    assert names(settings) == ["a", "gpu-b:8080", "gpu-c:443"]
    assert urls(settings) == ["http://gpu-a:11434", "http://gpu-b:8080", "https://gpu-c:443/ollama"]
    assert {backend.slots for backend in settings.backends} == {1}
    assert {backend.models for backend in settings.backends} == {None}
    assert setting_sources()["backends"] == "env FOREMAN_BACKEND"
    assert Settings().backends == settings.backends  # pydantic-settings reads it too


@pytest.mark.parametrize(
    ("entry", "name", "url"),
    [
        ("127.0.0.1", "127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("Gpu-Box:8080", "gpu-box:8080", "http://gpu-box:8080"),
        ("[::1]", "::1:11434", "http://[::1]:11434"),
        ("gpu_1=gpu-box", "gpu_1", "http://gpu-box:11434"),
        ("rack.2:slot-3=https://gpu-box", "rack.2:slot-3", "https://gpu-box:443"),
        ("http://gpu-box/a=b", "gpu-box:80", "http://gpu-box:80/a=b"),
        ("local=sim", "local", SIM),
    ],
)
def test_name_is_given_or_the_urls_host_and_port(entry: str, name: str, url: str) -> None:
    assert load_settings(backend=entry).backends == (BackendSpec(name=name, url=url),)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("sim", ["sim"]),
        ("sim:1", ["sim-1"]),
        ("sim:3", ["sim-1", "sim-2", "sim-3"]),
        (["sim", "sim"], ["sim-1", "sim-2"]),
        ("sim,sim:2,sim", ["sim-1", "sim-2", "sim-3", "sim-4"]),
        ("local=sim,sim", ["local", "sim"]),
        ("sim:2,gpu-box", ["sim-1", "sim-2", "gpu-box:11434"]),
    ],
)
def test_simulated_hosts_are_numbered_unless_alone(
    backend: str | list[str], expected: list[str]
) -> None:
    settings = load_settings(backend=backend)
    assert names(settings) == expected
    assert urls(settings) == [
        "http://gpu-box:11434" if name == "gpu-box:11434" else SIM for name in expected
    ]


@pytest.mark.parametrize(
    ("entries", "name"),
    [
        ("a=gpu-a,a=gpu-b", "a"),
        ("gpu-box,http://gpu-box:11434/ollama", "gpu-box:11434"),
        ("sim-2=gpu-box,sim:2", "sim-2"),
        ("sim=gpu-box,sim", "sim"),
    ],
)
def test_a_duplicate_name_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, entries: str, name: str
) -> None:
    monkeypatch.setenv("FOREMAN_BACKEND", entries)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert raised.value.problems == [
        f"FOREMAN_BACKEND: 2 backends are named {name!r}: give each its own name (NAME=URL)"
    ]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            "my gpu=gpu-box",
            "a backend's name must be letters, digits, '.', '_', '-' or ':', "
            "got 'my gpu' in 'my gpu=gpu-box'",
        ),
        (
            "gpü=gpu-box",
            "a backend's name must be letters, digits, '.', '_', '-' or ':', "
            "got 'gpü' in 'gpü=gpu-box'",
        ),
        (
            "gpu=",
            "must be an http(s) URL such as http://127.0.0.1:11434 or host:port, NAME=URL, "
            "sim or sim:N, got 'gpu='",
        ),
        (
            "gpu=ftp://x",
            "must be an http(s) URL such as http://127.0.0.1:11434 or host:port, "
            "NAME=URL, sim or sim:N, got 'gpu=ftp://x'",
        ),
        ("sim:0", "sim:N must have N from 1 to 64, got 'sim:0'"),
        ("sim:11434", "sim:N must have N from 1 to 64, got 'sim:11434'"),
        ("gpus=sim:2", "sim:N takes no NAME= (its hosts are sim-1 to sim-N), got 'gpus=sim:2'"),
    ],
)
def test_an_invalid_entry_names_its_flag_and_the_entry(entry: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(backend=["sim", entry])
    assert raised.value.problems == [f"--backend: {problem}"]


def test_there_is_at_least_one_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOREMAN_BACKEND", " , ")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert raised.value.problems == ["FOREMAN_BACKEND: must list at least one backend, got none"]


def test_every_bad_entry_is_reported() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(backend=["ftp://x", "ok=sim", "sim:0"])
    assert [problem.split(", got ")[1] for problem in raised.value.problems] == [
        "'ftp://x'",
        "'sim:0'",
    ]


def test_backend_and_backends_together_are_a_programming_error() -> None:
    with pytest.raises(TypeError, match="backend or backends"):
        load_settings(backend="sim", backends="sim")


def test_a_backend_spec_validates_itself() -> None:
    spec = BackendSpec(name="gpu", url="gpu-box", slots=2, models=["llama3", " qwen2:7b"])
    assert spec.url == "http://gpu-box:11434"
    assert spec.models == frozenset({"llama3:latest", "qwen2:7b"})
    assert spec.model_dump(mode="json")["models"] == ["llama3:latest", "qwen2:7b"]
    assert hash(spec) == hash(
        BackendSpec(
            name="gpu", url="http://gpu-box:11434", slots=2, models=["qwen2:7b", "llama3:latest"]
        )
    )
    for invalid in ({"name": "my gpu"}, {"url": "ftp://x"}, {"slots": 0}, {"models": []}):
        with pytest.raises(pydantic.ValidationError):
            BackendSpec(**{"name": "gpu", "url": "gpu-box", **invalid})
    with pytest.raises(pydantic.ValidationError):
        spec.slots = 3  # type: ignore[misc]


# -- the TOML file ---------------------------------------------------------------------

FLEET = """
listen = "0.0.0.0:11435"
max_queue = 100
job_timeout = "10m"
max_body = "8MiB"
webhook_allowed_hosts = ["Hooks.example", "*.corp.example"]

[[backends]]
name = "gpu-a"
url = "10.0.0.11"
slots = 2
models = ["llama3", "qwen2:7b", "llama3:latest"]

[[backends]]
url = "http://10.0.0.12:11434"

[[backends]]
name = "local"
url = "sim"
slots = 4
"""


URL_RULE = "url must be an http(s) URL such as http://127.0.0.1:11434, host:port or sim"
MODELS_RULE = "models must be a list of model names such as ['llama3', 'qwen2:7b']"


def write(tmp_path: Path, text: str, name: str = "foreman.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_file_lists_backends_and_any_other_setting(tmp_path: Path) -> None:
    path = write(tmp_path, FLEET)
    settings = load_settings(config=path)
    assert settings.backends == (
        BackendSpec(
            name="gpu-a",
            url="http://10.0.0.11:11434",
            slots=2,
            models=frozenset({"llama3:latest", "qwen2:7b"}),
        ),
        BackendSpec(name="10.0.0.12:11434", url="http://10.0.0.12:11434"),
        BackendSpec(name="local", url=SIM, slots=4),
    )
    assert (settings.listen, settings.max_queue, settings.job_timeout, settings.max_body) == (
        "0.0.0.0:11435",
        100,
        600.0,
        8 * MiB,
    )
    assert settings.allowed_hosts == frozenset({"hooks.example", "*.corp.example"})
    assert settings.config == path
    sources = setting_sources(config=path)
    from_file = {
        "listen",
        "max_queue",
        "job_timeout",
        "max_body",
        "webhook_allowed_hosts",
        "backends",
    }
    assert sources == {
        **dict.fromkeys(DEFAULTS, "default"),
        **dict.fromkeys(from_file, f"file {path}"),
        "config": "flag",
    }


def test_foreman_config_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FOREMAN_CONFIG", str(write(tmp_path, 'backends = "sim:2"\n')))
    assert names(load_settings()) == ["sim-1", "sim-2"]
    assert setting_sources()["config"] == "env FOREMAN_CONFIG"
    assert setting_sources()["backends"] == f"file {tmp_path / 'foreman.toml'}"


def test_flag_beats_environment_beats_file_beats_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path, 'max_queue = 10\nmax_attempts = 7\nmax_wait = 5\nlisten = "0.0.0.0:1"\n')
    monkeypatch.setenv("FOREMAN_MAX_QUEUE", "20")
    monkeypatch.setenv("FOREMAN_MAX_WAIT", "9s")
    monkeypatch.setenv("FOREMAN_LISTEN", "0.0.0.0:2")
    settings = load_settings(config=path, listen="0.0.0.0:3", max_wait=None)
    assert (settings.listen, settings.max_queue, settings.max_wait) == ("0.0.0.0:3", 20, 9.0)
    assert (settings.max_attempts, settings.shutdown_grace) == (7, 5.0)
    sources = setting_sources(config=path, listen="0.0.0.0:3", max_wait=None)
    assert [sources[key] for key in ("listen", "max_queue", "max_attempts", "shutdown_grace")] == [
        "flag",
        "env FOREMAN_MAX_QUEUE",
        f"file {path}",
        "default",
    ]


def test_the_files_backends_beat_ollama_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "ollama-box")
    path = write(tmp_path, FLEET)
    assert names(load_settings(config=path)) == ["gpu-a", "10.0.0.12:11434", "local"]
    assert setting_sources(config=path)["backends"] == f"file {path}"


@pytest.mark.parametrize("where", ["flag", "env"])
def test_backend_flag_or_variable_replaces_the_files_backends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    path = write(tmp_path, FLEET)
    flags: dict[str, object] = {"config": path}
    if where == "flag":
        flags["backend"] = ["sim:2"]
    else:
        monkeypatch.setenv("FOREMAN_BACKEND", "sim:2")
    settings = load_settings(**flags)
    assert settings.backends == (
        BackendSpec(name="sim-1", url=SIM),
        BackendSpec(name="sim-2", url=SIM),
    )
    assert settings.listen == "0.0.0.0:11435"  # the file's other settings still count


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (
            'backend = "sim"\ncolour = "blue"\n',
            ["unknown setting 'backend' (did you mean 'backends'?)", "unknown setting 'colour'"],
        ),
        (
            'config = "other.toml"\n',
            ["config: a file cannot name another one; use --config or FOREMAN_CONFIG"],
        ),
        ("max_queue = 0\n", ["max_queue: must be a whole number >= 1, got 0"]),
        (
            'job_timeout = "soon"\n',
            [
                "job_timeout: must be a duration > 0 (seconds, or such as 90s, 10m, 1h30m) "
                "or 'none', got 'soon'"
            ],
        ),
        ("backends = []\n", ["backends: must list at least one backend, got none"]),
        (
            'backends = ["sim", "sim:99"]\n',
            ["backends: sim:N must have N from 1 to 64, got 'sim:99'"],
        ),
        (
            '[[backends]]\nname = "a"\nurl = "sim"\n[[backends]]\nname = "a"\nurl = "gpu"\n',
            ["backends: 2 backends are named 'a': give each its own name (NAME=URL)"],
        ),
        (
            '[[backends]]\nurl = "sim"\nslot = 2\nmodel = ["llama3"]\n',
            [
                "backends #1: unknown key 'slot' (did you mean 'slots'?)",
                "backends #1: unknown key 'model' (did you mean 'models'?)",
            ],
        ),
        (
            '[[backends]]\nurl = "sim"\n[[backends]]\nname = "my gpu"\nslots = 0\n',
            [
                "backends #2: name must be letters, digits, '.', '_', '-' or ':', got 'my gpu'",
                f"backends #2: {URL_RULE}, got nothing",
                "backends #2: slots must be a whole number >= 1, got 0",
            ],
        ),
        (
            '[[backends]]\nurl = "ftp://x"\nslots = true\nmodels = "llama3"\n',
            [
                f"backends #1: {URL_RULE}, got 'ftp://x'",
                "backends #1: slots must be a whole number >= 1, got True",
                f"backends #1: {MODELS_RULE}, got 'llama3'",
            ],
        ),
        (
            '[[backends]]\nurl = "sim"\nslots = "2"\nmodels = []\n',
            [
                "backends #1: slots must be a whole number >= 1, got '2'",
                f"backends #1: {MODELS_RULE}, got []",
            ],
        ),
    ],
)
def test_a_bad_file_is_an_error_naming_the_file(
    tmp_path: Path, text: str, problems: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_settings(config=path)
    assert raised.value.problems == [f"{path}: {problem}" for problem in problems]


def test_the_example_file_is_a_three_host_fleet() -> None:
    example = Path(__file__).parents[1] / "docs" / "examples" / "foreman.toml"
    settings = load_settings(config=example)
    assert names(settings) == ["gpu-a", "gpu-b", "10.0.0.13:11434"]
    assert [backend.slots for backend in settings.backends] == [2, 1, 1]
    assert settings.backends[1].models == frozenset(
        {"llama3:latest", "qwen2:7b", "nomic-embed-text:latest"}
    )


@pytest.mark.parametrize(("text", "line"), [("max_queue = \n", 1), ("\n\n[[backends]\n", 3)])
def test_a_file_that_is_not_toml_is_an_error_naming_it(
    tmp_path: Path, text: str, line: int
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_settings(config=path)
    (problem,) = raised.value.problems
    assert problem.startswith(f"{path}: not valid TOML: ")
    assert f"(at line {line}, column " in problem


def test_a_file_that_cannot_be_read_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    for path, problem in [
        (tmp_path / "missing.toml", "cannot read it: No such file or directory"),
        (tmp_path, "cannot read it: Is a directory"),
        (
            tmp_path / "binary.toml",
            "not valid TOML: 'utf-8' codec can't decode byte 0xff in "
            "position 0: invalid start byte",
        ),
    ]:
        with pytest.raises(ConfigError) as raised:
            load_settings(config=path)
        assert raised.value.problems == [f"{path}: {problem}"]


def test_the_files_problems_come_with_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'colour = "blue"\nmax_queue = 0\n')
    monkeypatch.setenv("FOREMAN_MAX_ATTEMPTS", "three")
    with pytest.raises(ConfigError) as raised:
        load_settings(config=path, listen="nowhere")
    assert [line.split(": must be")[0] for line in raised.value.problems] == [
        f"{path}: unknown setting 'colour'",
        "--listen",
        "FOREMAN_MAX_ATTEMPTS",
        f"{path}: max_queue",
    ]


def test_a_secret_in_the_file_is_never_shown(tmp_path: Path) -> None:
    path = write(tmp_path, 'webhook_secret = "whsec_not*base64"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(config=path)
    assert "not*base64" not in str(raised.value)
    assert str(raised.value).startswith(f"{path}: webhook_secret: must be whsec_ and base64")


# -- foreman config, in-process ----------------------------------------------------------


def test_config_flags_give_a_fleet_shown_one_row_per_backend(tmp_path: Path) -> None:
    path = write(tmp_path, FLEET)
    args = ["config", "--config", str(path), "--backend", "sim:2", "--backend", "gpu=gpu-box"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    settings, fleet = tables(result.output)
    rows = {row[0]: row[1:] for row in settings}
    assert rows["FOREMAN_BACKEND"] == ["sim-1,", "sim-2,", "gpu", "flag"]
    assert rows["FOREMAN_CONFIG"] == [str(path), "flag"]
    assert rows["FOREMAN_LISTEN"] == ["0.0.0.0:11435", "file", str(path)]
    assert fleet == [
        ["sim-1", "sim", "1", "any"],
        ["sim-2", "sim", "1", "any"],
        ["gpu", "http://gpu-box:11434", "1", "any"],
    ]
    result = CliRunner().invoke(main, ["config", "--config", str(path)])
    assert tables(result.output)[1] == [
        ["gpu-a", "http://10.0.0.11:11434", "2", "llama3:latest,", "qwen2:7b"],
        ["10.0.0.12:11434", "http://10.0.0.12:11434", "1", "any"],
        ["local", "sim", "4", "any"],
    ]


def test_config_json_has_the_backends(tmp_path: Path) -> None:
    path = write(tmp_path, FLEET)
    result = CliRunner().invoke(main, ["config", "--json"], env={"FOREMAN_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    output = json.loads(result.output)
    assert output["settings"]["backends"] == [
        {
            "name": "gpu-a",
            "url": "http://10.0.0.11:11434",
            "slots": 2,
            "models": ["llama3:latest", "qwen2:7b"],
        },
        {"name": "10.0.0.12:11434", "url": "http://10.0.0.12:11434", "slots": 1, "models": None},
        {"name": "local", "url": "sim", "slots": 4, "models": None},
    ]
    assert output["settings"]["config"] == str(path)
    assert output["sources"]["backends"] == f"file {path}"
    assert output["sources"]["config"] == "env FOREMAN_CONFIG"


def test_config_exits_2_on_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[[backends]]\nurl = 'sim'\nslots = 0\n")
    result = CliRunner().invoke(main, ["config", "--config", str(path), "--backend", "a=x,a=y"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "Error: invalid configuration:",
        "  --backend: 2 backends are named 'a': give each its own name (NAME=URL)",
    ]
    result = CliRunner().invoke(main, ["config", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert result.output.splitlines()[1:] == [
        f"  {tmp_path / 'nope.toml'}: cannot read it: No such file or directory"
    ]


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


def tables(output: str) -> list[list[list[str]]]:
    """``foreman config``'s tables, settings then backends: rows of words, no header."""
    return [[line.split() for line in table.splitlines()[2:]] for table in output.split("\n\n")]


@pytest.mark.slow  # a `foreman config` process
def test_config_prints_a_table_of_settings_and_sources() -> None:
    done = foreman_config("--listen", "[::1]:8000", FOREMAN_MAX_QUEUE="64", OLLAMA_HOST="gpu-box")
    assert done.returncode == 0, done.stderr
    settings, fleet = tables(done.stdout)
    rows = {row[0]: row[1:] for row in settings}
    assert rows["FOREMAN_LISTEN"] == ["[::1]:8000", "flag"]
    assert rows["FOREMAN_BACKEND"] == ["gpu-box:11434", "env", "OLLAMA_HOST"]
    assert fleet == [["gpu-box:11434", "http://gpu-box:11434", "1", "any"]]
    assert rows["FOREMAN_MAX_QUEUE"] == ["64", "env", "FOREMAN_MAX_QUEUE"]
    assert rows["FOREMAN_MAX_BODY"] == ["32MiB", "default"]
    assert rows["FOREMAN_JOB_TIMEOUT"] == ["none", "default"]
    assert rows["FOREMAN_MAX_WAIT"] == ["1m", "default"]
    assert len(rows) == len(DEFAULTS)


@pytest.mark.slow  # a `foreman config` process
def test_config_never_prints_the_webhook_secret_nor_the_metrics_token() -> None:
    for args in ((), ("--json",)):
        done = foreman_config(
            *args,
            FOREMAN_WEBHOOK_SECRET="whsec_c2VjcmV0IGJ5dGVz",
            FOREMAN_METRICS_TOKEN="scrape-token-0123456789",
        )
        assert done.returncode == 0, done.stderr
        assert "c2VjcmV0IGJ5dGVz" not in done.stdout
        assert "scrape-token-0123456789" not in done.stdout
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
        "  --backend: must be an http(s) URL such as http://127.0.0.1:11434 or host:port, "
        "NAME=URL, sim or sim:N, got 'ftp://x'",
        "  FOREMAN_MAX_ATTEMPTS: must be a whole number >= 1, got 'three'",
    ]
