"""The import contracts (pyproject's ``[tool.importlinter]``, ADR-0034) hold for the
code, and catch a back-edge: a lower layer importing a higher one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each check is a process of its own

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the ``foreman`` package under ``tree``, with the project's
    contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the ``foreman`` package, to add an import to."""
    shutil.copytree(ROOT / "foreman", tmp_path / "foreman", ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


def test_the_code_keeps_every_contract(tree: Path) -> None:
    linted = lint_imports(tree)
    assert linted.returncode == 0, linted.stdout
    assert "0 broken" in linted.stdout


@pytest.mark.parametrize(
    ("module", "back_edge", "broken"),
    [
        ("events/types.py", "import foreman.api", "each imports only from the layers below it"),
        ("webhooks/payload.py", "import foreman.actors", "each imports only from the layers below"),
        ("events/log.py", "import foreman.events.jobs", "only through the Projection interface"),
        ("api/jobs.py", "import foreman.actors.scheduler", "public surface"),
        ("scheduling.py", "import httpx", "know nothing of HTTP"),
        ("api/errors.py", "import foreman.api.jobs", "No cycles"),
        ("api/jobs.py", "import foreman.actors._reply", "private module"),
    ],
)
def test_a_back_edge_breaks_a_contract(
    tree: Path, module: str, back_edge: str, broken: str
) -> None:
    path = tree / "foreman" / module
    path.write_text(path.read_text() + f"\n{back_edge}  # noqa\n")
    linted = lint_imports(tree)
    assert linted.returncode != 0
    report = " ".join(linted.stdout.split())
    assert broken in report.partition("Broken contracts")[2]
