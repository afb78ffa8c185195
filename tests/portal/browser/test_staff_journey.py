"""Staff and startup in two real Chromium sessions: carol (staff) changes Org A's quota in the
cockpit; alice's usage page shows the new value. Screenshots of offers, usage and the cockpit."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from marketplace.billing.services import (
    attempt_meter,
    hold_place,
    invoices_finalize,
    topup_record,
)
from marketplace.capacity.services import booking_create
from marketplace.finetuning.models import FineTuningJob, JobAttempt
from marketplace.quotas.models import Allocation, QuotaAuditEntry
from tests.capacity import factories
from tests.portal.browser.conftest import Browser, assert_accessible

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def seed_usage(org: Any, pool: Any) -> None:
    """Real metering and charging of finished jobs through billing's services, the last month's
    invoice finalized, and the quota allocations those jobs held (released)."""
    topup_record(organization=org, amount=Decimal("5000"), reference="seed-transfer")
    today = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    month_start = today.replace(day=1, hour=0)
    for back in [*range(44, 31, -4), *range(12, 0, -2)]:
        moment = today - timedelta(days=back)
        with time_machine.travel(moment, tick=False):
            job = factories.job(org, gpus=2, status="running")
            hold_place(job=job, pool=pool, max_duration_seconds=4 * 3600)
            hours = Decimal(1 + (back * 7) % 5)
            attempt = JobAttempt.objects.create(
                job=job,
                number=1,
                executor="kubernetes",
                name=f"a-{back}",
                training_started_at=moment - timedelta(hours=float(hours)),
                ended_at=moment,
                gpu_seconds=hours * 3600 * 2,
            )
            FineTuningJob.objects.filter(pk=job.pk).update(status="succeeded", finished_at=moment)
            attempt_meter(attempt=attempt)
            Allocation.objects.create(
                job=job,
                attempt_number=1,
                organization=org,
                flavor=pool.flavor,
                pool=pool,
                gpus=2,
                kind=Allocation.Kind.GUARANTEED,
                reserved_gpu_hours=8,
                used_gpu_hours=hours * 2,
                admitted_at=attempt.training_started_at,
                expected_end=moment,
                released_at=moment,
                release_reason="seed",
            )
    last_month = (month_start - timedelta(days=1)).replace(day=1)
    invoices_finalize(period_start=last_month, period_end=month_start, organizations=[org])


def log_in(browser: Browser, username: str, password: str) -> None:
    page = browser.page
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    try:
        page.wait_for_url(lambda url: "/login/" not in url)
    except Exception:
        print(page.url, page.inner_text("main"))
        raise


def gauge_text(browser: Browser, flavor: str) -> str:
    return browser.page.locator(f'.quota-line[data-flavor="{flavor}"]').inner_text()


def test_staff_changes_a_quota_and_the_startup_sees_it(
    chromium: Any, live_server: Any, alice: Any, carol: Any, org_a: Any, org_b: Any
) -> None:
    paris = factories.pool(gpus=8, price="2.50", region="eu-west-paris", name="Paris H100")
    factories.flavor("l40s-48g", model_name="NVIDIA L40S", memory_gb=48)
    factories.pool(
        gpus=4,
        price="1.20",
        region="eu-central-berlin",
        country="DE",
        name="Berlin L40S",
        flavor_slug="l40s-48g",
    )
    factories.pool(
        gpus=16, price="3.10", region="eu-north-helsinki", country="FI", name="Helsinki H100 SXM"
    )
    factories.fund(org_a)  # bookings are paid when confirmed
    factories.fund(org_b)
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=3)
    booking_create(
        organization=org_a,
        flavor="h100-80g",
        gpu_count=4,
        start=start,
        end=start + timedelta(hours=20),
        pool_id=paris.public_id,
    )
    booking_create(
        organization=org_b,
        flavor="h100-80g",
        gpu_count=8,
        start=start + timedelta(days=2),
        end=start + timedelta(days=3),
        pool_id=paris.public_id,
    )
    factories.provider("gpu-cloud-lyon", approved=False)
    seed_usage(org_a, paris)

    startup = Browser(chromium, live_server.url)
    staff = Browser(chromium, live_server.url)
    try:
        log_in(startup, "alice", "alice-password-123")
        startup.page.goto("/usage/")
        before = gauge_text(startup, "h100-80g")
        assert "unlimited" in before

        log_in(staff, "carol", "carol-password-123")
        staff.page.goto("/cockpit/")
        row = staff.page.locator('tr[data-org="org-a"][data-flavor="h100-80g"]')
        row.get_by_role("link", name="Edit").click()
        form = staff.page.locator("#quota-edit")
        assert form.get_by_label("Organization").input_value() == org_a.public_id
        form.get_by_label("Max GPUs").fill("6")
        form.get_by_label("Monthly GPU-hours").fill("200")
        form.get_by_role("button", name="Save quota").click()
        staff.page.get_by_text("Quota of Org A for h100-80g updated.").wait_for()
        audit = staff.page.locator("#quota-audit").inner_text()
        assert "carol set max_gpus of Org A / h100-80g" in audit
        assert QuotaAuditEntry.objects.filter(changed_by=carol, field="max_gpus").exists()
        # A price change lands in the staff change log.
        helsinki = staff.page.locator("tr", has_text="Helsinki H100 SXM")
        helsinki.get_by_label("Price of Helsinki H100 SXM").fill("2.9")
        helsinki.get_by_role("button", name="Save").click()
        staff.page.locator("#staff-changes", has_text="€3.1000 → €2.9000").wait_for()
        assert_accessible(staff)
        staff.shot("staff-cockpit")

        startup.page.reload()
        after = gauge_text(startup, "h100-80g")
        assert "0 / 6" in after and "/ 200.00" in after, after
        assert startup.page.get_by_role("link", name="Download").count() == 1  # last invoice
        spend = startup.page.locator("#spend-total").inner_text()
        assert spend != "€0.00"
        assert_accessible(startup)
        startup.shot("usage")

        startup.page.goto("/offers/")
        startup.page.locator("tr", has_text="Paris H100").get_by_role("link", name="Book").click()
        startup.page.get_by_role("button", name="Get a quote").click()
        startup.page.locator("#booking-quote").wait_for()
        assert_accessible(startup)
        startup.shot("offers-and-booking")
    finally:
        startup.close()
        staff.close()
    for opened in (startup, staff):
        assert not [e for e in opened.console_errors if "Content Security Policy" in e]
