"""``foreman batches …`` against a whole Foreman in the test's nursery, its simulator slow
enough (10 ms a token) that a batch of many lines is caught running; draining the
host then holds the batch where it stands."""

from __future__ import annotations

import importlib
import io
import json
import re
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
import trio
from click.testing import CliRunner, Result

from foreman.cli import main
from foreman.cli.remote import error_message
from foreman.events.types import RecordedEvent
from foreman.simulator import SimulatorConfig
from tests.running import Done, Foreman, of_type, recorded, start_foreman, until

batches_cli = importlib.import_module("foreman.cli.batches")  # the package's name is the group
SLOW = SimulatorConfig(token_latency=0.01)
HOST = "sim"
ERASE_LINE = "\x1b[2K"
Endpoint = Literal["/v1/chat/completions", "/v1/completions"]


def line(n: int) -> dict[str, Any]:
    body = {"model": "llama3", "messages": [{"role": "user", "content": f"q{n}"}]}
    return {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}


class Batches:
    """The Foreman, and batches made and read through the ``openai`` client, on threads."""

    def __init__(self, foreman: Foreman) -> None:
        self.foreman = foreman
        self.openai = openai.OpenAI(base_url=f"{foreman.url}/v1", api_key="-", max_retries=0)

    async def create(
        self, lines: int, endpoint: Endpoint = "/v1/chat/completions", **extra: Any
    ) -> str:
        data = b"".join(json.dumps(line(n)).encode() + b"\n" for n in range(lines))
        upload = partial(self.openai.files.create, file=("in.jsonl", io.BytesIO(data)))
        uploaded = await trio.to_thread.run_sync(partial(upload, purpose="batch"))
        create = partial(
            self.openai.batches.create,
            input_file_id=uploaded.id,
            endpoint=endpoint,
            completion_window="24h",
            **extra,
        )
        return str((await trio.to_thread.run_sync(create)).id)

    async def api(self, method: str, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.foreman.url) as http:
            response = await http.request(method, path)
            assert response.status_code == 200, response.text
            return response.json()

    async def host(self, action: str) -> None:
        """Drain the simulator (it finishes its line and takes no more) or resume it."""
        await self.api("POST", f"/backends/{HOST}/{action}")

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """``foreman batches ARGS --url …`` on a thread: it talks HTTP to this loop."""
        command = ["batches", *args, "--url", self.foreman.url]
        return await trio.to_thread.run_sync(partial(CliRunner().invoke, main, command, env=env))

    async def ok(self, *args: str) -> str:
        result = await self.cli(*args)
        assert result.exit_code == 0, result.output
        return result.output


@pytest.fixture
async def batches(db_path: Path, nursery: trio.Nursery) -> AsyncIterator[Batches]:
    async for foreman in start_foreman(nursery, db_path, simulator=SLOW):
        yield Batches(foreman)


async def held(batches: Batches, lines: int) -> str:
    """A batch caught running (a line done, most to do), its host drained: it stays so."""
    committed = await batches.foreman.running.journal.subscribe()
    batch_id = await batches.create(lines)
    await until(
        committed, both(recorded(f"batches/{batch_id}", "BatchStarted"), of_type("JobSucceeded"))
    )
    await batches.host("drain")
    # The line running when the host was drained finishes, its end recorded: then
    # nothing moves.
    while (await batches.api("GET", "/backends"))["backends"][0]["running"] or (
        await batches.api("GET", "/jobs?state=running")
    )["jobs"]:
        await until(committed, of_type("JobSucceeded", "JobFailed", "JobCancelled"))
    return batch_id


def both(*dones: Done) -> Done:
    """True once each of ``dones`` has been true, in any order."""
    pending = list(dones)

    def done(event: RecordedEvent) -> bool:
        pending[:] = [waiting for waiting in pending if not waiting(event)]
        return not pending

    return done


async def ended(batches: Batches, lines: int, **extra: Any) -> str:
    committed = await batches.foreman.running.journal.subscribe()
    batch_id = await batches.create(lines, **extra)
    await until(committed, recorded(f"batches/{batch_id}", "BatchEnded"))
    return batch_id


def percent(output: str) -> int:
    (shown,) = re.findall(r"[█░]+ +(\d+)%", output)
    return int(shown)


def row(output: str, batch_id: str) -> list[str]:
    (found,) = [text.split() for text in output.splitlines() if batch_id in text]
    return found


def fields(output: str) -> dict[str, str]:
    """``show``'s lines as name → value (names are split from values by 2+ spaces)."""
    pairs = (re.split(r"\s{2,}", text.strip(), maxsplit=1) for text in output.splitlines())
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


async def test_list_shows_each_batch_newest_first_with_its_progress(batches: Batches) -> None:
    first = await ended(batches, 2)
    second = await ended(batches, 3)
    output = await batches.ok("list")
    assert output.index(second) < output.index(first)
    header = output.splitlines()[0].split()
    progress = "completed/failed/total"
    assert header == ["batch", "status", "endpoint", "progress", progress, "created", "expires"]
    for batch_id, counts in ((first, "2/0/2"), (second, "3/0/3")):
        cells = row(output, batch_id)
        assert cells[1:3] == ["completed", "/v1/chat/completions"]
        assert cells[3] == "█" * batches_cli.BAR_WIDTH and cells[4:6] == ["100%", counts]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", cells[6])  # created, then expires: local times
    listed = json.loads(await batches.ok("list", "--json"))
    assert listed == await batches.api("GET", "/v1/batches")
    assert [b["id"] for b in listed["data"]] == [second, first]


async def test_list_pages_with_limit_and_after(batches: Batches) -> None:
    first = await ended(batches, 1)
    second = await ended(batches, 1)
    newest = await batches.ok("list", "--limit", "1")
    assert second in newest and first not in newest
    assert f"more: foreman batches list --after {second}" in newest
    older = await batches.ok("list", "--limit", "1", "--after", second)
    assert first in older and second not in older and "more:" not in older
    page = json.loads(await batches.ok("list", "--limit", "1", "--json"))
    assert page["has_more"] and page["last_id"] == second
    refused = await batches.cli("list", "--limit", "101")
    assert refused.exit_code == 2 and "101 is not in the range 1<=x<=100" in refused.output


async def test_show_a_running_batch_gives_a_partial_bar(batches: Batches) -> None:
    batch_id = await held(batches, 50)
    output = await batches.ok("show", batch_id)
    shown = fields(output)
    assert shown["batch"] == batch_id and shown["status"] == "in_progress"
    assert 0 < percent(output) < 100 and "█" in output and "░" in output
    done = re.fullmatch(r"(\d+) completed, 0 failed, 50 in all", shown["requests"])
    assert done is not None and 0 < int(done[1]) < 50
    assert {"created", "in progress", "expires", "input file"} <= shown.keys()
    assert not {"output file", "completed", "finalizing"} & shown.keys()  # not set yet
    as_json = json.loads(await batches.ok("show", batch_id, "--json"))
    assert as_json == await batches.api("GET", f"/v1/batches/{batch_id}")


async def test_show_an_ended_batch_gives_its_files_times_and_metadata(batches: Batches) -> None:
    batch_id = await ended(batches, 4, metadata={"team": "search"})
    output = await batches.ok("show", batch_id)
    shown = fields(output)
    assert shown["status"] == "completed" and percent(output) == 100
    assert shown["requests"] == "4 completed, 0 failed, 4 in all"
    assert shown["output file"].startswith("file-") and "error file" not in shown
    assert {"created", "in progress", "finalizing", "completed", "expires"} <= shown.keys()
    assert shown["metadata team"] == "search"


async def test_show_a_failed_batch_gives_its_errors(batches: Batches) -> None:
    batch_id = await ended(batches, 2, endpoint="/v1/completions")  # the lines are chats
    output = await batches.ok("show", batch_id)
    assert fields(output)["status"] == "failed" and percent(output) == 0
    assert re.search(r"^error: mismatched_endpoint: .+", output, re.MULTILINE)


async def test_show_watch_returns_once_the_batch_has_ended(
    batches: Batches, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = await held(batches, 12)
    seen: list[str] = []
    looked = threading.Event()
    original = batches_cli.call

    def call(*args: Any, **kwargs: Any) -> Any:
        answer = original(*args, **kwargs)
        seen.append(answer["status"])
        looked.set()
        return answer

    monkeypatch.setattr(batches_cli, "call", call)
    committed = await batches.foreman.running.journal.subscribe()
    async with trio.open_nursery() as nursery:
        watched: list[Result] = []

        async def watch() -> None:
            # As on a terminal, so that the live view is drawn.
            env = {"TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
            watched.append(await batches.cli("show", batch_id, "--watch", env=env))

        nursery.start_soon(watch)
        await trio.to_thread.run_sync(looked.wait)
        await batches.host("resume")
        await until(committed, recorded(f"batches/{batch_id}", "BatchEnded"), within=30)
    (result,) = watched
    assert result.exit_code == 0, result.output
    assert seen[0] == "in_progress" and seen[-1] == "completed"
    first, *_, final = result.output.split(ERASE_LINE)  # the view's drawings, then the end
    assert fields(first)["status"] == "in_progress"
    assert fields(final)["status"] == "completed" and percent(final) == 100


async def test_cancel_shows_the_batch_cancelling_then_cancelled(batches: Batches) -> None:
    batch_id = await held(batches, 50)
    committed = await batches.foreman.running.journal.subscribe()
    shown = fields(await batches.ok("cancel", batch_id))
    assert shown["status"] in ("cancelling", "cancelled") and "cancelling" in shown
    await until(committed, recorded(f"batches/{batch_id}", "BatchEnded"))
    output = await batches.ok("show", batch_id)
    shown = fields(output)
    assert shown["status"] == "cancelled" and shown["error file"].startswith("file-")
    assert shown["output file"].startswith("file-")  # the lines run before the cancel
    assert percent(output) == 100  # every line ended: run, or cancelled (counted failed)
    again = await batches.cli("cancel", batch_id)
    assert again.exit_code == 1
    assert again.output == "Error: cannot cancel a batch with status cancelled\n"


@pytest.mark.parametrize("command", ["show", "cancel"])
async def test_an_unknown_batch_is_a_clean_error(batches: Batches, command: str) -> None:
    result = await batches.cli(command, "batch_nope")
    assert result.exit_code == 1
    assert result.output == "Error: no such batch: batch_nope\n"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"error": {"message": "no such batch: b", "type": "not_found_error"}}, "no such batch: b"),
        ({"error": "no backend named 'x'"}, "no backend named 'x'"),
        ({"detail": "odd"}, "{'detail': 'odd'}"),
        (["odd"], "['odd']"),
    ],
)
def test_the_error_message_is_read_from_either_shape(answer: Any, message: str) -> None:
    assert error_message(answer) == message
