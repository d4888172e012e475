"""``foreman webhooks …``: act on a running Foreman's state webhooks, over its API."""

from __future__ import annotations

import json
import os

import click
import httpx

from foreman.config import Address, Settings, env_name, parse_address


def _local_url() -> str:
    """Where a Foreman on this machine answers: by ``FOREMAN_LISTEN`` (a wildcard
    address is reached on loopback), else the default address."""
    listen = os.environ.get(env_name("listen")) or Settings.model_fields["listen"].default
    try:
        host, port = parse_address(listen)
    except ValueError:
        return f"http://{listen}"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{Address(host, port)}"


@click.group()
def webhooks() -> None:
    """Send a job's state notifications again."""


@webhooks.command()
@click.argument("job_id")
@click.option(
    "--id",
    "ids",
    multiple=True,
    help="A notification (webhook-id) to send again; repeat for more. "
    "Default: every abandoned one.",
)
@click.option(
    "--url",
    default=_local_url,
    show_default="$FOREMAN_LISTEN, else http://127.0.0.1:11435",
    envvar="FOREMAN_URL",
    show_envvar=True,
    help="Where the running Foreman answers.",
)
@click.option("--json", "as_json", is_flag=True, help="Output JSON, for scripts.")
def redeliver(job_id: str, ids: tuple[str, ...], url: str, as_json: bool) -> None:
    """Send JOB_ID's abandoned notifications (or those given by --id) again, with
    fresh tries; each keeps its webhook-id, so receivers can deduplicate."""
    body = {"ids": list(ids)} if ids else None
    endpoint = f"{url.rstrip('/')}/jobs/{job_id}/webhooks/redeliver"
    try:
        response = httpx.post(endpoint, json=body, timeout=30)
    except httpx.HTTPError as error:
        message = f"no answer from Foreman at {url} ({error}): is it running?"
        raise click.ClickException(message) from None
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text}
    if response.status_code != 202:
        raise click.ClickException(str(answer.get("error", answer)))
    if as_json:
        click.echo(json.dumps(answer))
        return
    for delivery in answer["redelivered"]:
        click.echo(f"{delivery['id']}  {delivery['type']}  pending again")
