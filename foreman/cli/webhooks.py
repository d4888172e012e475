"""``foreman webhooks …``: act on a running Foreman's state webhooks, over its API."""

from __future__ import annotations

import json

import click
import httpx

DEFAULT_URL = "http://127.0.0.1:11435"


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
    default=DEFAULT_URL,
    show_default=True,
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
