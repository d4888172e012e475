"""A web page in someone's browser cannot use Foreman: foreign origins and, on
loopback, foreign Host names (DNS rebinding) are refused, as Ollama refuses them."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest
import trio

from foreman.api.browsers import local_host, origins_pattern
from tests.running import Foreman, start_foreman

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("127.0.0.1:11435", True),
        ("localhost:11435", True),
        ("[::1]:11435", True),
        ("0.0.0.0:11435", True),
        ("192.168.1.20:11435", True),  # a private address: this machine on the LAN
        ("app.localhost", True),
        ("gpu-box.local:11435", True),
        ("foreman.internal", True),
        (socket.gethostname(), True),
        ("", True),  # HTTP/1.0 sends none
        ("evil.example:11435", False),
        ("localhost.evil.example", False),
        ("93.184.216.34", False),
    ],
)
def test_the_host_names_of_this_machine_are_ollamas(host: str, local: bool) -> None:
    assert local_host(host) is local


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("https://127.0.0.1", True),
        ("http://[::1]:8080", True),
        ("vscode-webview://abc", True),
        ("https://app.corp.example", True),  # FOREMAN_ORIGINS below
        ("https://corp.example", False),
        ("https://evil.example", False),
        ("http://localhost.evil.example", False),
        ("null", False),
    ],
)
def test_origins_are_the_loopback_ones_the_app_schemes_and_those_named(
    origin: str, allowed: bool
) -> None:
    pattern = re.compile(origins_pattern(["https://*.corp.example"]))
    assert (pattern.fullmatch(origin) is not None) is allowed


async def test_a_foreign_host_is_refused_on_loopback_in_each_routes_dialect(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    rebound = {"Host": f"evil.example:{httpx.URL(foreman.url).port}"}
    ollama = await http.post("/api/chat", json=CHAT, headers=rebound)
    assert ollama.status_code == 403
    assert "DNS rebinding" in ollama.json()["error"]
    openai = await http.post("/v1/chat/completions", json=CHAT, headers=rebound)
    assert openai.status_code == 403
    assert "DNS rebinding" in openai.json()["error"]["message"]  # OpenAI's shape
    jobs = await http.post("/jobs", json={"kind": "chat", "request": CHAT}, headers=rebound)
    assert jobs.status_code == 403
    assert "DNS rebinding" in jobs.json()["error"]
    assert foreman.job_events() == {}  # nothing ran
    assert (await http.get("/api/tags")).status_code == 200  # its own name is fine


async def test_a_foreign_origin_is_refused_and_an_allowed_one_gets_cors(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    foreign = {"Origin": "https://evil.example"}
    refused = await http.post("/jobs", json={"kind": "chat", "request": CHAT}, headers=foreign)
    assert refused.status_code == 403
    assert "FOREMAN_ORIGINS" in refused.json()["error"]
    assert "access-control-allow-origin" not in refused.headers
    preflight = {**foreign, "Access-Control-Request-Method": "POST"}
    assert (await http.options("/api/chat", headers=preflight)).status_code == 403
    assert foreman.job_events() == {}

    local = {"Origin": "http://localhost:3000"}
    answered = await http.post("/api/chat", json=CHAT, headers=local)
    assert answered.status_code == 200
    assert answered.headers["access-control-allow-origin"] == "http://localhost:3000"
    asked = await http.options(
        "/api/chat", headers={**local, "Access-Control-Request-Method": "POST"}
    )
    assert asked.status_code == 200
    assert asked.headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_foreman_origins_adds_origins_and_off_loopback_any_host_is_served(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(
        nursery, db_path, origins="https://*.corp.example", listen="0.0.0.0:0", auth="off"
    ):
        port = httpx.URL(foreman.url).port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            corp = {"Origin": "https://app.corp.example", "Host": "gpu.corp.example"}
            answered = await http.get("/api/tags", headers=corp)
            assert answered.status_code == 200
            assert answered.headers["access-control-allow-origin"] == "https://app.corp.example"
            other = await http.get("/api/tags", headers={"Origin": "https://corp.example"})
            assert other.status_code == 403
