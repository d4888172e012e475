"""What each tenant used: jobs, tokens and GPU time, folded from the log.

Read from the events themselves, not from the jobs projection, so pruning a job
forgets nothing: each job that ended after a moment counts, with its tenant from
its ``JobSubmitted`` and its figures from its ``JobSucceeded``'s result, as the
backend reported them (``prompt_eval_count``, ``eval_count``, and
``total_duration`` for the time the job held the GPU). The fold runs in SQLite's
JSON functions: a log of a million jobs is read in seconds, without a Python
object per event. A row whose data is not JSON (an unreadable event) counts as a
job with no figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from foreman.events.log import EventLog
from foreman.events.replay import seq_at

_USAGE = """
SELECT
    CASE WHEN json_valid(submitted.data) THEN json_extract(submitted.data, '$.tenant') END
        AS tenant,
    ended.type,
    count(*),
    sum(CASE WHEN json_valid(ended.data)
        THEN coalesce(json_extract(ended.data, '$.result.prompt_eval_count'), 0) ELSE 0 END),
    sum(CASE WHEN json_valid(ended.data)
        THEN coalesce(json_extract(ended.data, '$.result.eval_count'), 0) ELSE 0 END),
    sum(CASE WHEN json_valid(ended.data)
        THEN coalesce(json_extract(ended.data, '$.result.total_duration'), 0) ELSE 0 END)
FROM events AS ended
JOIN events AS submitted ON submitted.stream = ended.stream AND submitted.version = 1
WHERE ended.seq > ? AND ended.type IN ('JobSucceeded', 'JobFailed', 'JobCancelled')
GROUP BY tenant, ended.type
"""
NANOSECONDS = 1e9


@dataclass(slots=True)
class Usage:
    """One tenant's use (``tenant`` None: work submitted when no key was in use)."""

    tenant: str | None
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0

    @property
    def jobs(self) -> int:
        return self.succeeded + self.failed + self.cancelled


_COUNTS = {"JobSucceeded": "succeeded", "JobFailed": "failed", "JobCancelled": "cancelled"}


def usage_since(log: EventLog, since: datetime, tenant: str | None = None) -> list[Usage]:
    """Each tenant's use by the jobs that ended after ``since`` (only ``tenant``'s when
    given), by tenant name (work without a tenant first)."""
    found: dict[str | None, Usage] = {}
    for owner, type_, count, prompt, completion, nanoseconds in log.conn.execute(
        _USAGE, (seq_at(log, since),)
    ):
        name = owner if isinstance(owner, str) else None
        if tenant is not None and name != tenant:
            continue
        usage = found.setdefault(name, Usage(name))
        setattr(usage, _COUNTS[type_], count)
        usage.prompt_tokens += int(prompt)
        usage.completion_tokens += int(completion)
        usage.gpu_seconds += nanoseconds / NANOSECONDS
    return sorted(found.values(), key=lambda usage: (usage.tenant is not None, usage.tenant or ""))
