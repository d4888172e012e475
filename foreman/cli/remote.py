"""Commands that act on a running Foreman over its HTTP API: where it answers, and
one call to it."""

from __future__ import annotations

import os
from typing import Any

import click
import httpx

from foreman.config import Address, Settings, env_name, parse_address


def local_url() -> str:
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


url_option = click.option(
    "--url",
    default=local_url,
    show_default="$FOREMAN_LISTEN, else http://127.0.0.1:11435",
    envvar="FOREMAN_URL",
    show_envvar=True,
    help="Where the running Foreman answers.",
)

API_KEY_VARIABLE = "FOREMAN_API_KEY"
"""The key the commands that call a running Foreman send, once keys are in use."""

json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON, for scripts.")


class NoAnswer(click.ClickException):
    """Nothing answers at the URL: Foreman is not running there."""


def call(method: str, url: str, path: str, *, ok: int, body: Any = None) -> Any:
    """``method path`` on the Foreman at ``url``, with the key in ``FOREMAN_API_KEY`` if
    set: its JSON answer, or a clean error (exit 1) with Foreman's message
    (:func:`error_message`) when the status is not ``ok``; :class:`NoAnswer` when
    nothing answers."""
    key = os.environ.get(API_KEY_VARIABLE)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}{path}", json=body, headers=headers, timeout=30
        )
    except httpx.HTTPError as error:
        raise NoAnswer(f"no answer from Foreman at {url} ({error}): is it running?") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text}
    if response.status_code != ok:
        raise click.ClickException(error_message(answer))
    return answer


def error_message(answer: Any) -> str:
    """Foreman's message in an error answer: ``{"error": "..."}`` on its own routes,
    ``{"error": {"message": "...", ...}}`` (OpenAI's shape) on ``/v1``."""
    error = answer.get("error", answer) if isinstance(answer, dict) else answer
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else str(error)
