"""``foreman webhooks …``: act on a running Foreman's state webhooks, over its API."""

from __future__ import annotations

import json

import click

from foreman.cli.remote import call, json_option, url_option


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
@url_option
@json_option
def redeliver(job_id: str, ids: tuple[str, ...], url: str, as_json: bool) -> None:
    """Send JOB_ID's abandoned notifications (or those given by --id) again, with
    fresh tries; each keeps its webhook-id, so receivers can deduplicate."""
    body = {"ids": list(ids)} if ids else None
    answer = call("POST", url, f"/jobs/{job_id}/webhooks/redeliver", ok=202, body=body)
    if as_json:
        click.echo(json.dumps(answer))
        return
    for delivery in answer["redelivered"]:
        click.echo(f"{delivery['id']}  {delivery['type']}  pending again")
