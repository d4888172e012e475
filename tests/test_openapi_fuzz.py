"""A schemathesis run against a running Foreman: no 5xx, no answer outside the schema.

Foreman runs as a process of its own (over the in-process simulator), and the
schemathesis CLI generates requests from its ``/openapi.json`` (valid and
invalid bodies, ids, queries and headers, for every operation of the job
API) and checks each answer against the schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import foreman_command, running, start_foreman_process

pytestmark = pytest.mark.slow  # schemathesis against a Foreman process

CHECKS = ",".join(
    (
        "not_a_server_error",
        "response_schema_conformance",
        "status_code_conformance",
        "content_type_conformance",
    )
)


def test_no_server_errors_and_every_answer_fits_the_schema(tmp_path: Path) -> None:
    # With keys in use from the start, as an exposed Foreman runs: an admin's key lets
    # every operation be tried, and a key the run itself makes changes nothing.
    db = tmp_path / "foreman.db"
    made = foreman_command("keys", "create", "--tenant", "ops", "--admin", "--json",
                           "--url", "http://127.0.0.1:9", "--db", str(db))  # fmt: skip
    key = json.loads(made.stdout)["key"]
    with running(start_foreman_process(tmp_path / "foreman.log", "sim", db)) as foreman:
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{foreman.url}/openapi.json",
                "--header", f"Authorization: Bearer {key}",
                "--checks", CHECKS, "--max-examples", "30", "--seed", "1",
                "--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "30",
                "--generation-database", "none", "--no-color",
            ],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
