"""Headers for the stored bytes Foreman serves (job artifacts, batch files).

Their bytes are whatever a model or a client wrote: a browser may show them but
must never run them. ``nosniff`` keeps it to the media type Foreman names, a
Content-Security-Policy lets nothing load or run, and anything but the inert types
Foreman stores is a download, not a page.
"""

from __future__ import annotations

from urllib.parse import quote

INERT_TYPES = frozenset(
    {"text/plain", "application/json", "application/jsonl", "image/png", "image/jpeg"}
)
"""Media types no browser runs anything in."""
RUNS_NOTHING = "default-src 'none'; sandbox"


def stored_headers(name: str, media_type: str) -> dict[str, str]:
    """The headers for serving stored bytes named ``name`` as ``media_type``."""
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": RUNS_NOTHING}
    if media_type.partition(";")[0].strip().lower() not in INERT_TYPES:
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
    return headers
