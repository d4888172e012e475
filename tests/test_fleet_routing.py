"""Which host a direct call goes to, and the fleet-wide model lists (no I/O)."""

from __future__ import annotations

import json

from foreman.actors import HostStatus
from foreman.api.fleet import host_for, merged


def host(
    name: str, loaded: str | None = None, *, running: int = 0, has: str = "", up: bool = True
) -> HostStatus:
    installed = frozenset(has.split(",")) if has else None
    return HostStatus(name, loaded, installed, None, running, 0, 0, draining=False, up=up)


def test_a_call_goes_to_a_host_with_its_model_loaded_else_the_least_busy_that_has_it() -> None:
    fleet = [
        host("a", "llama3:latest", running=0, has="llama3:latest,nomic-embed-text:latest"),
        host("b", "nomic-embed-text:latest", running=2, has="nomic-embed-text:latest"),
        host("c", None, running=1, has="nomic-embed-text:latest"),
    ]
    assert host_for(fleet, "nomic-embed-text") == "b"  # loaded there, however busy
    assert host_for(fleet[::2], "nomic-embed-text") == "a"  # the least busy that has it
    assert host_for(fleet, "qwen2") == "a"  # nobody has it: the least busy answers 404
    assert host_for(fleet, None) == "a"
    # A host that is down is passed over, even with the model loaded; alone, it is asked.
    fleet[1] = host("b", "nomic-embed-text:latest", has="nomic-embed-text:latest", up=False)
    assert host_for(fleet, "nomic-embed-text") == "a"  # the least busy that is up
    assert host_for(fleet[1:2], "nomic-embed-text") == "b"


def test_the_fleets_lists_name_each_model_once_and_ps_says_where() -> None:
    answers = {
        "a": json.dumps({"models": [{"name": "llama3:latest", "size": 1}]}).encode(),
        "b": json.dumps({"models": [{"name": "llama3:latest", "size": 2}, {"name": "q"}]}).encode(),
        "c": b"not json",
    }
    assert json.loads(merged(answers, where=False)) == {
        "models": [{"name": "llama3:latest", "size": 1}, {"name": "q"}]
    }
    assert json.loads(merged(answers, where=True))["models"][0]["backends"] == ["a", "b"]
