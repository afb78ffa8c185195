"""Every main page in real Chromium, on a desktop and on a phone: labelled controls, landmarks,
WCAG AA text contrast as painted, nothing wider than the screen, no CSP violation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from marketplace.capacity.services import booking_create
from marketplace.finetuning.models import FineTuningJob
from tests.capacity import factories
from tests.portal.browser.conftest import Browser, assert_accessible
from tests.portal.browser.test_staff_journey import log_in
from tests.portal.conftest import make_file, make_job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The outermost elements that stick out of the screen (what to fix when a page overflows).
WIDE = """() => [...document.querySelectorAll("body *")]
  .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 0.5)
  .filter((el) => !el.parentElement.closest(".table-wrap")
    && el.parentElement.getBoundingClientRect().right <= window.innerWidth + 0.5)
  .map((el) => el.tagName + "." + el.className + " " + Math.round(el.getBoundingClientRect().right))
  .slice(0, 8)"""
# Menu items outside the screen (a menu that scrolls sideways hides them).
HIDDEN_NAV = """() => [...document.querySelectorAll(".mainnav a")]
  .filter((a) => { const r = a.getBoundingClientRect(); return r.left < 0 || r.right > window.innerWidth + 0.5; })
  .map((a) => a.textContent.trim())"""
# The rendered height of the smallest chart label, in CSS pixels.
SMALLEST_LABEL = """() => Math.min(...[...document.querySelectorAll(".chart .tick")]
  .map((t) => t.getBoundingClientRect().height).filter((h) => h > 0))"""
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def _startup_pages(org: Any, captured: Any) -> list[str]:
    job = make_job(org, captured, suffix="colours")
    FineTuningJob.objects.filter(pk=job.pk).update(
        status="running",
        progress={"step": 12, "total_steps": 40, "train_loss": 2.31, "eta_s": 95},
    )
    adapter = make_file(org, name="adapter.tar.gz")
    done = make_job(org, captured)
    FineTuningJob.objects.filter(pk=done.pk).update(
        status="succeeded", result_file=adapter, manifest={"base_model": {"id": "x"}}
    )
    pool = factories.pool(gpus=8, price="2.50", region="eu-west-paris", name="Paris H100")
    factories.fund(org)  # a booking is paid when it is confirmed
    start = (timezone.now() + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    booking_create(
        organization=org,
        flavor="h100-80g",
        gpu_count=2,
        start=start,
        end=start + timedelta(hours=6),
        pool_id=pool.public_id,
    )
    return [
        "/overview/",
        "/data/",
        f"/data/{job.training_file_id}/",
        "/jobs/",
        "/jobs/new/",
        f"/jobs/{job.id}/",
        f"/jobs/{done.id}/",
        "/offers/",
        "/usage/",
        "/team/",
        "/api-keys/",
    ]


def _check(browser: Browser, urls: list[str]) -> None:
    page = browser.page
    for viewport in (DESKTOP, PHONE):
        page.set_viewport_size(viewport)
        for url in urls:
            page.goto(url)
            page.wait_for_load_state("load")
            assert_accessible(browser)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")

            assert overflow <= 0, f"{url} is {overflow}px wider than {viewport['width']}px: " + str(
                page.evaluate(WIDE)
            )
            assert not page.evaluate(HIDDEN_NAV), f"{url}: menu items off screen"
            smallest = page.evaluate(SMALLEST_LABEL)  # Infinity when the page has no chart
            assert smallest >= 10, f"{url}: chart labels {smallest:.1f}px high at {viewport}"


def test_pages_are_accessible_on_desktop_and_phone(
    chromium: Any,
    live_server: Any,
    alice: Any,
    carol: Any,
    org_a: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    startup_pages = _startup_pages(org_a, django_capture_on_commit_callbacks)
    factories.provider("gpu-cloud-lyon", approved=False)
    visitor = Browser(chromium, live_server.url)
    startup = Browser(chromium, live_server.url)
    staff = Browser(chromium, live_server.url)
    try:
        _check(visitor, ["/", "/login/", "/signup/", "/password-reset/"])
        log_in(startup, "alice", "alice-password-123")
        _check(startup, startup_pages)
        log_in(staff, "carol", "carol-password-123")
        _check(staff, ["/cockpit/"])
    finally:
        for opened in (visitor, startup, staff):
            opened.close()
    for opened in (visitor, startup, staff):
        assert not [e for e in opened.console_errors if "Content Security Policy" in e]
