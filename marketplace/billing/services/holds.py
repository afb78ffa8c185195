"""Holds at admission: snapshot the pool's price on the job and hold its worst case against
the organization's balance (hold_place), or do so for a batch in a fixed number of statements
(holds_place)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace.billing.models import Account, BillingAccount, JobPricing, JournalEntry
from marketplace.billing.money import NO_SPLIT, ZERO, cents_up, org_vat_rate, usage_cost
from marketplace.billing.services.alerts import balance_low_check
from marketplace.billing.services.ledger import (
    Leg,
    NewEntry,
    accounts_lock,
    balances_available,
    entries_write,
    jobs_held,
)
from marketplace.billing.services.usage import booking_overlap, streams_charged, streams_due
from marketplace.errors import InsufficientFunds, InvalidInput
from marketplace.finetuning.models import FineTuningJob


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


def _uncaptured(jobs: Iterable[tuple[FineTuningJob, Decimal]]) -> dict[str, Decimal]:
    """Per job (with its VAT rate): the customer charge for usage metered but not yet captured."""
    due = streams_due(jobs)
    charged = streams_charged(list(due))
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
    inside = booking_overlap(booking, now, now + timedelta(seconds=max_duration_seconds))
    return max_duration_seconds - int(inside.total_seconds())


@dataclass
class _Books:
    """What holds_place read under the balance locks; each hold decided updates it."""

    now: datetime
    available: dict[int, Decimal]  # per org: funds not on hold + its credit line
    held: dict[str, Decimal]  # per job
    uncaptured: dict[str, Decimal]  # per job
    pricing: dict[str, JobPricing]  # per job: the locked snapshot rows, then the new ones
    accounts: dict[int, BillingAccount]  # per org: the locked balance rows
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
        uncaptured=_uncaptured((job, org_vat_rate(job.organization)) for job in jobs.values()),
        pricing={row.job_id: row for row in pricing},
        accounts=accounts,
    )


def _hold_decide(request: HoldRequest, books: _Books) -> Decimal | InsufficientFunds:
    """hold_place's rules for one request, against the books (updated when it holds)."""
    job, duration = request.job, request.max_duration_seconds
    pool_id, provider_id, price = _pool_terms(request.pool)
    gpus = max(job.gpu_count, 1)
    booking = request.booking if _booking_counts(job, request.booking) else None
    uncovered = _uncovered_seconds(booking, duration, books.now)
    net_max = cents_up(usage_cost(Decimal(gpus * uncovered), price))
    worst_case = net_max + cents_up(net_max * org_vat_rate(job.organization))
    shortfall = worst_case + books.uncaptured[job.pk] - books.held[job.pk]
    available = books.available[job.organization_id]
    if shortfall > 0 and available < shortfall:
        # Nothing written: the pricing row is saved only with the hold.
        return InsufficientFunds(
            f"Job {job.pk} needs €{shortfall} on hold ({gpus} GPU(s) x {duration} s "
            f"at €{price}/GPU-hour, VAT included) but organization {job.organization.slug} has "
            f"€{available} available. Top up the prepaid balance (portal: Usage → Add credit, or "
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
        refused = {
            request.job.organization_id
            for request in requests
            if isinstance(outcomes[request.job.pk], InsufficientFunds)
        }
        balance_low_check(
            accounts=books.accounts,
            refused=refused,
            available={
                org_id: funds - books.accounts[org_id].credit_limit
                for org_id, funds in books.available.items()
            },
        )
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
