"""``foreman keys`` and starting Foreman beyond loopback: keys first, or FOREMAN_AUTH=off."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from click.testing import CliRunner, Result

from foreman.cli import main
from foreman.config import load_settings
from foreman.events.audit import verify
from foreman.events.store import open_log
from foreman.supervisor import Unprotected, run_foreman
from tests.running import start_foreman

NOWHERE = "http://127.0.0.1:9"
"""Where no Foreman answers: the commands fall back to the log itself."""


def keys(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["keys", *args], env=env)


def test_keys_are_made_listed_and_revoked_in_the_log_when_no_foreman_runs(
    db_path: Path,
) -> None:
    offline = ("--url", NOWHERE, "--db", str(db_path))
    made = keys("create", "--tenant", "ops", "--admin", *offline)
    assert made.exit_code == 0, made.output
    assert "only time the key is shown" in made.stderr
    secret = made.stdout.split()[-1]
    assert secret.startswith("fm-") and len(secret) > 40
    alpha = keys("create", "--tenant", "alpha", "--rate", "60", "--weight", "2", *offline, "--json")
    created = json.loads(alpha.stdout)
    assert created["limits"] | {"set_at": None} == {
        "weight": 2.0,
        "max_queued": None,
        "rate": 60,
        "batch_share": None,
        "set_at": None,
    }
    listed = json.loads(keys("list", *offline, "--json").stdout)
    assert [key["tenant"] for key in listed] == ["ops", "alpha"]
    assert all("key" not in key for key in listed)
    assert secret not in db_path.read_bytes().decode(errors="replace")  # only its hash

    refused = keys("revoke", listed[0]["id"], *offline)
    assert refused.exit_code == 1 and "last admin key" in refused.output
    revoked = keys("revoke", created["id"], *offline, "--json")
    assert json.loads(revoked.stdout)["revoked_at"]
    lifted = keys("limits", "alpha", *offline, "--json")
    assert json.loads(lifted.stdout)["rate"] is None
    log = open_log(db_path, read_only=True)
    try:
        assert verify(log) == []
    finally:
        log.close()


async def test_the_commands_go_through_a_running_foreman_with_its_admin_key(
    db_path: Path, nursery: trio.Nursery
) -> None:
    async for foreman in start_foreman(nursery, db_path):
        online = ("--url", foreman.url, "--db", str(db_path))
        made = await trio.to_thread.run_sync(
            partial(keys, "create", "--tenant", "ops", "--admin", *online)
        )
        assert made.exit_code == 0 and "using the event log" not in made.stderr
        admin = {"FOREMAN_API_KEY": made.stdout.split()[-1]}
        refused = await trio.to_thread.run_sync(partial(keys, "list", *online))
        assert refused.exit_code == 1 and "API key is required" in refused.output
        beta = await trio.to_thread.run_sync(
            partial(keys, "create", "--tenant", "beta", "--json", *online, env=admin)
        )
        beta_key = json.loads(beta.stdout)
        async with httpx.AsyncClient(base_url=foreman.url) as http:
            auth = {"Authorization": f"Bearer {beta_key['key']}"}
            assert (await http.get("/jobs", headers=auth)).status_code == 200
            revoked = await trio.to_thread.run_sync(
                partial(keys, "revoke", beta_key["id"], *online, env=admin)
            )
            assert revoked.exit_code == 0, revoked.output
            assert (await http.get("/jobs", headers=auth)).status_code == 401

        # The running Foreman holds its log: a tool pointed elsewhere may not write it.
        behind = await trio.to_thread.run_sync(
            partial(keys, "create", "--tenant", "x", "--url", NOWHERE, "--db", str(db_path))
        )
        assert behind.exit_code == 1
        assert "being written by another process" in behind.output


async def test_beyond_loopback_foreman_starts_only_with_a_key_or_auth_off(
    db_path: Path, nursery: trio.Nursery
) -> None:
    exposed = load_settings(db=db_path, backend="sim", listen="0.0.0.0:0")
    with pytest.raises(Unprotected) as refused:
        await run_foreman(exposed, trio.Event())
    assert "foreman keys create" in str(refused.value) and "FOREMAN_AUTH=off" in str(refused.value)
    served = CliRunner().invoke(
        main, ["serve", "--db", str(db_path), "--backend", "sim", "--listen", "0.0.0.0:0"]
    )
    assert served.exit_code == 2 and "beyond loopback" in served.output

    async for foreman in start_foreman(nursery, db_path, listen="0.0.0.0:0", auth="off"):
        async with httpx.AsyncClient(base_url=foreman.url.replace("0.0.0.0", "127.0.0.1")) as http:
            assert (await http.get("/jobs")).status_code == 200  # told so: open

    made = keys("create", "--tenant", "ops", "--admin", "--url", NOWHERE, "--db", str(db_path))
    assert made.exit_code == 0
    async for foreman in start_foreman(nursery, db_path, listen="0.0.0.0:0"):
        async with httpx.AsyncClient(base_url=foreman.url.replace("0.0.0.0", "127.0.0.1")) as http:
            assert (await http.get("/jobs")).status_code == 401
            assert (await http.get("/healthz")).status_code == 200
