"""No new work while the event log cannot be written (ADR-0041).

A route that appends (a job, a cancel, a file, a batch, a redelivery, a drain)
lists :func:`log_writable` among its dependencies: while the journal reports a
storage fault it answers 503 at once, in the route's dialect (the
``HTTPException`` handler of :mod:`foreman.api.errors`), with the reason and
``Retry-After``, instead of waiting behind the fault. Reads never ask.

The refusal may come before the route has read its body (an upload of 200 MB is
not read to be refused), and a connection whose request body was left unread
cannot carry another request: it says ``Connection: close``, as a 413 does, so
the client does not send the next one down a connection about to close.
"""

from __future__ import annotations

import math

import trio
from fastapi import params
from starlette.exceptions import HTTPException

from foreman.actors import JournalStatus, StorageFault

UNSTORED_RETRY_AFTER = 10
"""Seconds to wait after the disk refused a file: as long as the journal's longest wait."""


def log_writable(status: JournalStatus) -> params.Depends:
    """The dependency of every route that appends."""

    async def writable() -> None:
        fault = status.fault
        if fault is not None:
            headers = {"Retry-After": str(retry_after(fault)), "Connection": "close"}
            raise HTTPException(503, refusal(fault), headers=headers)

    return params.Depends(writable)


def refusal(fault: StorageFault) -> str:
    return f"Foreman takes no new work until its event log can be written again: {fault.reason}"


def retry_after(fault: StorageFault) -> int:
    """Seconds until the journal tries again, at least 1."""
    return max(1, math.ceil(fault.retry_at - trio.current_time()))


def unstored(what: str, error: OSError) -> HTTPException:
    """503 for bytes the disk refused (full, read-only), saying why without the path."""
    headers = {"Retry-After": str(UNSTORED_RETRY_AFTER)}
    return HTTPException(503, f"{what} could not be stored: {error.strerror or error}", headers)
