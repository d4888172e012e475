"""The OpenAI Batch API through the official ``openai`` client: files in, a batch's lines
run as jobs below every interactive call and drained by model, files out."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio

from foreman.events.log import EventLog
from foreman.events.types import RecordedEvent
from foreman.simulator import SimulatorConfig, serve_simulator
from foreman.simulator.config import parse_models
from tests.running import Foreman, of_type, recorded, start_foreman, until

T = TypeVar("T")
MODELS = ("llama3", "qwen2", "mistral")
SIMULATOR = SimulatorConfig(models=parse_models("llama3,qwen2,mistral,nomic-embed-text"))


def chat_line(n: int, model: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"model": model or MODELS[n % 3], "messages": [{"role": "user", "content": f"q{n}"}]}
    return {
        "custom_id": f"req-{n}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body,
        **extra,
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class Client:
    def __init__(self, foreman: Foreman) -> None:
        self.foreman = foreman
        self.openai = openai.OpenAI(base_url=f"{foreman.url}/v1", api_key="-", max_retries=0)

    async def __call__(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(lambda: call(*args, **kwargs))

    async def upload(self, data: bytes) -> Any:
        return await self(
            self.openai.files.create, file=("in.jsonl", io.BytesIO(data)), purpose="batch"
        )

    async def batch(self, lines: list[dict[str, Any]], **options: Any) -> Any:
        uploaded = await self.upload(jsonl(lines))
        return await self(
            self.openai.batches.create,
            input_file_id=uploaded.id,
            endpoint=lines[0]["url"],
            completion_window=options.pop("completion_window", "24h"),
            **options,
        )

    async def results(self, batch: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The output file's lines and the error file's."""
        found = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is None:
                found.append([])
                continue
            text = (await self(self.openai.files.content, file_id)).text
            found.append([json.loads(line) for line in text.splitlines()])
        return found[0], found[1]


@pytest.fixture
async def client(db_path: Path, nursery: trio.Nursery) -> AsyncIterator[Client]:
    async for foreman in start_foreman(nursery, db_path, simulator=SIMULATOR):
        yield Client(foreman)


def batch_ended(batch_id: str) -> Callable[[RecordedEvent], bool]:
    return recorded(f"batches/{batch_id}", "BatchEnded")


async def test_files_are_stored_listed_read_back_and_deleted(client: Client) -> None:
    data = jsonl([chat_line(n) for n in range(3)])
    uploaded = await client.upload(data)
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data)
    assert uploaded.purpose == "batch" and uploaded.filename == "in.jsonl"
    assert (await client(client.openai.files.retrieve, uploaded.id)).id == uploaded.id
    listed = await client(client.openai.files.list)
    assert [f.id for f in listed.data] == [uploaded.id]
    content = await client(client.openai.files.content, uploaded.id)
    assert content.content == data
    assert content.response.headers["x-content-type-options"] == "nosniff"
    assert content.response.headers["content-security-policy"] == "default-src 'none'; sandbox"
    deleted = await client(client.openai.files.delete, uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        await client(client.openai.files.retrieve, uploaded.id)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"{not json"], "line 1: not valid JSON"),
        (
            [json.dumps(chat_line(0)).encode(), json.dumps(chat_line(0)).encode()],
            "line 2: custom_id 'req-0' is used on line 1",
        ),
        ([json.dumps(chat_line(0, method="GET")).encode()], 'line 1: method must be "POST"'),
        ([json.dumps(chat_line(0, url="/v1/images")).encode()], "line 1: url must be one of"),
        (
            [
                json.dumps(chat_line(0)).encode(),
                json.dumps({**chat_line(1), "url": "/v1/completions"}).encode(),
            ],
            "line 2: url '/v1/completions' differs",
        ),
        (
            [json.dumps({**chat_line(0), "body": {"model": "llama3", "messages": 3}}).encode()],
            "line 1: body: ",
        ),
        ([json.dumps({**chat_line(0), "custom_id": ""}).encode()], "line 1: custom_id must be"),
        ([b"", b"  "], "the file holds no requests"),
        (
            [b"[1, 2]", b"", json.dumps(chat_line(3)).encode(), b"null"],
            "line 1: not a JSON object; line 4: not a JSON object",
        ),
    ],
)
async def test_a_bad_file_is_refused_naming_its_lines(
    client: Client, lines: list[bytes], expected: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.upload(b"\n".join(lines))
    assert expected in refused.value.message
    assert refused.value.body["param"] == "file"  # type: ignore[index]
    assert (await client(client.openai.files.list)).data == []


async def test_only_batch_files_and_a_known_window(client: Client) -> None:
    with pytest.raises(openai.BadRequestError, match="purpose must be 'batch'"):
        await client(
            client.openai.files.create, file=("a.jsonl", io.BytesIO(b"{}")), purpose="fine-tune"
        )
    uploaded = await client.upload(jsonl([chat_line(0)]))
    for window, param in (("48h", "completion_window"), ("soon", "completion_window")):
        with pytest.raises(openai.BadRequestError) as refused:
            await client(
                client.openai.batches.create,
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window=window,  # type: ignore[arg-type]
            )
        assert refused.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="upload it first"):
        await client(
            client.openai.batches.create,
            input_file_id="file-nope",
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )


async def test_a_batch_for_another_endpoint_than_its_lines_fails(client: Client) -> None:
    uploaded = await client.upload(jsonl([chat_line(0)]))
    batch = await client(
        client.openai.batches.create,
        input_file_id=uploaded.id,
        endpoint="/v1/completions",
        completion_window="24h",
    )
    assert batch.status == "failed" and batch.errors is not None
    assert batch.errors.data[0].code == "mismatched_endpoint"


async def test_a_batch_over_three_models_runs_every_line_once_with_three_loads(
    client: Client,
) -> None:
    committed = await client.foreman.running.journal.subscribe()
    lines = [chat_line(n) for n in range(60)]
    batch = await client.batch(lines, metadata={"team": "search"})
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"team": "search"}
    assert batch.request_counts is not None and batch.request_counts.total == 60
    await until(committed, batch_ended(batch.id))
    batch = await client(client.openai.batches.retrieve, batch.id)
    assert batch.status == "completed" and batch.error_file_id is None
    assert batch.request_counts is not None and batch.request_counts.completed == 60
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output, errors = await client.results(batch)
    assert errors == [] and sorted(o["custom_id"] for o in output) == sorted(
        line["custom_id"] for line in lines
    )
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["id"] == f"chatcmpl-{line['response']['request_id']}"
    async with httpx.AsyncClient(base_url=client.foreman.url) as http:
        (host,) = (await http.get("/backends")).json()["backends"]
    assert host["loads"] == 3 and host["done"] == 60
    listed = await client(client.openai.batches.list)
    assert [b.id for b in listed.data] == [batch.id]


@pytest.mark.slow  # 1,000 lines of 8 ms each
async def test_a_chat_arriving_mid_batch_waits_for_one_running_line_at_most(
    db_path: Path, nursery: trio.Nursery
) -> None:
    slow = SIMULATOR.model_copy(update={"token_latency": 0.001})
    async for foreman in start_foreman(nursery, db_path, simulator=slow):
        client = Client(foreman)
        committed = await foreman.running.journal.subscribe()
        batch = await client.batch([chat_line(n) for n in range(1000)])
        await until(committed, of_type("JobSucceeded"))  # the batch is under way
        chat = await client(
            client.openai.chat.completions.create,
            model="llama3",
            messages=[{"role": "user", "content": "hi"}],
        )
        job_id = chat.id.removeprefix("chatcmpl-")
        await until(committed, batch_ended(batch.id), within=120)
        events = read_all(db_path)
        submitted = next(e.seq for e in events if e.stream == job_id)
        started = next(e.seq for e in events if e.stream == job_id and e.type == "JobStarted")
        ended = [e.seq for e in events if e.type == "JobSucceeded" and e.stream != job_id]
        # It came mid-batch, and waited for the line running then to end, no more: no
        # line was waiting at the backend ahead of it.
        assert 1 <= len([seq for seq in ended if seq < submitted]) < 900
        assert len([seq for seq in ended if submitted < seq < started]) <= 1
        batch = await client(client.openai.batches.retrieve, batch.id)
        assert batch.status == "completed" and batch.request_counts.completed == 1000  # type: ignore[union-attr]


def read_all(db_path: Path) -> list[RecordedEvent]:
    log = EventLog.open(db_path, read_only=True)
    try:
        return list(log.read())
    finally:
        log.close()


async def test_every_kind_of_line_outcome_lands_in_one_file_once(client: Client) -> None:
    committed = await client.foreman.running.journal.subscribe()
    lines = [
        chat_line(0),
        chat_line(1, model="not-installed"),  # no host has it
        chat_line(2, model="nomic-embed-text"),  # the backend refuses: it cannot chat
    ]
    batch = await client.batch(lines)
    await until(committed, batch_ended(batch.id))
    batch = await client(client.openai.batches.retrieve, batch.id)
    assert batch.status == "completed"
    assert batch.request_counts.completed == 1 and batch.request_counts.failed == 2  # type: ignore[union-attr]
    output, errors = await client.results(batch)
    assert [o["custom_id"] for o in output] == ["req-0"]
    by_id = {e["custom_id"]: e for e in errors}
    assert by_id["req-1"]["response"] is None
    assert by_id["req-1"]["error"]["code"] == "model_not_found"
    refused = by_id["req-2"]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["message"]


async def test_completions_and_embeddings_batches(client: Client) -> None:
    committed = await client.foreman.running.journal.subscribe()
    completions = [
        {
            "custom_id": f"c{n}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODELS[n % 3], "prompt": f"p{n}", "max_tokens": 4},
        }
        for n in range(6)
    ]
    embeddings = [
        {
            "custom_id": f"e{n}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "nomic-embed-text", "input": [f"t{n}", "u"]},
        }
        for n in range(4)
    ]
    for lines, shape in ((completions, "text_completion"), (embeddings, "list")):
        batch = await client.batch(lines)
        await until(committed, batch_ended(batch.id))
        batch = await client(client.openai.batches.retrieve, batch.id)
        output, errors = await client.results(batch)
        assert errors == [] and len(output) == len(lines)
        assert {o["response"]["body"]["object"] for o in output} == {shape}
    assert len(output[0]["response"]["body"]["data"]) == 2


async def test_a_cancelled_batch_keeps_its_finished_lines_and_reports_the_rest(
    db_path: Path, nursery: trio.Nursery
) -> None:
    slow = SIMULATOR.model_copy(update={"token_latency": 0.005})
    async for foreman in start_foreman(nursery, db_path, simulator=slow):
        client = Client(foreman)
        committed = await foreman.running.journal.subscribe()
        batch = await client.batch([chat_line(n) for n in range(200)])
        await until(committed, of_type("JobSucceeded"))
        cancelling = await client(client.openai.batches.cancel, batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        await until(committed, batch_ended(batch.id))
        batch = await client(client.openai.batches.retrieve, batch.id)
        assert batch.status == "cancelled" and batch.cancelled_at
        output, errors = await client.results(batch)
        assert 1 <= len(output) < 200
        assert sorted(line["custom_id"] for line in output + errors) == sorted(
            f"req-{n}" for n in range(200)
        )
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        with pytest.raises(openai.ConflictError, match="status cancelled"):
            await client(client.openai.batches.cancel, batch.id)
        with pytest.raises(openai.NotFoundError):
            await client(client.openai.batches.cancel, "batch_nope")


async def test_past_its_window_a_batch_expires_with_its_finished_lines(
    db_path: Path, nursery: trio.Nursery
) -> None:
    slow = SIMULATOR.model_copy(update={"token_latency": 0.01})
    async for foreman in start_foreman(nursery, db_path, simulator=slow):
        client = Client(foreman)
        committed = await foreman.running.journal.subscribe()
        batch = await client.batch([chat_line(n) for n in range(100)], completion_window="1s")
        assert batch.expires_at - batch.created_at == 1
        await until(committed, batch_ended(batch.id))
        batch = await client(client.openai.batches.retrieve, batch.id)
        assert batch.status == "expired" and batch.expired_at
        output, errors = await client.results(batch)
        assert output and errors and len(output) + len(errors) == 100
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}
        assert batch.request_counts.completed == len(output)  # type: ignore[union-attr]


async def test_hostile_requests_get_openai_shaped_errors(client: Client) -> None:
    url = client.foreman.url
    running = await client.batch([chat_line(n) for n in range(3)])
    async with httpx.AsyncClient(base_url=url) as http:
        answers = [
            await http.post("/v1/files", content=b"not multipart"),
            await http.post("/v1/files", data={"purpose": "batch"}),  # no file
            await http.post(
                "/v1/files", files={"file": ("x", b"\xff\xfe")}, data={"purpose": "batch"}
            ),
            await http.post("/v1/batches", content=b"{nope"),
            await http.post("/v1/batches", json={"input_file_id": "x", "endpoint": "/v1/images"}),
            await http.post(
                "/v1/batches",
                json={
                    "input_file_id": running.input_file_id,
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                    "metadata": {f"k{n}": "v" for n in range(17)},
                },
            ),
            await http.get("/v1/files/file-nope/content"),
            await http.get("/v1/batches/batch_nope"),
            await http.get("/v1/batches", params={"limit": 1000}),
            await http.delete(f"/v1/files/{running.input_file_id}"),
        ]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [400, 400, 400, 400, 400, 400, 404, 404, 400, 409]
    for answer in answers:
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


async def test_an_upload_over_the_limit_is_refused_before_it_is_read(client: Client) -> None:
    """The guard's own limit for uploads, by the declared length, on a raw connection."""
    host, port = client.foreman.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {250 * 1024 * 1024}\r\n\r\n"
    )
    await stream.send_all(head.encode())
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        answer += await stream.receive_some()
    await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"upload is over the" in answer and b'"type":"api_error"' in answer


async def test_a_file_of_more_than_50000_requests_is_refused(client: Client) -> None:
    line = json.dumps(chat_line(0)).encode()
    many = b"\n".join(line.replace(b'"req-0"', f'"r{n}"'.encode()) for n in range(50_001))
    with pytest.raises(openai.BadRequestError, match="50,001 requests; a batch takes 50,000"):
        await client.upload(many)


async def test_a_batch_is_drained_by_model_across_a_fleet(
    db_path: Path, nursery: trio.Nursery
) -> None:
    hosts = [
        await nursery.start(serve_simulator, SIMULATOR.model_copy(update={"listen": "127.0.0.1:0"}))
        for _ in range(2)
    ]
    backends = ",".join(f"gpu-{n}={url}" for n, url in enumerate(hosts))
    async for foreman in start_foreman(nursery, db_path, backend=backends):
        client = Client(foreman)
        committed = await foreman.running.journal.subscribe()
        batch = await client.batch([chat_line(n) for n in range(90)])
        await until(committed, batch_ended(batch.id))
        output, errors = await client.results(
            await client(client.openai.batches.retrieve, batch.id)
        )
        assert errors == [] and len({o["custom_id"] for o in output}) == 90
        async with httpx.AsyncClient(base_url=foreman.url) as http:
            fleet = (await http.get("/backends")).json()["backends"]
        assert sum(host["loads"] for host in fleet) <= len(MODELS) + len(hosts)
        assert sum(host["done"] for host in fleet) == 90
