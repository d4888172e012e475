"""The front door over a fleet: which host a direct call goes to, and the fleet-wide
``/api/tags`` and ``/api/ps``.

A call that names a model (``/api/embed``, ``/api/embeddings``, ``/api/show``)
goes to a host that has it loaded, else to the least busy host that may run it,
passing over hosts that are down or drained
(ADR-0013: embeddings go straight to a backend, not through the queue). The
fleet's ``/api/tags`` lists each model once; its ``/api/ps`` lists each loaded
model once, with ``backends``: the hosts it is loaded on.
"""

from __future__ import annotations

import json
from typing import Any

from foreman.actors import HostStatus
from foreman.scheduling import model_name, model_of


def host_for(hosts: list[HostStatus], model: str | None) -> str:
    """The host a direct call for ``model`` goes to (the first host without one), among
    those that take work (up, not drained) while any does."""
    hosts = [h for h in hosts if h.takes_work] or hosts
    if model is None:
        return hosts[0].name
    wanted = model_name(model)
    loaded = [h for h in hosts if h.loaded is not None and model_of(h.loaded) == wanted]
    able = loaded or [h for h in hosts if h.can_run(wanted)] or hosts
    return min(able, key=lambda host: host.running).name


def merged(answers: dict[str, bytes], *, where: bool) -> bytes:
    """One ``{"models": [...]}`` from each host's answer, each model once (the first
    host's entry); ``where``: with the hosts that listed it, as ``backends``."""
    models: dict[str, dict[str, Any]] = {}
    for host, content in answers.items():
        for model in _models(content):
            entry = models.setdefault(str(model.get("name")), model)
            if where:
                entry.setdefault("backends", []).append(host)
    return json.dumps({"models": list(models.values())}).encode()


def _models(content: bytes) -> list[dict[str, Any]]:
    try:
        answer = json.loads(content)
    except ValueError:
        return []
    models = answer.get("models") if isinstance(answer, dict) else None
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
