"""Keys and tenants over real HTTP: two tenants and an admin, through the ``ollama`` and
``openai`` clients and plain httpx. Another tenant's work is as unknown as none, on
every route the app has."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import trio
from click.testing import CliRunner
from trio.testing import MockClock

from foreman.api.rates import SubmissionRates
from foreman.cli import main
from foreman.events.log import EventLog
from foreman.events.types import JobSubmitted
from tests.running import Foreman, recorded, start_foreman, until

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
BATCH_LINE = {
    "custom_id": "a-1",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
}


@dataclass
class Team:
    """A Foreman with keys in use: an admin, and tenants alpha and beta."""

    foreman: Foreman
    admin: str
    alpha: str
    beta: str
    ids: dict[str, str]
    """Key ids, by tenant name."""

    def http(self, key: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.foreman.url, headers=headers, timeout=10)


async def issue(http: httpx.AsyncClient, tenant: str, **limits: Any) -> tuple[str, str]:
    made = await http.post("/keys", json={"tenant": tenant, **limits})
    assert made.status_code == 201, made.text
    return made.json()["key"], made.json()["id"]


@pytest.fixture
async def team(db_path: Path, nursery: trio.Nursery) -> AsyncIterator[Team]:
    async for foreman in start_foreman(nursery, db_path):
        async with httpx.AsyncClient(base_url=foreman.url, timeout=10) as open_http:
            made = await open_http.post("/keys", json={"tenant": "ops", "admin": True})
            assert made.status_code == 201  # no key in use yet: open, on loopback
            admin = made.json()["key"]
        async with httpx.AsyncClient(
            base_url=foreman.url, headers={"Authorization": f"Bearer {admin}"}
        ) as http:
            alpha, alpha_id = await issue(http, "alpha")
            beta, beta_id = await issue(http, "beta")
        yield Team(foreman, admin, alpha, beta, {"alpha": alpha_id, "beta": beta_id})


async def test_the_first_key_closes_foreman_and_each_dialect_answers_401_its_way(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/jobs")).status_code == 200  # no key issued: open on loopback
    proxied = await http.get("/jobs", headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.status_code == 401 and "through a proxy" in proxied.json()["error"]
    key, _ = await issue(http, "ops", admin=True)

    jobs = await http.get("/jobs")
    assert jobs.status_code == 401
    assert jobs.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer KEY" in jobs.json()["error"]
    tags = await http.get("/api/tags")
    assert tags.status_code == 401 and isinstance(tags.json()["error"], str)
    models = await http.get("/v1/models", headers={"Authorization": "Bearer fm-not-a-key"})
    assert models.status_code == 401
    assert models.json()["error"]["code"] == "invalid_api_key"
    assert "not valid" in models.json()["error"]["message"]
    assert (await http.get("/healthz")).status_code == 200  # health needs no key
    assert (await http.get("/jobs", headers={"Authorization": f"Bearer {key}"})).status_code == 200
    # Refused before the body is read: nothing reached the log.
    refused = await http.post("/jobs", json={"kind": "chat", "request": CHAT})
    assert refused.status_code == 401
    assert not [s for s in foreman.job_events() if not s.startswith(("keys/", "tenants/"))]


async def test_the_ollama_and_openai_clients_send_their_keys(team: Team) -> None:
    url = team.foreman.url
    with_key = ollama.Client(host=url, headers={"Authorization": f"Bearer {team.alpha}"})
    answer = await team.foreman.call(with_key.chat, model="llama3", messages=CHAT["messages"])
    assert answer.message.content
    without = ollama.Client(host=url)
    with pytest.raises(ollama.ResponseError) as refused:
        await team.foreman.call(without.chat, model="llama3", messages=CHAT["messages"])
    assert refused.value.status_code == 401

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=team.beta, max_retries=0)
    completion = await team.foreman.call(
        client.chat.completions.create, model="llama3", messages=CHAT["messages"]
    )
    assert completion.choices[0].message.content
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await team.foreman.call(wrong.models.list)

    tenants = {
        event.event.tenant
        for event in _events(team.foreman.db_path)
        if isinstance(event.event, JobSubmitted)
    }
    assert tenants == {"alpha", "beta"}


async def test_a_revoked_key_is_refused_from_the_next_request(team: Team) -> None:
    async with team.http(team.beta) as beta, team.http(team.admin) as admin:
        assert (await beta.get("/jobs")).status_code == 200
        revoked = await admin.delete(f"/keys/{team.ids['beta']}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert (await beta.get("/jobs")).status_code == 401
        again = await admin.delete(f"/keys/{team.ids['beta']}")
        assert again.status_code == 409
        listed = {key["tenant"]: key for key in (await admin.get("/keys")).json()["keys"]}
        assert listed["beta"]["revoked_at"] and listed["alpha"]["revoked_at"] is None
        assert "key" not in listed["alpha"]  # a key is shown once, when made


async def test_the_last_admin_key_cannot_be_revoked_while_other_keys_live(team: Team) -> None:
    async with team.http(team.admin) as admin:
        keys = (await admin.get("/keys")).json()["keys"]
        ops = next(key["id"] for key in keys if key["admin"])
        refused = await admin.delete(f"/keys/{ops}")
        assert refused.status_code == 409 and "last admin key" in refused.json()["error"]


async def test_tenants_and_non_admins_cannot_manage_keys_or_hosts(team: Team) -> None:
    async with team.http(team.alpha) as alpha:
        for method, path, body in (
            ("POST", "/keys", {"tenant": "alpha", "admin": True}),
            ("GET", "/keys", None),
            ("DELETE", f"/keys/{team.ids['beta']}", None),
            ("PUT", "/tenants/alpha/limits", {"weight": 100}),
            ("POST", "/backends/default/drain", None),
        ):
            answer = await alpha.request(method, path, json=body)
            assert answer.status_code == 403, (method, path)


@dataclass
class AlphasWork:
    job: str
    artifact: str
    file: str
    batch: str


async def alphas_work(team: Team) -> AlphasWork:
    """A finished job with an artifact, an uploaded file and a batch, all alpha's."""
    committed = await team.foreman.running.journal.subscribe()
    async with team.http(team.alpha) as alpha:
        submitted = await alpha.post(
            "/jobs",
            json={
                "kind": "chat",
                "request": CHAT,
                "state_webhook_url": "http://hooks.example/alpha",
            },
        )
        job = submitted.json()["job_id"]
        await until(committed, recorded(job, "JobSucceeded"))
        artifact = (await alpha.get(f"/jobs/{job}")).json()["artifacts"][0]["name"]
        upload = await alpha.post(
            "/v1/files",
            files={"file": ("in.jsonl", json.dumps(BATCH_LINE).encode())},
            data={"purpose": "batch"},
        )
        file_id = upload.json()["id"]
        batch = await alpha.post(
            "/v1/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert batch.status_code == 200, batch.text
    return AlphasWork(job, artifact, file_id, batch.json()["id"])


def app_routes(foreman: Foreman) -> set[tuple[str, str]]:
    """Every method and path the running app answers (HEAD aside: GET's twin)."""
    found: set[tuple[str, str]] = set()

    def walk(routes: Iterable[Any]) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # an included router
            if inner is not None:
                walk(inner.routes)
            for method in getattr(route, "methods", None) or ():
                if method != "HEAD":
                    found.add((method, route.path))

    walk(foreman.running.app.routes)
    return found


HIDDEN = {
    ("GET", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/events"),
    ("GET", "/jobs/{job_id}/artifacts/{name}"),
    ("POST", "/jobs/{job_id}/webhooks/redeliver"),
    ("GET", "/v1/files/{file_id}"),
    ("DELETE", "/v1/files/{file_id}"),
    ("GET", "/v1/files/{file_id}/content"),
    ("GET", "/v1/batches/{batch_id}"),
    ("POST", "/v1/batches/{batch_id}/cancel"),
}
"""Another tenant's id answers 404, as an unknown one does."""
LISTINGS = {("GET", "/jobs"), ("GET", "/v1/files"), ("GET", "/v1/batches"), ("GET", "/usage")}
"""Lists only the caller's own."""
ADMIN_ONLY = {
    ("POST", "/keys"),
    ("GET", "/keys"),
    ("DELETE", "/keys/{key_id}"),
    ("PUT", "/tenants/{tenant}/limits"),
    ("POST", "/backends/{name}/drain"),
    ("POST", "/backends/{name}/resume"),
    ("GET", "/metrics"),
}
SUBMISSIONS = {
    ("POST", "/jobs"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/files"),
    ("POST", "/v1/batches"),
}
"""Make the caller's own work (a batch of another tenant's file: no such file)."""
DASHBOARD = {("GET", "/summary"), ("GET", "/events")}
"""Show the caller's own jobs among the fleet's hosts; tests/test_dashboard.py checks
them with two tenants (one is a stream that never ends)."""
SHARED = {
    ("GET", "/"),
    ("GET", "/ui"),
    ("GET", "/ui/{name}"),
    ("GET", "/api/tags"),
    ("GET", "/api/ps"),
    ("GET", "/api/version"),
    ("POST", "/api/show"),
    ("POST", "/api/embed"),
    ("POST", "/api/embeddings"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model:path}"),
    ("GET", "/backends"),
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
"""The models and hosts, health, the API's description and the dashboard's page: no
tenant's data."""


async def test_every_route_keeps_a_tenant_out_of_anothers_work(team: Team) -> None:
    committed = await team.foreman.running.journal.subscribe()
    routes = app_routes(team.foreman)
    classified = HIDDEN | LISTINGS | ADMIN_ONLY | SUBMISSIONS | SHARED | DASHBOARD
    assert routes == classified, f"routes to classify: {routes - classified}"
    work = await alphas_work(team)
    filled = {
        "job_id": work.job,
        "name": work.artifact,
        "file_id": work.file,
        "batch_id": work.batch,
    }
    async with team.http(team.beta) as beta, team.http(team.admin) as admin:
        for method, template in sorted(HIDDEN):
            path = template.format(**filled)
            answer = await beta.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert (await admin.request("GET", path)).status_code in (200, 405), path
        for method, path in sorted(LISTINGS):
            listed = await beta.request(method, path)
            assert listed.status_code == 200, path
            assert not {work.job, work.file, work.batch, "alpha"} & _strings(listed.json())
            everyone = await admin.request(method, path)
            assert {work.job, work.file, work.batch, "alpha"} & _strings(everyone.json()), path
        batch_of_alphas = await beta.post(
            "/v1/batches",
            json={
                "input_file_id": work.file,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert batch_of_alphas.status_code == 400
        assert "no file" in batch_of_alphas.json()["error"]["message"]
        # What the batch writes is its tenant's too.
        await until(committed, recorded(f"batches/{work.batch}", "BatchEnded"), within=30)
        output = (await admin.get(f"/v1/batches/{work.batch}")).json()["output_file_id"]
        assert (await beta.get(f"/v1/files/{output}/content")).status_code == 404
        async with team.http(team.alpha) as alpha:
            assert (await alpha.get(f"/v1/files/{output}/content")).status_code == 200
        # Alpha's job is still alpha's, untouched by beta's tries.
        assert (await admin.get(f"/jobs/{work.job}")).json()["tenant"] == "alpha"


def _strings(value: Any) -> set[str]:
    """Every string in a JSON value, keys and values, whole."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return {*value} | {s for item in value.values() for s in _strings(item)}
    if isinstance(value, list):
        return {s for item in value for s in _strings(item)}
    return set()


async def test_an_admin_acts_for_any_tenant(team: Team) -> None:
    async with team.http(team.alpha) as alpha, team.http(team.admin) as admin:
        sim = str((await admin.get("/healthz")).json()["backends"][0]["url"])
        await admin.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": 30, "times": 1})
        running = (await alpha.post("/jobs", json={"kind": "chat", "request": CHAT})).json()
        queued = (await alpha.post("/jobs", json={"kind": "chat", "request": CHAT})).json()
        cancelled = await admin.delete(f"/jobs/{queued['job_id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        stopping = await admin.delete(f"/jobs/{running['job_id']}")
        assert stopping.status_code in (200, 202)


async def test_an_idempotency_key_is_each_tenants_own(team: Team) -> None:
    same = {"Idempotency-Key": "order-7"}
    body = {"kind": "chat", "request": CHAT}
    async with team.http(team.alpha) as alpha, team.http(team.beta) as beta:
        first = await alpha.post("/jobs", json=body, headers=same)
        other = await beta.post("/jobs", json=body, headers=same)
        assert first.status_code == other.status_code == 202
        assert first.json()["job_id"] != other.json()["job_id"]
        again = await alpha.post("/jobs", json=body, headers=same)
        assert again.status_code == 200 and again.json()["job_id"] == first.json()["job_id"]


async def test_the_tenant_is_in_the_jobs_events_and_events_show(team: Team) -> None:
    committed = await team.foreman.running.journal.subscribe()
    async with team.http(team.alpha) as alpha:
        job = (await alpha.post("/jobs", json={"kind": "chat", "request": CHAT})).json()["job_id"]
    await until(committed, recorded(job, "JobSucceeded"))
    db = str(team.foreman.db_path)
    shown = await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, ["events", "show", "--db", db, job, "--json"])
    )
    assert shown.exit_code == 0, shown.output
    answer = json.loads(shown.output)
    assert answer["job"]["tenant"] == "alpha"
    assert answer["events"][0]["data"]["tenant"] == "alpha"
    table = await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(main, ["events", "show", "--db", db, job])
    )
    assert "tenant alpha" in table.output


def _events(db_path: Path) -> list[Any]:
    log = EventLog.open(db_path, read_only=True)
    try:
        return list(log.read())
    finally:
        log.close()


async def test_a_tenants_rate_is_answered_429_with_retry_after_in_each_dialect(
    team: Team,
) -> None:
    async with team.http(team.admin) as admin:
        limited = await admin.put("/tenants/alpha/limits", json={"rate": 2})
        assert limited.status_code == 200 and limited.json()["rate"] == 2
    async with team.http(team.alpha) as alpha, team.http(team.beta) as beta:
        for _ in range(2):
            assert (await alpha.post("/jobs", json={"kind": "chat", "request": CHAT})).is_success
        refused = await alpha.post("/jobs", json={"kind": "chat", "request": CHAT})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "2 requests a minute" in refused.json()["error"]
        chat = await alpha.post("/api/chat", json=CHAT | {"stream": False})
        assert chat.status_code == 429 and isinstance(chat.json()["error"], str)
        completion = await alpha.post("/v1/chat/completions", json=CHAT)
        assert completion.json()["error"]["code"] == "rate_limit_exceeded"
        assert (await alpha.get("/jobs")).status_code == 200  # reads are not submissions
        assert (await beta.post("/jobs", json={"kind": "chat", "request": CHAT})).is_success


async def test_usage_is_each_tenants_own_and_an_admin_sees_all(team: Team) -> None:
    committed = await team.foreman.running.journal.subscribe()
    async with team.http(team.alpha) as alpha, team.http(team.beta) as beta:
        for client, count in ((alpha, 2), (beta, 1)):
            for _ in range(count):
                job = (await client.post("/jobs", json={"kind": "chat", "request": CHAT})).json()
                await until(committed, recorded(job["job_id"], "JobSucceeded"))
        own = (await alpha.get("/usage")).json()["tenants"]
        assert [row["tenant"] for row in own] == ["alpha"]
        assert own[0]["succeeded"] == own[0]["jobs"] == 2
        assert own[0]["prompt_tokens"] > 0 and own[0]["completion_tokens"] > 0
        assert own[0]["gpu_seconds"] > 0
        later = (await alpha.get("/usage", params={"since": "2999-01-01T00:00:00Z"})).json()
        assert later["tenants"] == [
            dict(own[0], jobs=0, succeeded=0, prompt_tokens=0, completion_tokens=0, gpu_seconds=0.0)
        ]
    async with team.http(team.admin) as admin:
        everyone = {row["tenant"]: row for row in (await admin.get("/usage")).json()["tenants"]}
        assert everyone["alpha"]["jobs"] == 2 and everyone["beta"]["jobs"] == 1
        one = (await admin.get("/usage", params={"tenant": "beta"})).json()["tenants"]
        assert [row["tenant"] for row in one] == ["beta"]
    offline = await trio.to_thread.run_sync(
        lambda: CliRunner().invoke(
            main,
            ["usage", "--url", "http://127.0.0.1:9", "--db", str(team.foreman.db_path), "--json"],
        )
    )
    rows = {row["tenant"]: row for row in json.loads(offline.stdout)["tenants"]}
    assert rows["alpha"] == everyone["alpha"]


def test_submission_rates_slide_over_a_minute() -> None:
    async def main_() -> None:
        rates = SubmissionRates()
        assert rates.take("alpha", None) is None  # no rate: no limit
        assert [rates.take("alpha", 2) for _ in range(3)] == [None, None, 60]
        await trio.sleep(30)
        assert rates.take("alpha", 2) == 30
        assert rates.take("beta", 2) is None  # each tenant its own
        await trio.sleep(30)
        assert rates.take("alpha", 2) is None  # the first two left the window
        assert rates.take("alpha", 1) == 60  # lowered: the newest holds the window

    trio.run(main_, clock=MockClock(autojump_threshold=0))


async def test_a_tenants_queued_jobs_are_limited_and_others_go_on(team: Team) -> None:
    committed = await team.foreman.running.journal.subscribe()
    async with team.http(team.admin) as admin:
        await admin.put("/tenants/alpha/limits", json={"max_queued": 2})
        sim = str((await admin.get("/healthz")).json()["backends"][0]["url"])
        await admin.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": 30, "times": 1})
    body = {"kind": "chat", "request": CHAT}
    async with team.http(team.alpha) as alpha, team.http(team.beta) as beta:
        first = (await alpha.post("/jobs", json=body)).json()["job_id"]
        await until(committed, recorded(first, "JobStarted"))  # running: not queued
        for _ in range(2):
            assert (await alpha.post("/jobs", json=body)).status_code == 202
        refused = await alpha.post("/jobs", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert "2 jobs queued, its limit" in refused.json()["error"]
        ollama_way = await alpha.post("/api/chat", json=CHAT | {"stream": False})
        assert ollama_way.status_code == 429 and "its limit" in ollama_way.json()["error"]
        openai_way = await alpha.post("/v1/chat/completions", json=CHAT)
        assert (
            openai_way.status_code == 429 and "its limit" in openai_way.json()["error"]["message"]
        )
        assert (await beta.post("/jobs", json=body)).status_code == 202


async def test_a_tenant_arriving_behind_anothers_backlog_runs_after_one_more(team: Team) -> None:
    """ADR-0042's bound over HTTP: beta's one job, queued behind alpha's backlog for the
    loaded model, starts after at most one more of alpha's than were at the backend."""
    committed = await team.foreman.running.journal.subscribe()
    async with team.http(team.admin) as admin:
        sim = str((await admin.get("/healthz")).json()["backends"][0]["url"])
        await admin.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": 1, "times": 1})
    body = {"kind": "chat", "request": CHAT}
    async with team.http(team.alpha) as alpha, team.http(team.beta) as beta:
        alphas = [(await alpha.post("/jobs", json=body)).json()["job_id"] for _ in range(30)]
        betas = (await beta.post("/jobs", json=body)).json()["job_id"]
    await until(committed, recorded(betas, "JobSucceeded"), within=30)
    order = [
        (event.type, event.stream)
        for event in _events(team.foreman.db_path)
        if event.type in ("JobSubmitted", "JobStarted")
    ]
    submitted = order.index(("JobSubmitted", betas))
    started = order.index(("JobStarted", betas))
    already = {stream for kind, stream in order[:submitted] if kind == "JobStarted"}
    between = [stream for kind, stream in order[submitted:started] if kind == "JobStarted"]
    assert set(between) <= set(alphas) - already
    # One may already wait at the backend behind the running one (ADR-0026), and one more.
    assert len(between) <= 2, between
    assert len(alphas) - len(already) - len(between) > 20  # alpha's backlog was still there
