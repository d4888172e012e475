"""Where Foreman's CPU goes, by part, from a py-spy profile taken with ``--gil -f raw``.

Each sample is charged to the innermost frame that belongs to a part of Foreman or of
its stack (trio's and the standard library's frames are looked through, so a channel
send is charged to whoever sent); samples with no such frame are trio's loop. With ``--calls N``
each part is also given in milliseconds per call, from the samples' rate.

    py-spy record -p PID -d 20 -r 250 --gil -f raw -o /tmp/foreman.txt
    python benchmarks/spy_groups.py /tmp/foreman.txt [--rate 250 --calls 4000]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

PARTS = (
    ("journal and log", r"foreman/events/|foreman/dbthread|foreman/actors/journal"),
    ("backend calls", r"httpcore/|foreman/backend\.py"),
    ("HTTP server", r"hypercorn/|h11/"),
    ("FastAPI, Starlette", r"starlette/|fastapi/"),
    ("Foreman's middleware", r"foreman/api/(guard|auth|browsers)"),
    ("routes", r"foreman/api/"),
    ("scheduler", r"foreman/actors/(scheduler|_reply)|foreman/scheduling"),
    ("worker", r"foreman/actors/worker"),
    ("metrics", r"foreman/actors/metrics|prometheus_client/"),
    ("log lines", r"foreman/logs|logging/"),
    ("webhooks, live", r"foreman/actors/dispatcher|foreman/webhooks/|foreman/api/live"),
    ("pydantic", r"pydantic"),
)
LOOKED_THROUGH = re.compile(
    r"trio/|outcome/|contextlib|threading\.py|queue\.py|foreman/cli/|click/|<frozen runpy>"
)


def part_of(frames: list[str]) -> str:
    """The part of the innermost frame that has one (the standard library's frames and
    trio's are charged to their caller); trio's loop when none has."""
    for frame in reversed(frames):
        if LOOKED_THROUGH.search(frame):
            continue
        for name, pattern in PARTS:
            if re.search(pattern, frame):
                return name
    return "trio's loop"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy record --gil -f raw output")
    parser.add_argument("--rate", type=float, default=250, help="py-spy's -r (samples/s)")
    parser.add_argument("--calls", type=int, help="calls served while it sampled")
    args = parser.parse_args(argv)
    parts: Counter[str] = Counter()
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts[part_of(stack.split(";")[1:])] += int(count)
    total = parts.total()
    for name, samples in parts.most_common():
        per_call = f"  {samples / args.rate / args.calls * 1000:6.3f} ms/call" if args.calls else ""
        print(f"{samples / total:6.1%}  {name:<22}{per_call}")
    print(
        f"{total:,} samples"
        + (f", {total / args.rate / args.calls * 1000:.3f} ms/call" if args.calls else "")
    )


if __name__ == "__main__":
    main(sys.argv[1:])
