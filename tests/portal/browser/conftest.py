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
        # Not a skip: `make test` installs it (`make browser`), so a missing one is a failure.
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's package (`make browser`, i.e. "
            "`apt-get install -y chromium`) or point PARTAGE_CHROMIUM at a Chromium binary."
        )
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


# Runs in the page: what a screen-reader or low-vision user would miss. Form controls without an
# accessible name, missing landmarks, and text under WCAG AA contrast (4.5:1, or 3:1 for large
# text) against the colour actually painted behind it.
A11Y_AUDIT = """() => {
  const problems = [];
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "")
    + (el.className && typeof el.className === "string" ? "." + el.className.split(" ")[0] : "");
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 1 && r.height > 1 && s.visibility !== "hidden" && s.display !== "none";
  };
  if (!document.documentElement.lang) { problems.push("html has no lang"); }
  if (document.querySelectorAll("main").length !== 1) { problems.push("not exactly one <main>"); }
  if (!document.querySelector("header")) { problems.push("no <header> landmark"); }
  if (!document.querySelector("h1")) { problems.push("no <h1>"); }
  document.querySelectorAll("nav").forEach((nav) => {
    if (!nav.getAttribute("aria-label")) { problems.push("nav without aria-label"); }
  });
  document.querySelectorAll("input, select, textarea").forEach((el) => {
    if (["hidden", "submit", "button"].includes(el.type)) { return; }
    const named = el.labels.length || el.getAttribute("aria-label")
      || el.getAttribute("aria-labelledby");
    if (!named) { problems.push("unlabelled control " + describe(el)); }
  });
  document.querySelectorAll("button, a[href]").forEach((el) => {
    if (visible(el) && !(el.textContent.trim() || el.getAttribute("aria-label"))) {
      problems.push("nameless " + describe(el));
    }
  });
  document.querySelectorAll("svg[role=img], img").forEach((el) => {
    if (!(el.getAttribute("aria-label") || el.getAttribute("alt") !== null)) {
      problems.push("image without text alternative " + describe(el));
    }
  });
  const rgba = (text) => {
    const m = text.match(/[\\d.]+/g);
    return m ? m.map(Number).concat(m.length === 3 ? [1] : []).slice(0, 4) : [0, 0, 0, 0];
  };
  const over = (top, under) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + under[i] * (1 - a)).concat([1]);
  };
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const c = rgba(getComputedStyle(node).backgroundColor);
      if (c[3] > 0) { layers.push(c); }
      if (c[3] >= 1) { break; }
    }
    let colour = [255, 255, 255, 1];
    for (let i = layers.length - 1; i >= 0; i--) { colour = over(layers[i], colour); }
    return colour;
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => {
      const s = v / 255;
      return s <= 0.03928 ? s / 12.92 : Math.pow((s + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    const el = text.parentElement;
    if (!text.textContent.trim() || !el || seen.has(el) || !visible(el)) { continue; }
    if (el.closest(".visually-hidden, .skip-link, option, [disabled]")) { continue; }
    seen.add(el);
    const style = getComputedStyle(el);
    const svgText = el instanceof SVGElement;
    const bg = background(svgText ? el.ownerSVGElement : el);
    const fg = over(rgba(svgText ? style.fill : style.color), bg);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)} for "${text.textContent.trim().slice(0, 40)}" in ${describe(el)}`);
    }
  }
  return problems;
}"""


def assert_accessible(browser: Browser) -> None:
    """Audit the page as it is; a page that reloads itself meanwhile (the job page does when its
    job ends) is audited again once the new document has loaded."""
    from playwright.sync_api import Error as PlaywrightError

    for _ in range(3):
        try:
            problems = browser.page.evaluate(A11Y_AUDIT)
            break
        except PlaywrightError as e:
            if "Execution context was destroyed" not in str(e):
                raise
            browser.page.wait_for_load_state()
    else:
        raise AssertionError(f"{browser.page.url} kept navigating during the audit")
    assert not problems, f"{browser.page.url}: {problems}"
