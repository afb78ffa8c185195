"""Reads for quotas: an organization's usage against its quota (API and portal), every
organization's for staff, the pending queue per pool, and the audit trail."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.capacity.running import LiveAllocation as CapacityLiveAllocation
from marketplace.finetuning.models import FineTuningJob, JobStatus
from marketplace.quotas.decide import Admit, Decider, PendingJob, Wait, grace, min_run
from marketplace.quotas.models import Allocation, QuotaAuditEntry
from marketplace.quotas.quota_book import QuotaBook
from marketplace.quotas.world import (
    World,
    month_start,
    next_month_start,
    pending_jobs_load,
    world_load,
)


def _usage_rows(
    world: World,
    book: QuotaBook,
    org_id: int,
    queued: dict[str, int],
    include_flavor: str | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for flavor in sorted(world.flavors.values(), key=lambda f: f.slug):
        quota = book.quota(org_id, flavor.id)
        usage = world.usage.get((org_id, flavor.id))
        offered = flavor.id in world.pools_by_flavor
        if (
            usage is None
            and not offered
            and not queued.get(flavor.slug)
            and flavor.slug != include_flavor
        ):
            continue
        used = usage.total if usage else 0
        rows.append(
            {
                "flavor": flavor.slug,
                "flavor_name": flavor.label,
                "guaranteed_gpus": quota.guaranteed_gpus,
                "max_gpus": quota.max_gpus,
                "used_gpus": used,
                "used_guaranteed_gpus": usage.guaranteed if usage else 0,
                "borrowed_gpus": usage.borrowed if usage else 0,
                "booked_gpus": usage.booked if usage else 0,
                "running_jobs": usage.jobs if usage else 0,
                "queued_jobs": queued.get(flavor.slug, 0),
                "max_concurrent_jobs": quota.max_concurrent_jobs,
                "max_job_hours": quota.max_job_hours,
                "monthly_gpu_hours": quota.monthly_gpu_hours,
                "gpu_hours_used": usage.budget_used if usage else Decimal("0"),
                "budget_resets_at": next_month_start(world.now),
                "source": quota.source,
            }
        )
    return rows


def _queued_by_org_flavor(org_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
    jobs = FineTuningJob.objects.filter(status=JobStatus.QUEUED)
    if org_ids is not None:
        jobs = jobs.filter(organization_id__in=org_ids)
    counts: defaultdict[int, dict[str, int]] = defaultdict(dict)
    for org_id, flavor in jobs.values_list("organization_id", "gpu_flavor"):
        counts[org_id][flavor] = counts[org_id].get(flavor, 0) + 1
    return counts


def quota_usage_for_org(
    org: Organization, *, now: datetime | None = None, include_flavor: str | None = None
) -> list[dict[str, Any]]:
    """Per flavor: guaranteed / max / used GPUs, jobs, and the month's GPU-hours vs budget.
    Flavors no pool offers and the organization does not use are left out, but for
    `include_flavor` (the one staff just changed).

    `gpu_hours_used` counts finished attempts' actual GPU-hours plus what running ones reserve
    (GPUs x max job hours), so that a running job can never overrun the budget.
    """
    now = now or timezone.now()
    world = world_load(now=now, pool_ids=None, org_ids=[org.pk])
    book = QuotaBook(org_ids=[org.pk])
    queued = _queued_by_org_flavor([org.pk]).get(org.pk, {})
    return _usage_rows(world, book, org.pk, queued, include_flavor)


def quota_usage_for_orgs(
    org_ids: list[int], *, now: datetime | None = None
) -> dict[int, list[dict[str, Any]]]:
    """`quota_usage_for_org` for several organizations, from one load of the world."""
    if not org_ids:
        return {}
    now = now or timezone.now()
    world = world_load(now=now, pool_ids=None, org_ids=org_ids)
    book = QuotaBook(org_ids=org_ids)
    queued = _queued_by_org_flavor(org_ids)
    return {
        org_id: _usage_rows(world, book, org_id, queued.get(org_id, {}), None) for org_id in org_ids
    }


def quota_usage_all_orgs(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Staff: every organization with a quota, usage or queued work, per flavor."""
    now = now or timezone.now()
    world = world_load(now=now)
    book = QuotaBook()
    queued = _queued_by_org_flavor()
    org_ids = {org_id for org_id, _ in world.usage} | set(book.org_quotas) | set(queued)
    orgs = Organization.objects.in_bulk(list(org_ids))
    result = []
    for org_id in sorted(org_ids, key=lambda i: orgs[i].slug if i in orgs else ""):
        if org_id not in orgs:
            continue
        plan = book.plan_of(org_id)
        result.append(
            {
                "organization_id": orgs[org_id].public_id,
                "organization": orgs[org_id].slug,
                "weight": book.weight(org_id),
                "plan": plan.slug if plan else None,
                "flavors": _usage_rows(world, book, org_id, queued.get(org_id, {})),
            }
        )
    return result


def pending_queue_by_pool(
    *, now: datetime | None = None, per_pool: int = 50
) -> list[dict[str, Any]]:
    """Staff: each pool's capacity and use, and the queued jobs that could run there, in the
    order the next admission pass would consider them (priority, fair share, age)."""
    now = now or timezone.now()
    world = world_load(now=now)
    decider = Decider(world, QuotaBook(), min_run=min_run(), grace=grace())
    orgs = dict(Organization.objects.values_list("pk", "slug"))
    rows: dict[int, dict[str, Any]] = {}
    for pool in sorted(world.pools.values(), key=lambda p: (p.flavor_id, p.public_id)):
        rows[pool.id] = {
            "pool": pool.public_id,
            "name": pool.name,
            "flavor": world.flavors[pool.flavor_id].slug,
            "region": pool.region,
            "country": pool.country,
            "capacity_gpus": pool.capacity,
            "used_gpus": pool.used,
            "booked_unused_gpus": pool.booked_unused(),
            "free_gpus": max(pool.free(), 0),
            "queued_jobs": 0,
            "queue": [],
        }
    for position, job in enumerate(decider.order(pending_jobs_load()), start=1):
        flavor = world.flavor_by_slug.get(job.flavor_slug)
        pools = world.pools_by_flavor.get(flavor.id, []) if flavor else list(world.pools.values())
        residency = world.residency_of(job.org_id, job.residency)
        for pool in pools:
            if not residency.allows(pool.country):
                continue
            row = rows[pool.id]
            row["queued_jobs"] += 1
            if len(row["queue"]) < per_pool:
                row["queue"].append(
                    {
                        "position": position,
                        "job_id": job.id,
                        "organization": orgs.get(job.org_id, ""),
                        "gpus": job.gpus,
                        "priority": job.priority,
                        "created_at": job.created_at,
                        "pending_reason": job.pending_reason,
                        "estimated_start": job.estimated_start,
                    }
                )
    return list(rows.values())


def job_outlook(
    *,
    organization_id: int,
    gpu_flavor: str,
    gpu_count: int,
    residency: dict[str, Any] | None = None,
    priority: int = 0,
    now: datetime | None = None,
) -> Admit | Wait | None:
    """What an admission pass would say now of a job not yet submitted: that it fits, or why
    it waits and from when it may start (a `Wait` with `unfit` set: it could never run as
    asked). The jobs already queued are not counted, so a wait may be longer: the first pass
    after submission, moments later, says. None when no pool is configured (the local
    executor admits every job).

    Queries: the pools, then world_load's for those pools and one organization, and the
    organization's quota."""
    from marketplace.capacity.selectors import placeable_pools

    now = now or timezone.now()
    pool_ids = list(placeable_pools().values_list("pk", flat=True))
    if not pool_ids:
        return None
    # Every pool's live work, not only the organization's: free GPUs count everyone's.
    world = world_load(now=now, pool_ids=pool_ids, org_ids=[organization_id])
    decider = Decider(world, QuotaBook(org_ids=[organization_id]), min_run=min_run(), grace=grace())
    return decider.decide(
        PendingJob(
            id="",
            org_id=organization_id,
            flavor_slug=gpu_flavor,
            gpus=max(gpu_count, 1),
            priority=priority,
            created_at=now,
            residency=residency or {},
        )
    )


def quota_audit(*, organization: Organization | None = None) -> QuerySet[QuotaAuditEntry]:
    entries = QuotaAuditEntry.objects.select_related("changed_by", "organization", "plan", "flavor")
    if organization is not None:
        entries = entries.filter(organization=organization)
    return entries


def month_period(now: datetime | None = None) -> tuple[datetime, datetime]:
    now = now or timezone.now()
    return month_start(now), next_month_start(now)


def live_allocations_on_pools(pool_ids: list[int]) -> list[CapacityLiveAllocation]:
    """The reader capacity counts free GPUs with (marketplace/capacity/running.py)."""
    return [
        CapacityLiveAllocation(*row)
        for row in Allocation.objects.filter(
            pool_id__in=pool_ids, released_at__isnull=True
        ).values_list("job_id", "pool_id", "booking_id", "gpus", "expected_end")
    ]
