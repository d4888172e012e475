"""The hash chain that makes the log tamper-evident (ADR-0016).

``hash[n] = SHA-256(hash[n-1] || canonical(row n))``, hex-encoded, starting
from :data:`GENESIS`. The canonical content is every column but ``hash``,
joined by the ASCII unit separator (0x1F), with ``data`` last and verbatim, so
anyone can recompute it with a few lines in any language.
"""

from __future__ import annotations

import hashlib

GENESIS = "0" * 64


def chain_hash(
    previous: str,
    seq: int,
    id: str,
    stream: str,
    version: int,
    type: str,
    schema_version: int,
    data: str,
    recorded_at: str,
) -> str:
    """The hash of a row; parameters follow the table's columns, the content puts data last."""
    content = (
        f"{previous}\x1f{seq}\x1f{id}\x1f{stream}\x1f{version}\x1f{type}"
        f"\x1f{schema_version}\x1f{recorded_at}\x1f{data}"
    )
    return hashlib.sha256(content.encode()).hexdigest()
