"""One line of text for an event: what ``foreman events`` prints and the dashboard shows."""

from __future__ import annotations

import json
from typing import Any

SUMMARY_WIDTH = 80


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 1] + "…"


def summary(type_: str, data: Any) -> str:
    """A short human reading of an event's data; read from the stored JSON rather than
    decoded, so that a damaged or unknown event still shows."""
    if not isinstance(data, dict):
        return _shorten(json.dumps(data))
    get = data.get
    match type_:
        case "JobSubmitted":
            text = f"{get('kind')} on {get('model')}, priority {get('priority')}, {get('origin')}"
            if get("tenant") is not None:
                text += f", tenant {get('tenant')}"
        case "JobStarted":
            text = f"attempt {get('attempt')} on {get('backend')}"
        case "JobAttemptFailed":
            retry = "retryable" if get("retryable") else "not retryable"
            text = f"attempt {get('attempt')} failed: {get('error')} ({retry})"
        case "JobRequeued":
            text = f"requeued: {get('reason')}"
        case "JobSucceeded":
            artifacts = len(get("artifacts") or ())
            with_artifacts = f" with {artifacts} artifacts" if artifacts else ""
            text = f"succeeded{with_artifacts}: {json.dumps(get('result'))}"
        case "JobFailed":
            text = f"failed: {error_text(get('error'), get('status'))}"
        case "JobCancelled":
            text = f"cancelled: {get('reason')}"
        case "JobPruned":
            text = "pruned"
        case "JobQuarantined":
            text = f"quarantined (event {get('event_seq')} cannot be read back): {get('reason')}"
        case _:
            text = json.dumps(data)
    return _shorten(text)


def error_text(message: object, status: object) -> str:
    return f"{message}" if status is None else f"{message} (status {status})"
