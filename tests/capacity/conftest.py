"""Capacity tests book GPUs: bookings are paid when confirmed, so their orgs are funded.

The funds check itself (a booking the balance can't cover leaves nothing) is tested in
tests/billing/test_bookings.py with orgs that have no funds.
"""

from __future__ import annotations

import pytest

from marketplace.accounts.models import Organization
from tests.capacity import factories


@pytest.fixture
def org_a(org_a: Organization) -> Organization:
    return factories.fund(org_a)


@pytest.fixture
def org_b(org_b: Organization) -> Organization:
    return factories.fund(org_b)
