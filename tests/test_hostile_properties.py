"""Hostile input is normal input: arbitrary JSON in every field of every write route
(Ollama's, OpenAI's, the job API's, and the lines of a batch's input file), over real
HTTP to a real Foreman process, never stops it or poisons its log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processes import (
    Process,
    foreman_command,
    running,
    start_foreman_process,
    start_simulator,
)

pytestmark = pytest.mark.slow

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
GENERATE = {"model": "llama3", "prompt": "hi", "stream": False}
EMBED = {"model": "nomic-embed-text", "input": "hi"}
JOB = {"kind": "chat", "request": CHAT, "metadata": {"note": "hi"}}
OPENAI_CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
BATCH_LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": OPENAI_CHAT,
}

# Each write route, a valid body, and the fields a hostile value replaces (a dotted path;
# "*" stands for the whole body, "extra" for a field nobody expects). ``/v1/files`` takes
# a JSONL file: the hostile value goes into its first line.
ROUTES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "/api/chat": (
        CHAT,
        [
            *("*", "model", "messages", "messages.0", "messages.0.content", "messages.0.role"),
            *("stream", "options", "format", "tools", "keep_alive", "extra"),
        ],
    ),
    "/api/generate": (
        GENERATE,
        ["*", "model", "prompt", "stream", "options", "system", "images", "context", "extra"],
    ),
    "/api/embed": (EMBED, ["*", "model", "input", "options", "extra"]),
    "/api/embeddings": ({"model": "nomic-embed-text", "prompt": "hi"}, ["*", "prompt", "extra"]),
    "/api/show": ({"model": "llama3"}, ["*", "model", "extra"]),
    "/jobs": (
        JOB,
        [
            *("*", "kind", "request", "request.model", "request.messages", "request.options"),
            *("priority", "state_webhook_url", "metadata", "metadata.note", "extra"),
        ],
    ),
    "/jobs/{id}/webhooks/redeliver": ({"ids": ["x"]}, ["*", "ids", "ids.0", "extra"]),
    "/v1/chat/completions": (
        OPENAI_CHAT,
        [
            *("*", "model", "messages", "messages.0", "messages.0.content", "messages.0.role"),
            *("stream", "stream_options", "tools", "response_format", "max_tokens", "stop"),
            *("temperature", "seed", "reasoning_effort", "extra"),
        ],
    ),
    "/v1/completions": (
        {"model": "llama3", "prompt": "hi", "max_tokens": 4},
        ["*", "model", "prompt", "stream", "max_tokens", "stop", "suffix", "extra"],
    ),
    "/v1/embeddings": (EMBED, ["*", "model", "input", "encoding_format", "dimensions", "extra"]),
    "/v1/files": (BATCH_LINE, ["*", "custom_id", "method", "url", "body", "body.messages"]),
    "/v1/batches": (
        {
            "input_file_id": "{file}",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"k": "v"},
        },
        ["*", "input_file_id", "endpoint", "completion_window", "metadata", "metadata.k", "extra"],
    ),
}

ODD_STRINGS = st.sampled_from(
    ["\ud800", "a\udfffb", "\x00", "\U0001f600", "", " ", "../../etc/passwd", "%00", "\u202e"]
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**4000), max_value=10**4000),
    st.floats(),
    st.text(st.characters(codec=None), max_size=20),
    ODD_STRINGS,
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(st.characters(codec=None), max_size=5) | ODD_STRINGS, inner, max_size=5
        )
    ),
    max_leaves=40,
)


def nested(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = [value]
    return value


def with_value(body: dict[str, Any], field: str, value: Any) -> Any:
    """``body`` with ``value`` at ``field`` (a copy)."""
    if field == "*":
        return value
    body = json.loads(json.dumps(body))
    *path, last = field.split(".")
    target: Any = body
    for part in path:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return body


def encoded(value: Any) -> bytes:
    """JSON as a hostile client may write it: NaN and Infinity, lone surrogates as
    escapes, integers of thousands of digits, nesting of hundreds of levels."""
    return json.dumps(value).encode()


def upload(http: httpx.Client, content: bytes) -> httpx.Response:
    return http.post("/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def simulator(workdir: Path) -> Iterator[Process]:
    process = start_simulator(workdir / "sim.out", "--load-latency", "0", "--token-latency", "0")
    with running(process):
        yield process


def serve(workdir: Path, simulator: Process, output: str) -> Process:
    """Foreman with no FOREMAN_WEBHOOK_ALLOWED_HOSTS: no generated state_webhook_url can
    reach this machine or its network (ADR-0040)."""
    return start_foreman_process(
        workdir / output,
        simulator.url,
        workdir / "foreman.db",
        durability="normal",
    )


def check_answer(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:500])
    if answer.status_code >= 400:
        assert set(answer.json()) >= {"error"}, answer.text[:500]
    elif answer.headers.get("content-type", "").startswith("application/x-ndjson"):
        for line in answer.text.splitlines():
            json.loads(line)
    elif answer.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in answer.text.split("\n\n") if line]
        assert events[-1] == "[DONE]", answer.text[-200:]
        for event in events[:-1]:
            json.loads(event)
    elif answer.content:
        json.loads(answer.content)


def test_arbitrary_json_in_every_field_of_every_write_route(
    workdir: Path, simulator: Process
) -> None:
    with running(serve(workdir, simulator, "first.out")) as foreman:
        http = httpx.Client(base_url=foreman.url, timeout=30)
        job_id = http.post("/jobs", json=JOB).json()["job_id"]
        good_file = upload(http, encoded(BATCH_LINE)).json()["id"]

        @settings(
            max_examples=400,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            route=st.sampled_from(sorted(ROUTES)),
            data=st.data(),
            value=st.one_of(ODD_STRINGS, LEAVES, VALUES),  # odd leaves alone, often
            levels=st.sampled_from([0] * 8 + [1, 50, 99, 150, 199, 230, 255, 256, 900]),
        )
        def hostile(route: str, data: st.DataObject, value: Any, levels: int) -> None:
            body, fields = ROUTES[route]
            field = data.draw(st.sampled_from(fields), label="field")
            sent = encoded(with_value(body, field, nested(value, levels)))
            if route == "/v1/files":
                answer = upload(http, sent + b"\n" + encoded({**BATCH_LINE, "custom_id": "b"}))
            else:
                path = route.replace("{id}", job_id)
                sent = sent.replace(b'"{file}"', f'"{good_file}"'.encode())
                headers = {"content-type": "application/json"}
                answer = http.post(path, content=sent, headers=headers)
            check_answer(answer)
            assert http.get("/healthz").status_code == 200

        hostile()
        for path in (f"/jobs/{job_id}", "/jobs/%ED%A0%80", "/jobs/%00", f"/jobs/{'9' * 5000}"):
            check_answer(http.delete(path))
        http.close()
        verified = foreman_command("events", "verify", "--db", str(workdir / "foreman.db"))
        assert verified.returncode == 0, verified.stdout
        assert foreman.terminate(timeout=30) == 0

    # A restart replays what was committed, and the log still verifies.
    with running(serve(workdir, simulator, "restarted.out")) as again:
        assert httpx.get(f"{again.url}/jobs/{job_id}").status_code == 200
        assert again.terminate(timeout=30) == 0
    verified = foreman_command("events", "verify", "--db", str(workdir / "foreman.db"))
    assert verified.returncode == 0, verified.stdout
