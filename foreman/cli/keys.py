"""``foreman keys …``: issue, list and revoke API keys; set a tenant's limits.

Through the running Foreman when one answers at ``--url`` (with an admin key in
``FOREMAN_API_KEY`` once keys are in use), so a change holds from its next
request on. When nothing answers, the log at ``--db`` is written directly: how the
first key is made for a Foreman that will listen beyond loopback. A log that a
running Foreman holds is never written behind its back
(:func:`~foreman.events.writer_lock.sole_writer`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.table import Table

from foreman.api.keys import key_view, limits_view
from foreman.cli.events import db_option, opened_log
from foreman.cli.remote import NoAnswer, call, json_option, url_option
from foreman.cli.render import stdout_console
from foreman.events.log import EventLog
from foreman.events.store import open_log
from foreman.events.tenants import Keyring, fold, limits_set, new_key, read_keyring
from foreman.events.types import KeyRevoked, TenantLimitsSet, key_stream, tenant_stream
from foreman.events.writer_lock import LogInUse, sole_writer

T = TypeVar("T")


def _limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        (
            click.option(
                "--weight",
                type=click.FloatRange(0, 1000, min_open=True),
                help="Its share of a model's queue against other tenants' (default 1).",
            ),
            click.option(
                "--max-queued",
                type=click.IntRange(min=1),
                help="Jobs it may have queued at once; then 429.",
            ),
            click.option(
                "--rate",
                type=click.IntRange(min=1),
                metavar="PER_MINUTE",
                help="Submissions it may make per minute; then 429.",
            ),
            click.option(
                "--batch-share",
                type=click.FloatRange(0, 1, min_open=True),
                help="The fraction of the backends' slots its batch lines may hold.",
            ),
        )
    ):
        command = option(command)
    return command


@click.group()
def keys() -> None:
    """API keys and tenants: once a key is issued, every request needs one."""


@keys.command()
@click.option("--tenant", required=True, help="Whose key: its jobs, files and batches.")
@click.option("--admin", is_flag=True, help="Sees and acts on every tenant's work; manages keys.")
@_limit_options
@url_option
@db_option
@json_option
def create(
    tenant: str, admin: bool, url: str, db: Path, as_json: bool, **limits: float | None
) -> None:
    """Issue a key for TENANT and print it, once: it is never shown again. Limits given
    change the tenant's; the others stay."""
    body = {"tenant": tenant, "admin": admin, **limits}
    try:
        made = call("POST", url, "/keys", ok=201, body=body)
    except NoAnswer:
        made = _offline(db, url, lambda log, keyring: _create(log, keyring, tenant, admin, limits))
    if as_json:
        click.echo(json.dumps(made))
        return
    _table([made])
    click.echo(f"\n{made['key']}\n")
    click.echo("This is the only time the key is shown: keep it now.", err=True)


def _create(
    log: EventLog, keyring: Keyring, tenant: str, admin: bool, limits: dict[str, Any]
) -> dict[str, Any]:
    key_id, secret, issued = new_key(tenant, admin=admin)
    committed = log.append(key_stream(key_id), [issued], expected_version=0)
    if any(value is not None for value in limits.values()):
        event = limits_set(keyring.limits_of(tenant), **limits)
        committed += log.append(tenant_stream(tenant), [event])
    keyring = fold(committed, keyring)
    view = key_view(keyring.keys[key_id], keyring.limits_of(tenant))
    return view.model_dump() | {"key": secret}


@keys.command(name="list")
@url_option
@db_option
@json_option
def list_(url: str, db: Path, as_json: bool) -> None:
    """Every key issued, revoked ones too, with its tenant's limits; never the keys."""
    try:
        listed = call("GET", url, "/keys", ok=200)["keys"]
    except NoAnswer:
        click.echo(f"no Foreman answers at {url}: reading the event log {db}", err=True)
        with opened_log(db) as log:
            listed = _views(read_keyring(log))
    if as_json:
        click.echo(json.dumps(listed))
    else:
        _table(listed)


def _views(keyring: Keyring) -> list[dict[str, Any]]:
    return [
        key_view(key, keyring.limits_of(key.tenant)).model_dump() for key in keyring.keys.values()
    ]


@keys.command()
@click.argument("key_id")
@url_option
@db_option
@json_option
def revoke(key_id: str, url: str, db: Path, as_json: bool) -> None:
    """Revoke KEY_ID (``foreman keys list`` shows the ids): refused from then on."""
    try:
        revoked = call("DELETE", url, f"/keys/{key_id}", ok=200)
    except NoAnswer:
        revoked = _offline(db, url, lambda log, keyring: _revoke(log, keyring, key_id))
    if as_json:
        click.echo(json.dumps(revoked))
    else:
        _table([revoked])


def _revoke(log: EventLog, keyring: Keyring, key_id: str) -> dict[str, Any]:
    key = keyring.keys.get(key_id)
    if key is None:
        raise click.ClickException(f"no key {key_id!r}: `foreman keys list` lists them")
    refused = keyring.why_not_revoke(key, exposed=False)  # the next start checks that
    if refused is not None:
        raise click.ClickException(refused)
    keyring = fold(log.append(key_stream(key_id), [KeyRevoked()]), keyring)
    return key_view(keyring.keys[key_id], keyring.limits_of(key.tenant)).model_dump()


@keys.command()
@click.argument("tenant")
@_limit_options
@url_option
@db_option
@json_option
def limits(tenant: str, url: str, db: Path, as_json: bool, **given: float | None) -> None:
    """Set TENANT's share and limits: those not given are lifted (weight: 1)."""
    body = given | {"weight": given["weight"] or 1.0}
    try:
        answer = call("PUT", url, f"/tenants/{tenant}/limits", ok=200, body=body)
    except NoAnswer:
        answer = _offline(db, url, lambda log, keyring: _limits(log, keyring, tenant, body))
    if as_json:
        click.echo(json.dumps(answer))
        return
    shown = ", ".join(f"{name} {value}" for name, value in answer.items() if name != "set_at")
    click.echo(f"{tenant}: {shown}")


def _limits(log: EventLog, keyring: Keyring, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    keyring = fold(log.append(tenant_stream(tenant), [TenantLimitsSet(**body)]), keyring)
    return limits_view(keyring.limits_of(tenant)).model_dump()


def _offline(db: Path, url: str, change: Callable[[EventLog, Keyring], T]) -> T:
    """``change`` on the log at ``db`` itself (nothing answers at ``url``)."""
    click.echo(f"no Foreman answers at {url}: using the event log {db} directly", err=True)
    try:
        with sole_writer(db):
            log = open_log(db)
            try:
                return change(log, read_keyring(log))
            finally:
                log.close()
    except LogInUse as busy:
        raise click.ClickException(f"{busy}; point --url at it") from None


def _table(shown: list[dict[str, Any]]) -> None:
    table = Table("id", "tenant", "admin", "prefix", "issued", "revoked", "limits")
    table.box = box.SIMPLE_HEAD
    table.show_edge = False
    for key in shown:
        limits = key["limits"]
        described = ", ".join(
            f"{name} {limits[name]}"
            for name in ("weight", "max_queued", "rate", "batch_share")
            if limits[name] is not None
        )
        table.add_row(
            key["id"],
            key["tenant"],
            "yes" if key["admin"] else "",
            f"{key['prefix']}…",
            key["issued_at"],
            key["revoked_at"] or "",
            described,
        )
    stdout_console().print(table)
