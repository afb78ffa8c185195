"""Add credit by card in real Chromium: alice pays on the (fake) Stripe Checkout page, Stripe
delivers `checkout.session.completed` three times, her balance is credited exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from marketplace.billing.models import JournalEntry, Topup
from marketplace.billing.selectors import balance_for_org
from tests.billing.test_topups import stripe_fake_start
from tests.fakes.stripe_api import FakeStripe
from tests.portal.browser.conftest import Browser, assert_accessible
from tests.portal.browser.test_staff_journey import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stripe_fake(settings: Any, live_server: Any) -> Iterator[FakeStripe]:
    fake = stripe_fake_start(settings, live_server.url, deliveries=3)
    yield fake
    fake.stop()


def test_a_card_top_up_is_credited_once_for_three_deliveries(
    browser: Browser, stripe_fake: FakeStripe, alice: Any, org_a: Any
) -> None:
    page = browser.page
    log_in(browser, "alice", "alice-password-123")
    page.goto("/usage/")
    page.get_by_role("link", name="Add credit").click()
    page.wait_for_url("**/billing/credit/")
    assert_accessible(browser)
    page.get_by_label("Amount (EUR)").fill("1e3")
    page.get_by_role("button", name="Continue").click()
    assert "at most two decimals" in page.inner_text("#credit-form")
    assert not Topup.objects.exists()

    page.get_by_label("Amount (EUR)").fill("120.00")
    page.get_by_label("Card (Stripe Checkout)").check()
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"{stripe_fake.base_url}/pay/**")
    assert "120.00 EUR" in page.inner_text("main")
    assert balance_for_org(org_a)["available"] == 0  # nothing until Stripe confirms

    page.get_by_role("button", name="Pay 120.00 EUR").click()
    page.wait_for_url("**/billing/credit/?topup=*")
    assert "€120.00 was added to your balance" in page.inner_text("#topup-returned")
    assert page.inner_text("#balance-available") == "€120.00"
    assert page.inner_text("#topups .topup-status").lower() == "credited"
    browser.shot("add-credit")

    assert [d.status for d in stripe_fake.deliveries] == [200, 200, 200]
    assert len({d.event_id for d in stripe_fake.deliveries}) == 1
    assert balance_for_org(org_a)["available"] == Decimal("120.00")
    assert JournalEntry.objects.filter(kind="topup", organization=org_a).count() == 1
    assert Topup.objects.get().status == "credited"
