"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): it loads
with no console error, shows a job submitted through the API within 2 s and follows it
to succeeded, shows the job's timeline, downloads its artifact and cancels a running
job, and asks for a key once keys are in use.
Screenshots go to ``.work/screenshots/`` (gitignored)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.running import Foreman

CHROMIUM = os.environ.get("FOREMAN_CHROMIUM", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium: apt-get install chromium"),
]

SHOTS = Path(__file__).resolve().parent.parent / ".work" / "screenshots"
CHAT = {
    "kind": "chat",
    "request": {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]},
}


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless; Playwright's sync API, so used on one thread."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def in_browser(browser: Browser, url: str, errors: list[str]) -> Page:
    page = browser.new_page()
    page.on("console", lambda m: _error(m, errors))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{url}/ui")
    return page


def _error(message: ConsoleMessage, errors: list[str]) -> None:
    if message.type == "error":
        errors.append(message.text)


async def test_the_page_follows_a_job_to_succeeded_and_shows_its_timeline(
    foreman: Foreman,
) -> None:
    errors: list[str] = []
    await trio.to_thread.run_sync(follow_a_job, foreman.url, errors)
    assert errors == []


def follow_a_job(url: str, errors: list[str]) -> None:
    with chromium() as browser:
        page = in_browser(browser, url, errors)
        expect(page.locator("#backends tr")).to_have_count(1)
        job = httpx.post(f"{url}/jobs", json=CHAT).json()["job_id"]
        row = page.locator(f'#jobs tr[data-job="{job}"]')
        expect(row).to_be_visible(timeout=2000)
        expect(row).to_contain_text("succeeded", timeout=10_000)
        expect(page.locator("#events")).to_contain_text("JobSucceeded")
        shot(page, "overview")
        page.click(f'#jobs tr[data-job="{job}"] a')
        expect(page.locator("#job-state")).to_have_text("succeeded")
        timeline = page.locator("#timeline li")
        expect(timeline).to_have_count(3)
        for index, kind in enumerate(("JobSubmitted", "JobStarted", "JobSucceeded")):
            expect(timeline.nth(index)).to_contain_text(kind)
        expect(page.locator("#artifacts li")).not_to_have_count(0)
        with page.expect_download() as downloading:
            page.click("#artifacts button >> text=content.txt")
        assert Path(downloading.value.path()).read_text()  # the answer, through the key
        expect(page.locator("#cancel")).to_be_hidden()
        shot(page, "job")
        sim = httpx.get(f"{url}/healthz").json()["backends"][0]["url"]
        httpx.post(f"{sim}/_sim/faults", json={"kind": "stall", "seconds": 30, "times": 1})
        stalled = httpx.post(f"{url}/jobs", json=CHAT).json()["job_id"]
        page.goto(f"{url}/ui#/jobs/{stalled}")
        expect(page.locator("#timeline")).to_contain_text("JobStarted")
        page.click("#cancel")
        expect(page.locator("#job-state")).to_have_text("cancelled")
        expect(page.locator("#cancel")).to_be_hidden()


async def test_with_keys_in_use_the_page_asks_for_one_then_shows_the_data(
    foreman: Foreman, http: httpx.AsyncClient
) -> None:
    made = await http.post("/keys", json={"tenant": "ops", "admin": True})
    errors: list[str] = []
    await trio.to_thread.run_sync(give_a_key, foreman.url, made.json()["key"], errors)
    assert errors and all("401" in error for error in errors), errors  # the refused fetch


def give_a_key(url: str, key: str, errors: list[str]) -> None:
    with chromium() as browser:
        page = in_browser(browser, url, errors)
        expect(page.locator("#keyform")).to_be_visible()
        shot(page, "key-form")
        page.fill("#key", key)
        page.click("#keyform button")
        expect(page.locator("#keyform")).to_be_hidden()
        expect(page.locator("#backends tr")).to_have_count(1)
        expect(page.locator("#status")).to_contain_text("updated")
