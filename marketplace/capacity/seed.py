"""Idempotent demo supply for the embedded default: something to book from the first minute.

`make run` has no GPU provider behind it. Rather than an empty marketplace, it seeds one demo
provider offering this machine, honestly named: a flavor `local-cpu` ("this machine's CPU, no
GPU") with one slot, run by the local executor. Offers, bookings, quotas, usage, invoices and
the provider's statement then all work as they do with real pools. Its price is a token one,
so that the money loop has figures to show.
"""

from __future__ import annotations

import os
from decimal import Decimal

from marketplace.accounts.models import Organization, User
from marketplace.accounts.services import organization_create
from marketplace.capacity.models import (
    ApprovalStatus,
    ClusterConnection,
    GpuFlavor,
    Pool,
)
from marketplace.capacity.services import supply

DEMO_PROVIDER_SLUG = "demo-provider"
LOCAL_FLAVOR_SLUG = "local-cpu"
LOCAL_CLUSTER_NAME = "this-machine"
DEMO_PRICE_PER_HOUR = Decimal("0.20")


def _memory_gb() -> int:
    try:
        return max(1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**30)
    except (ValueError, OSError, AttributeError):
        return 1


def demo_supply_seed(*, staff: User) -> Pool:
    """The demo provider, its local flavor and its approved pool (created once, then reused).
    `staff` is who approves them, as a member of staff would in the cockpit."""
    existing = Pool.objects.filter(
        provider__slug=DEMO_PROVIDER_SLUG, flavor__slug=LOCAL_FLAVOR_SLUG
    ).first()
    if existing is not None and existing.status == Pool.Status.ACTIVE:
        return existing
    flavor, _ = GpuFlavor.objects.get_or_create(
        slug=LOCAL_FLAVOR_SLUG,
        defaults={
            "model_name": f"This machine's CPU ({os.cpu_count() or 1} cores, no GPU)",
            "memory_gb": _memory_gb(),
            "gpu_resource_name": "cpu",
        },
    )
    provider = Organization.objects.filter(slug=DEMO_PROVIDER_SLUG).first()
    if provider is None:
        provider = organization_create(
            name="Demo Provider (this machine)",
            slug=DEMO_PROVIDER_SLUG,
            kind=Organization.Kind.PROVIDER,
            legal_name="Demo Provider (embedded default, not a company)",
            country="FR",
            vat_id="FR-DEMO",
        )
    profile = supply.provider_profile_upsert(
        organization=provider, payout_reference="demo: no payouts leave this machine"
    )
    if profile.approval_status != ApprovalStatus.APPROVED:
        supply.provider_approve(organization=provider, by=staff)
    cluster = ClusterConnection.objects.filter(name=LOCAL_CLUSTER_NAME).first()
    if cluster is None:
        cluster = supply.cluster_connection_create(
            name=LOCAL_CLUSTER_NAME, kind=ClusterConnection.Kind.LOCAL, provider=provider
        )
    pool = existing or supply.pool_create(
        provider=provider,
        flavor=flavor.slug,
        country="FR",
        name="This machine",
        gpu_count=1,
        region="local",
        price_per_gpu_hour=DEMO_PRICE_PER_HOUR,
    )
    return supply.pool_approve(pool=pool, by=staff, cluster=cluster)
