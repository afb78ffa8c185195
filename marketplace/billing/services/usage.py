"""Metering, settlement and the budget check: the hooks the job life cycle calls.

attempt_meter  - an attempt ended: one usage record (UNIQUE key per attempt).
job_settle     - the job left the running world: capture what it used, release the rest.
job_over_budget- polled with every trainer event batch: is max_cost reached?

The holds placed at admission (hold_place, holds_place) are in holds.py.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from marketplace.billing.models import Account, Charge, JobPricing, JournalEntry, UsageRecord
from marketplace.billing.money import (
    NO_SPLIT,
    ZERO,
    Split,
    exact_cents,
    exact_seconds,
    fee_percent,
    org_vat_rate,
    stream_split,
    usage_cost,
)
from marketplace.billing.services.alerts import balance_low_check
from marketplace.billing.services.ledger import Leg, account_lock, entry_post, job_held
from marketplace.finetuning.models import FailureClass, FineTuningJob, JobAttempt, JobStatus

logger = logging.getLogger("partage.billing")

WAIVED_FAILURES = frozenset({FailureClass.PLATFORM_ERROR, FailureClass.PROVIDER_ERROR})
# Out of the running world: job_settle has been called (or is due) for these.
SETTLED_STATES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED}
)

# A stream: one job on one pool at one price snapshot.
StreamKey = tuple[int | None, int | None, Decimal]


# One PostgreSQL advisory lock between metering (shared) and the invoice cut (exclusive).
METERING_LOCK = 0x50544742  # "PTGB"


def metering_lock(*, exclusive: bool = False) -> None:
    """Hold the metering lock until the end of the current transaction.

    attempt_meter takes it shared before it stamps a record's recorded_at; invoices_finalize
    takes it exclusive before it cuts at a period's end. So the cut waits for every record being
    written, and any record written later is stamped after the cut (it goes on the next
    invoice): no record is ever left between two invoices. SQLite serializes writers anyway.
    """
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)", [METERING_LOCK])


def attempt_meter(*, attempt: JobAttempt) -> UsageRecord:
    """Write the attempt's usage record; a replay returns the existing one and writes nothing."""
    key = f"attempt:{attempt.pk}"
    existing = UsageRecord.objects.filter(key=key).first()
    if existing is not None:
        return existing
    job = attempt.job
    pricing = JobPricing.objects.select_related("booking").filter(job_id=job.pk).first()
    gpus = max(job.gpu_count, 1)
    gpu_seconds = Decimal(attempt.gpu_seconds or 0)
    booking = pricing.booking if pricing else None
    record = UsageRecord(
        key=key,
        organization_id=job.organization_id,
        job_id=job.pk,
        attempt=attempt,
        pool_id=pricing.pool_id if pricing else None,
        provider_id=pricing.provider_id if pricing else None,
        # No snapshot means the job was admitted without a pool (embedded local default): free.
        price_per_gpu_hour=pricing.price_per_gpu_hour if pricing else ZERO,
        gpu_count=gpus,
        gpu_seconds=gpu_seconds,
        covered_gpu_seconds=_covered(attempt, booking, gpus, gpu_seconds),
        booking=booking,
        started_at=attempt.training_started_at,
        ended_at=attempt.ended_at or timezone.now(),
    )
    try:
        with transaction.atomic():
            metering_lock()
            record.recorded_at = timezone.now()
            record.save()
    except IntegrityError:
        return UsageRecord.objects.get(key=key)
    if FineTuningJob.objects.filter(pk=job.pk, status__in=SETTLED_STATES).exists():
        # The job already settled (the adapter arrives before the trainer exits): charge the rest.
        job_settle(job=job)
    return record


def booking_overlap(booking: Any, start: datetime, end: datetime) -> timedelta:
    """How much of [start, end) lies inside the booking's window (zero when none does)."""
    return max(min(end, booking.end) - max(start, booking.start), timedelta(0))


def _covered(attempt: JobAttempt, booking: Any, gpus: int, gpu_seconds: Decimal) -> Decimal:
    """GPU-seconds of the attempt inside its booking's window: paid for by the booking."""
    if booking is None or attempt.training_started_at is None:
        return ZERO
    ended = attempt.ended_at or timezone.now()
    inside = booking_overlap(booking, attempt.training_started_at, ended)
    if not inside:
        return ZERO
    return min(exact_seconds(Decimal(str(inside.total_seconds())) * gpus), gpu_seconds)


def streams_due(
    jobs: Iterable[tuple[FineTuningJob, Decimal]],
) -> dict[str, dict[StreamKey, tuple[Decimal, Split]]]:
    """Per job (with its VAT rate): each stream's cumulative billable GPU-seconds and amounts due
    (zero when waived). One statement."""
    rates = {job.pk: (job, rate) for job, rate in jobs}
    rows = (
        UsageRecord.objects.filter(job_id__in=rates)
        .values("job_id", "pool_id", "provider_id", "price_per_gpu_hour")
        .annotate(billable_seconds=Sum(F("gpu_seconds") - F("covered_gpu_seconds")))
    )
    due: dict[str, dict[StreamKey, tuple[Decimal, Split]]] = {job_id: {} for job_id in rates}
    for row in rows:
        job, vat_rate = rates[row["job_id"]]
        waived = job.status == JobStatus.FAILED and job.failure_class in WAIVED_FAILURES
        key = (row["pool_id"], row["provider_id"], Decimal(row["price_per_gpu_hour"]))
        billable = ZERO if waived else exact_seconds(row["billable_seconds"])
        due[job.pk][key] = (
            billable,
            stream_split(
                gpu_seconds=billable,
                price_per_gpu_hour=key[2],
                vat_rate=vat_rate,
                fee_percent=fee_percent(),
            ),
        )
    return due


def streams_charged(job_ids: Collection[str]) -> dict[str, dict[StreamKey, tuple[int, Split]]]:
    """Per job: each stream's count of charges and the amounts charged so far. One statement."""
    rows = (
        Charge.objects.filter(job_id__in=job_ids)
        .values("job_id", "pool_id", "provider_id", "price_per_gpu_hour")
        .annotate(
            count=Count("id"),
            net=Sum("net"),
            vat=Sum("vat"),
            fee=Sum("fee"),
            provider_amount=Sum("provider_amount"),
        )
    )
    charged: dict[str, dict[StreamKey, tuple[int, Split]]] = {job_id: {} for job_id in job_ids}
    for r in rows:
        key = (r["pool_id"], r["provider_id"], Decimal(r["price_per_gpu_hour"]))
        charged[r["job_id"]][key] = (
            r["count"],
            Split(
                net=exact_cents(r["net"]),
                vat=exact_cents(r["vat"]),
                fee=exact_cents(r["fee"]),
                provider=exact_cents(r["provider_amount"]),
            ),
        )
    return charged


def _charge_post(
    job: FineTuningJob, key: StreamKey, count: int, billable: Decimal, delta: Split, held: Decimal
) -> Decimal:
    """Post one capture (delta > 0) or refund (delta < 0); returns the hold it consumed."""
    pool_id, provider_id, price = key
    total = delta.customer_total
    from_hold = min(total, held) if total > 0 else ZERO
    org_id = job.organization_id
    entry = entry_post(
        key=f"charge:{job.pk}:{pool_id}:{provider_id}:{price:.4f}:{count}",
        kind=JournalEntry.Kind.CAPTURE if total >= 0 else JournalEntry.Kind.REFUND,
        organization_id=org_id,
        job_id=job.pk,
        memo=f"{'Usage' if total >= 0 else 'Refund'} for {job.pk}: {billable} GPU-s at €{price}/GPU-hour",
        legs=[
            Leg(Account.CUSTOMER_HELD, from_hold, org_id),
            Leg(Account.CUSTOMER_BALANCE, total - from_hold, org_id),
            Leg(Account.PROVIDER_PAYABLE, -delta.provider, provider_id),
            Leg(Account.PLATFORM_REVENUE, -delta.fee),
            Leg(Account.VAT_PAYABLE, -delta.vat),
        ],
    )
    Charge.objects.create(
        key=entry.key,
        organization_id=org_id,
        job_id=job.pk,
        pool_id=pool_id,
        provider_id=provider_id,
        price_per_gpu_hour=price,
        billable_gpu_seconds=billable,
        net=delta.net,
        vat=delta.vat,
        fee=delta.fee,
        provider_amount=delta.provider,
        entry=entry,
    )
    return from_hold


def job_settle(*, job: FineTuningJob) -> None:
    """Capture actual usage from the hold and release the rest. Idempotent.

    A job that failed through the platform's or the provider's fault is waived: everything it was
    charged is refunded and the provider's payable reversed.
    """
    with transaction.atomic():
        account = account_lock(organization_id=job.organization_id)
        job = FineTuningJob.objects.select_related("organization").get(pk=job.pk)
        due = streams_due([(job, org_vat_rate(job.organization))])[job.pk]
        charged = streams_charged([job.pk])[job.pk]
        held = job_held(job_id=job.pk)
        for key in sorted(set(due) | set(charged), key=str):
            billable, owed = due.get(key, (ZERO, NO_SPLIT))
            count, prior = charged.get(key, (0, NO_SPLIT))
            delta = owed - prior
            if delta == NO_SPLIT:
                continue
            held -= _charge_post(job, key, count, billable, delta, held)
        still_running = JobAttempt.objects.filter(job_id=job.pk, ended_at__isnull=True).exists()
        if held > 0 and not still_running:
            # With an attempt still open, keep the hold: its usage record settles the job again.
            releases = JournalEntry.objects.filter(job_id=job.pk, kind=JournalEntry.Kind.RELEASE)
            entry_post(
                key=f"release:{job.pk}:{releases.count() + 1}",
                kind=JournalEntry.Kind.RELEASE,
                organization_id=job.organization_id,
                job_id=job.pk,
                memo=f"Release the unused hold of {job.pk} ({job.status})",
                legs=[
                    Leg(Account.CUSTOMER_HELD, held, job.organization_id),
                    Leg(Account.CUSTOMER_BALANCE, -held, job.organization_id),
                ],
            )
        balance_low_check(accounts={job.organization_id: account})
    logger.info("job settled", extra={"job_id": job.pk, "org_id": job.organization_id})


def job_cost_so_far(*, job: FineTuningJob) -> Decimal:
    """Unrounded net cost of the job up to now: ended attempts plus the running one."""
    cost = ZERO
    for gpu_seconds, covered, price in UsageRecord.objects.filter(job_id=job.pk).values_list(
        "gpu_seconds", "covered_gpu_seconds", "price_per_gpu_hour"
    ):
        cost += usage_cost(gpu_seconds - covered, price)
    running = (
        JobAttempt.objects.filter(
            job_id=job.pk, ended_at__isnull=True, training_started_at__isnull=False
        )
        .values_list("training_started_at", flat=True)
        .first()
    )
    if running is not None:
        pricing = JobPricing.objects.select_related("booking").filter(job_id=job.pk).first()
        now = timezone.now()
        wall = Decimal((now - running).total_seconds())
        booking = pricing.booking if pricing else None
        if booking is not None:  # the part inside the booking's window is already paid for
            wall -= Decimal(booking_overlap(booking, running, now).total_seconds())
        seconds = wall * max(job.gpu_count, 1)
        cost += usage_cost(seconds, pricing.price_per_gpu_hour if pricing else ZERO)
    return cost


def job_over_budget(*, job: FineTuningJob) -> bool:
    """True when the job's max_cost (EUR, before VAT) is reached: it should finish gracefully now."""
    if job.max_cost is None:
        return False
    return job_cost_so_far(job=job) >= job.max_cost


def streams_for_job(job: FineTuningJob) -> dict[StreamKey, dict[str, Any]]:
    """Explain a job's money: per stream, what is due and what was charged (for admin and tests)."""
    out: dict[StreamKey, dict[str, Any]] = defaultdict(dict)
    for key, (billable, due) in streams_due([(job, org_vat_rate(job.organization))])[
        job.pk
    ].items():
        out[key].update(billable_gpu_seconds=billable, due=due)
    for key, (count, charged) in streams_charged([job.pk])[job.pk].items():
        out[key].update(charges=count, charged=charged)
    return dict(out)
