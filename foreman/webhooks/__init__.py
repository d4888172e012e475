"""State webhooks: what is sent (payload, signatures), how (the sender), where it
may go (the targets, and the network that holds to them), and when to try again
(the retry policy). The dispatcher actor puts them to work."""

from foreman.webhooks.guard import GuardedNetwork
from foreman.webhooks.lanes import Lanes
from foreman.webhooks.payload import job_as_of, pending_with_jobs, render
from foreman.webhooks.policy import RetryPolicy
from foreman.webhooks.sender import Attempt, Sender
from foreman.webhooks.signing import secret_key, signature_headers
from foreman.webhooks.targets import Targets

__all__ = [
    "Attempt",
    "GuardedNetwork",
    "Lanes",
    "RetryPolicy",
    "Sender",
    "Targets",
    "job_as_of",
    "pending_with_jobs",
    "render",
    "secret_key",
    "signature_headers",
]
