"""Real Chromium driven by Playwright against pytest-django's live server.

Chromium comes from the system (Debian's `chromium` package); Playwright never downloads one.
Playwright's sync API runs an event loop in the test thread, so Django's async-safety guard
would refuse the test's own ORM calls: DJANGO_ALLOW_ASYNC_UNSAFE lifts it for these tests only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = os.environ.get("PARTAGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def eager_celery(settings: Any) -> Iterator[Any]:
    from workers.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield app
    app.conf.task_always_eager = False


class Browser:
    """One browser context (cookies) on the live server, collecting console errors."""

    def __init__(self, chromium: Any, base_url: str) -> None:
        self.base_url = base_url
        self.context = chromium.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True, base_url=base_url
        )
        self.context.set_default_timeout(20_000)
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def browser(chromium: Any, live_server: Any) -> Iterator[Browser]:
    opened = Browser(chromium, live_server.url)
    yield opened
    opened.close()
    # A CSP violation (inline script or style) shows up as a console error.
    violations = [e for e in opened.console_errors if "Content Security Policy" in e]
    assert not violations, violations
