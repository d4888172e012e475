"""``foreman serve`` and ``foreman simulate`` as real processes, for the tests that
signal and kill them (tests/test_serve_process.py).

Each process listens on port 0 and its log names the real address; it counts as
started once that address answers. Its output goes to a file, for the failure
messages (a pipe nobody reads could fill up and block it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_SECONDS = 20.0
"""The longest a process may take to answer once started."""
POLL_SECONDS = 0.02

_SIMULATOR_URL = re.compile(r"Ollama simulator on (http://\S+)")
_FOREMAN_URL = re.compile(r"http: listening on (http://\S+)")


class Process:
    """A started process, its URL, and its output so far (stdout and stderr, in a file)."""

    def __init__(self, popen: subprocess.Popen[bytes], output: Path) -> None:
        self.popen = popen
        self.output = output
        self.url = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def kill(self) -> None:
        """``kill -9``, and reap it; nothing if it has already exited."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def terminate(self, timeout: float) -> int:
        """SIGTERM; its exit status, once it has exited (within ``timeout`` seconds)."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {timeout} s after SIGTERM; its output:\n{self.text()}"
            ) from None

    def wait_until_ready(self, url_in_output: re.Pattern[str], probe: str) -> None:
        """Until the output names the URL and GET ``probe`` there answers 200."""
        deadline = time.monotonic() + START_SECONDS
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    raise AssertionError(
                        f"exited with status {self.popen.returncode} while starting:\n{self.text()}"
                    )
                if not self.url:
                    found = url_in_output.search(self.text())
                    self.url = found[1] if found else ""
                if self.url:
                    try:
                        if http.get(f"{self.url}{probe}").status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                time.sleep(POLL_SECONDS)
        raise AssertionError(f"not ready after {START_SECONDS} s; its output:\n{self.text()}")


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without Foreman's and Ollama's settings, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "OLLAMA_HOST" and not name.startswith("FOREMAN_")
    }
    return env | extra


def spawn(args: list[str], output: Path, env: Mapping[str, str]) -> Process:
    with output.open("ab") as sink:
        popen = subprocess.Popen(
            [sys.executable, "-m", "foreman.cli", *args],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Process(popen, output)


@contextmanager
def running(process: Process) -> Iterator[Process]:
    """The process, killed when the block ends, however it ends (a no-op if it exited)."""
    try:
        yield process
    finally:
        process.kill()


def start_simulator(output: Path, *args: str) -> Process:
    """``foreman simulate`` on a free port, answering ``GET /``."""
    process = spawn(["simulate", "--listen", "127.0.0.1:0", *args], output, clean_environment())
    try:
        process.wait_until_ready(_SIMULATOR_URL, "/")
    except BaseException:
        process.kill()
        raise
    return process


def start_foreman_process(output: Path, backend: str, db: Path, **settings: str) -> Process:
    """``foreman serve`` on a free port, answering ``GET /healthz``; ``settings`` are
    ``FOREMAN_*`` variables, e.g. ``shutdown_grace="1"``."""
    env = clean_environment(
        **{f"FOREMAN_{name.upper()}": value for name, value in settings.items()}
    )
    process = spawn(
        ["serve", "--backend", backend, "--listen", "127.0.0.1:0", "--db", str(db)], output, env
    )
    try:
        process.wait_until_ready(_FOREMAN_URL, "/healthz")
    except BaseException:
        process.kill()
        raise
    return process


def foreman_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a ``foreman`` command to its end, e.g. ``events verify --db X``."""
    return subprocess.run(
        [sys.executable, "-m", "foreman.cli", *args],
        cwd=ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
