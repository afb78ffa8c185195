"""Metering, holds, settlement and the budget check: the hooks the job life cycle calls.

attempt_meter  - an attempt ended: one usage record (UNIQUE key per attempt).
hold_place     - admission: snapshot the pool's price, hold the worst case against the balance.
holds_place    - the same for a batch of admissions, in a fixed number of statements.
job_settle     - the job left the running world: capture what it used, release the rest.
job_over_budget- polled with every trainer event batch: is max_cost reached?
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
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
    cents_up,
    exact_cents,
    exact_seconds,
    fee_percent,
    stream_split,
    usage_cost,
    vat_treatment,
)
from marketplace.billing.services.ledger import (
    Leg,
    NewEntry,
    account_lock,
    accounts_lock,
    balances_available,
    entries_write,
    entry_post,
    job_held,
    jobs_held,
)
from marketplace.errors import InsufficientFunds, InvalidInput
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


def _covered(attempt: JobAttempt, booking: Any, gpus: int, gpu_seconds: Decimal) -> Decimal:
    """GPU-seconds of the attempt inside its booking's window: paid for by the booking."""
    if booking is None or attempt.training_started_at is None:
        return ZERO
    ended = attempt.ended_at or timezone.now()
    begin = max(attempt.training_started_at, booking.start)
    end = min(ended, booking.end)
    if end <= begin:
        return ZERO
    inside = exact_seconds(Decimal(str((end - begin).total_seconds())) * gpus)
    return min(inside, gpu_seconds)


@dataclass(frozen=True)
class HoldRequest:
    """One job to hold funds for at admission (holds_place)."""

    job: FineTuningJob  # with its organization loaded (select_related("organization"))
    pool: Any  # the capacity Pool it was placed on: pk, price_per_gpu_hour, provider_id are read
    max_duration_seconds: int
    booking: Any = None  # the capacity Booking its placement runs on, if any


def _request_check(request: HoldRequest) -> tuple[int, int, Decimal]:
    """InvalidInput unless the request can be priced; returns the pool's terms."""
    duration = request.max_duration_seconds
    if isinstance(duration, bool) or not isinstance(duration, int) or duration <= 0:
        raise InvalidInput(
            f"max_duration_seconds must be a positive integer; got {duration!r}.",
            param="max_duration_seconds",
        )
    return _pool_terms(request.pool)


def _pool_terms(pool: Any) -> tuple[int, int, Decimal]:
    price = getattr(pool, "price_per_gpu_hour", None)
    if pool is None or price is None:
        raise InvalidInput(
            "hold_place needs the capacity Pool the job was placed on.", param="pool"
        )
    return pool.pk, pool.provider_id, Decimal(price)


def _vat_rate(job: FineTuningJob) -> Decimal:
    org = job.organization
    return vat_treatment(country=org.country, vat_id=org.vat_id).rate


def _streams_due(
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


def _streams_charged(job_ids: Collection[str]) -> dict[str, dict[StreamKey, tuple[int, Split]]]:
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


def _uncaptured(jobs: Iterable[tuple[FineTuningJob, Decimal]]) -> dict[str, Decimal]:
    """Per job (with its VAT rate): the customer charge for usage metered but not yet captured."""
    due = _streams_due(jobs)
    charged = _streams_charged(list(due))
    uncaptured = {}
    for job_id, streams in due.items():
        total = ZERO
        for key, (_, owed) in streams.items():
            total += (owed - charged[job_id].get(key, (0, NO_SPLIT))[1]).customer_total
        uncaptured[job_id] = max(total, ZERO)
    return uncaptured


def _booking_of(job: FineTuningJob, pool_id: int, placement: Any = None) -> Any:
    """The booking this admission runs on (capacity's placement says), if any; the hold counts
    it only if it is a confirmed booking of the job's organization (_booking_counts)."""
    from marketplace.capacity.models import Placement

    # A placement written in this transaction with its booking, under the pool lock that
    # bookings also take, is used as it is rather than read again.
    if placement is None or placement.job_id != job.pk or placement.pool_id != pool_id:
        placement = (
            Placement.objects.select_related("booking")
            .filter(job_id=job.pk, pool_id=pool_id)
            .first()
        )
    if placement is None or placement.booking_id is None:
        return None
    return placement.booking


def _booking_counts(job: FineTuningJob, booking: Any) -> bool:
    from marketplace.capacity.models import Booking

    return (
        booking is not None
        and booking.organization_id == job.organization_id
        and booking.status == Booking.Status.CONFIRMED
    )


def _uncovered_seconds(booking: Any, max_duration_seconds: int, now: datetime) -> int:
    """Of the job's longest run from now, the seconds outside its booking's window."""
    if booking is None:
        return max_duration_seconds
    begin = max(now, booking.start)
    end = min(now + timedelta(seconds=max_duration_seconds), booking.end)
    inside = max(0, int((end - begin).total_seconds()))
    return max_duration_seconds - inside


@dataclass
class _Books:
    """What holds_place read under the balance locks; each hold decided updates it."""

    now: datetime
    available: dict[int, Decimal]  # per org: funds not on hold + its credit line
    held: dict[str, Decimal]  # per job
    uncaptured: dict[str, Decimal]  # per job
    pricing: dict[str, JobPricing]  # per job: the locked snapshot rows, then the new ones
    written: dict[str, JobPricing] = field(default_factory=dict)  # to save, per job
    entries: list[NewEntry] = field(default_factory=list)


def _books_read(requests: Sequence[HoldRequest]) -> _Books:
    """Lock the organizations' balances, then read what the holds depend on: a fixed number of
    statements (6 when the balance rows exist) whatever the number of requests."""
    jobs = {request.job.pk: request.job for request in requests}
    org_ids = {job.organization_id for job in jobs.values()}
    accounts = accounts_lock(organization_ids=org_ids)
    funds = balances_available(organization_ids=org_ids)
    # Under the balance locks, so no other hold for these jobs (same orgs) can insert a pricing
    # row between this read and the writes.
    pricing = JobPricing.objects.select_for_update().filter(job_id__in=jobs).order_by("job_id")
    return _Books(
        now=timezone.now(),
        available={org_id: funds[org_id] + accounts[org_id].credit_limit for org_id in org_ids},
        held=jobs_held(job_ids=list(jobs)),
        uncaptured=_uncaptured((job, _vat_rate(job)) for job in jobs.values()),
        pricing={row.job_id: row for row in pricing},
    )


def _hold_decide(request: HoldRequest, books: _Books) -> Decimal | InsufficientFunds:
    """hold_place's rules for one request, against the books (updated when it holds)."""
    job, duration = request.job, request.max_duration_seconds
    pool_id, provider_id, price = _pool_terms(request.pool)
    gpus = max(job.gpu_count, 1)
    booking = request.booking if _booking_counts(job, request.booking) else None
    uncovered = _uncovered_seconds(booking, duration, books.now)
    net_max = cents_up(usage_cost(Decimal(gpus * uncovered), price))
    worst_case = net_max + cents_up(net_max * _vat_rate(job))
    shortfall = worst_case + books.uncaptured[job.pk] - books.held[job.pk]
    available = books.available[job.organization_id]
    if shortfall > 0 and available < shortfall:
        # Nothing written: the pricing row is saved only with the hold.
        return InsufficientFunds(
            f"Job {job.pk} needs €{shortfall} on hold ({gpus} GPU(s) x {duration} s "
            f"at €{price}/GPU-hour, VAT included) but organization {job.organization.slug} has "
            f"€{available} available. Top up the prepaid balance (ask Partage staff or use "
            "POST /v1/billing/topups), or lower gpu_count or the maximum duration.",
            param="balance",
            details={"needed": str(shortfall), "available": str(available), "currency": "EUR"},
        )
    pricing = books.pricing.get(job.pk) or JobPricing(
        job_id=job.pk, organization_id=job.organization_id
    )
    pricing.pool_id, pricing.provider_id, pricing.price_per_gpu_hour = pool_id, provider_id, price
    pricing.max_duration_seconds = duration
    pricing.admitted_at = books.now
    pricing.booking = booking
    books.pricing[job.pk] = books.written[job.pk] = pricing
    if shortfall > 0:
        pricing.hold_seq += 1
        books.available[job.organization_id] -= shortfall
        books.held[job.pk] += shortfall
        books.entries.append(_hold_entry(job, pricing, shortfall, gpus))
    return books.held[job.pk]


def _hold_entry(job: FineTuningJob, pricing: JobPricing, amount: Decimal, gpus: int) -> NewEntry:
    org_id = job.organization_id
    return NewEntry(
        key=f"hold:{job.pk}:{pricing.hold_seq}",
        kind=JournalEntry.Kind.HOLD,
        organization_id=org_id,
        job_id=job.pk,
        memo=f"Hold for {job.pk}: {gpus} GPU(s) x {pricing.max_duration_seconds} s at "
        f"€{pricing.price_per_gpu_hour}/GPU-hour",
        legs=[
            Leg(Account.CUSTOMER_BALANCE, amount, org_id),
            Leg(Account.CUSTOMER_HELD, -amount, org_id),
        ],
    )


def _books_write(books: _Books) -> None:
    """The pricing rows (new, then changed) and the hold entries: at most four statements."""
    new = [row for row in books.written.values() if row.pk is None]
    changed = [row for row in books.written.values() if row.pk is not None]
    JobPricing.objects.bulk_create(new)
    JobPricing.objects.bulk_update(
        changed,
        fields=[
            "pool",
            "provider",
            "price_per_gpu_hour",
            "max_duration_seconds",
            "admitted_at",
            "hold_seq",
            "booking",
        ],
    )
    entries_write(entries=books.entries)


def holds_place(requests: Sequence[HoldRequest]) -> dict[str, Decimal | InsufficientFunds]:
    """hold_place for many jobs at once, in the given order, with a fixed number of statements.

    Call it inside the admission transaction, after the pool and org-quota locks: it locks the
    requests' organizations' balance rows in one statement, in organization order. No savepoint
    of its own: a database error leaves it, and the caller rolls its transaction back.

    Jobs of one organization share its funds: each hold lowers what the next request can use.
    Returns, per job id, the amount now held for the job (Decimal EUR), or the InsufficientFunds
    that hold_place would raise, in which case nothing is written for that job (it should stay
    queued with that message as its pending reason). InvalidInput for a request that cannot be
    priced, before anything is read or written.
    """
    for request in requests:
        _request_check(request)
    if not requests:
        return {}
    with transaction.atomic(savepoint=False):
        books = _books_read(requests)
        outcomes = {request.job.pk: _hold_decide(request, books) for request in requests}
        _books_write(books)
    return outcomes


def hold_place(
    *,
    job: FineTuningJob,
    pool: Any,
    max_duration_seconds: int,
    placement: Any = None,
    savepoint: bool = True,
) -> Decimal:
    """Snapshot the pool's price on the job and hold funds for its worst case; call at admission.

    Call it inside the admission transaction, after the pool and org-quota locks (it locks the
    org's balance row last: pool → org quota → org balance). `pool` is a capacity Pool (its pk,
    `price_per_gpu_hour` and `provider_id` are read). The hold is
    job.gpu_count x max_duration_seconds x price (+ VAT), plus any metered usage not yet captured;
    on a re-admission (requeue, resume) only the shortfall is added. Safe to call twice for the
    same admission.

    Returns the amount now held for the job (Decimal EUR). Raises
    marketplace.errors.InsufficientFunds (nothing written) when the balance does not cover it;
    the caller should leave the job queued with that message as its pending reason.

    `placement`: the capacity Placement that `placement_commit` just returned in this
    transaction (saves reading it again). `savepoint=False`: the caller rolls its whole
    transaction back on any database error (the admission pass), so no savepoint is taken;
    InsufficientFunds is raised after the block either way, so a caller may still catch it.
    """
    request = HoldRequest(job=job, pool=pool, max_duration_seconds=max_duration_seconds)
    pool_id, _, _ = _request_check(request)
    with transaction.atomic(savepoint=savepoint):
        booking = _booking_of(job, pool_id, placement)
        outcome = holds_place([replace(request, booking=booking)])[job.pk]
    if isinstance(outcome, InsufficientFunds):
        raise outcome
    return outcome


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
        account_lock(organization_id=job.organization_id)
        job = FineTuningJob.objects.select_related("organization").get(pk=job.pk)
        due = _streams_due([(job, _vat_rate(job))])[job.pk]
        charged = _streams_charged([job.pk])[job.pk]
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
            inside = (min(now, booking.end) - max(running, booking.start)).total_seconds()
            wall -= Decimal(max(inside, 0))
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
    for key, (billable, due) in _streams_due([(job, _vat_rate(job))])[job.pk].items():
        out[key].update(billable_gpu_seconds=billable, due=due)
    for key, (count, charged) in _streams_charged([job.pk])[job.pk].items():
        out[key].update(charges=count, charged=charged)
    return dict(out)
