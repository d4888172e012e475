"""State webhooks: what is sent (payload, signatures), how (the sender), and when
to try again (the retry policy). The dispatcher actor puts them to work."""

from foreman.webhooks.lanes import Lanes
from foreman.webhooks.payload import job_as_of, pending_with_jobs, render
from foreman.webhooks.policy import RetryPolicy, host_allowed
from foreman.webhooks.sender import Attempt, Sender
from foreman.webhooks.signing import secret_key, signature_headers

__all__ = [
    "Attempt",
    "Lanes",
    "RetryPolicy",
    "Sender",
    "host_allowed",
    "job_as_of",
    "pending_with_jobs",
    "render",
    "secret_key",
    "signature_headers",
]
