"""The job API's ceiling: Foreman's HTTP actor hosting a job API that keeps nothing.

The same Hypercorn server and configuration (:func:`foreman.actors.http.serve_http`)
and the same models as Foreman's job API, without the journal, the scheduler or the
log: ``POST /jobs`` parses a :class:`~foreman.api.schemas.SubmitJob` and answers 202
with a made-up id (submit.py's ceiling); ``GET /jobs/{id}`` answers a fixed queued
:class:`~foreman.views.JobView` (memory.py's floor). Run as a process; it prints
``ceiling: listening on URL`` and stops on SIGTERM or SIGINT.

    python benchmarks/_ceiling.py [--listen 127.0.0.1:0]
"""

from __future__ import annotations

import argparse
import itertools
from datetime import UTC, datetime

import trio
from _servers import serve_until_signalled
from fastapi import FastAPI
from starlette.responses import Response

from foreman.api.schemas import JobAccepted, SubmitJob
from foreman.views import JobView


def create_app() -> FastAPI:
    app = FastAPI()
    numbers = itertools.count()

    @app.post("/jobs", status_code=202)
    async def submit(body: SubmitJob) -> Response:
        job_id = f"01MADEUP{next(numbers):018d}"
        accepted = JobAccepted(
            job_id=job_id,
            state="queued",
            created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            queue_position=0,
            location=f"/jobs/{job_id}",
        )
        headers = {"Location": accepted.location}
        return Response(accepted.model_dump_json(), 202, headers, media_type="application/json")

    @app.get("/jobs/{job_id}", response_model=JobView)
    async def get(job_id: str) -> JobView:
        return JobView(
            id=job_id,
            kind="chat",
            model="llama3",
            state="queued",
            priority=0,
            attempts=0,
            created_at="2026-11-28T09:30:00.123456Z",
            started_at=None,
            finished_at=None,
            backend=None,
            error=None,
            metadata=None,
            queue_position=0,
            result=None,
            artifacts=[],
            state_webhook_url=None,
            webhooks=None,
        )

    return app


async def main(listen: str) -> None:
    await serve_until_signalled("ceiling", create_app(), listen)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    trio.run(main, parser.parse_args().listen)
