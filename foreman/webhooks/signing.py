"""Webhook signatures: Standard Webhooks' headers, and Foreman's own hex HMAC.

A secret ``whsec_<base64>`` keys the HMAC with its decoded bytes, as every
Standard Webhooks library reads it; any other secret with its UTF-8 bytes.
Signing is a few lines of :mod:`hmac` (ADR-0031): the reference package only
verifies, and tests check these headers with it exactly as a receiver would.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key a secret stands for; raises ValueError for a ``whsec_`` secret
    that is not base64, or an empty one."""
    if secret.startswith(SECRET_PREFIX):
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ secret is base64 after the prefix") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the secret is empty")
    return key


def signature_headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """``webhook-signature`` over ``id.timestamp.body`` and ``X-Foreman-Signature``
    over the body alone, both HMAC-SHA256 of the exact bytes sent."""
    signed = b".".join((webhook_id.encode(), str(timestamp).encode(), body))
    standard = base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()
    return {
        "webhook-signature": f"v1,{standard}",
        "X-Foreman-Signature": f"sha256={hmac.digest(key, body, hashlib.sha256).hex()}",
    }
