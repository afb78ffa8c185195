"""Closing billing periods: every organization's invoice and every provider's statement of the
period are finalized, and the payouts due are batched into a SEPA file.

Celery beat runs periods_close_due every PARTAGE_BILLING_CLOSE_EVERY_SECONDS. It closes each
period that ended at least PARTAGE_BILLING_GRACE_SECONDS ago (late usage is recorded by then),
oldest first, so a beat that was down over a boundary catches up on its next tick. Closing is
idempotent: a closed period has a BillingPeriod row (UNIQUE start), and everything a close does
(invoices, statements, batch, ledger entries) skips what is already done.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.db import IntegrityError, transaction
from django.db.models import Min
from django.utils import timezone

from marketplace.accounts.models import User
from marketplace.billing.models import BillingPeriod, BookingCharge, Charge, UsageRecord
from marketplace.billing.periods import period_boundary_after, period_start_of
from marketplace.billing.services.invoices import invoices_finalize
from marketplace.billing.services.payouts import payout_batch_create
from marketplace.billing.services.statements import statements_close
from marketplace.errors import InvalidInput

log = logging.getLogger("partage.billing")


def _first_activity() -> datetime | None:
    """When money first moved: the oldest usage record or charge."""
    firsts = [
        UsageRecord.objects.aggregate(at=Min("recorded_at"))["at"],
        Charge.objects.aggregate(at=Min("created_at"))["at"],
        BookingCharge.objects.aggregate(at=Min("created_at"))["at"],
    ]
    found = [at for at in firsts if at is not None]
    return min(found) if found else None


def next_period_start() -> datetime | None:
    """Where the next period to close starts: the end of the last closed one, else the start
    of the regular period of the first activity (None: nothing ever happened)."""
    last = BillingPeriod.objects.order_by("-start").first()
    if last is not None:
        return last.end
    first = _first_activity()
    return period_start_of(first) if first is not None else None


def periods_due(*, now: datetime) -> list[tuple[datetime, datetime]]:
    """The periods that ended at least the grace period before `now` and are not closed, in order."""
    start = next_period_start()
    grace = timedelta(seconds=settings.PARTAGE_BILLING_GRACE_SECONDS)
    due: list[tuple[datetime, datetime]] = []
    while start is not None:
        end = period_boundary_after(start)
        if end + grace > now:
            break
        due.append((start, end))
        start = end
    return due


def period_close(
    *, start: datetime, end: datetime, closed_by: str, early: bool = False
) -> BillingPeriod:
    """Finalize the period's invoices and statements, batch its payouts, record it closed.

    One transaction: a failure leaves the period open for the next tick. Closing a closed
    period returns its row and changes nothing.
    """
    closed = BillingPeriod.objects.filter(start=start).first()
    if closed is not None:
        return closed
    try:
        with transaction.atomic():
            invoices = invoices_finalize(period_start=start, period_end=end)
            statements = statements_close(period_start=start, period_end=end)
            batch = payout_batch_create(period_end=end)
            period = BillingPeriod.objects.create(
                start=start,
                end=end,
                closed_by=closed_by[:150],
                early=early,
                invoices=len(invoices),
                statements=len(statements),
            )
    except IntegrityError:
        # Another closer committed the same period first: its close stands, ours rolled back.
        return BillingPeriod.objects.get(start=start)
    log.info(
        "billing period closed",
        extra={
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
            "invoices": len(invoices),
            "statements": len(statements),
            "payout_batch": batch.public_id if batch else None,
            "closed_by": closed_by,
        },
    )
    return period


def periods_close_due(*, now: datetime | None = None) -> list[BillingPeriod]:
    """Close every period that is due, oldest first (the beat task's service)."""
    now = now or timezone.now()
    return [
        period_close(start=start, end=end, closed_by="scheduler")
        for start, end in periods_due(now=now)
    ]


def period_close_early(*, actor: User, reason: str) -> BillingPeriod:
    """Staff close the current period now (a provider leaving must be paid what it is owed).

    Ended periods still in their grace are closed first, so periods keep tiling time; the
    next period then runs from now to the next regular boundary.
    """
    if not reason.strip():
        raise InvalidInput("Say why the period is closed early (reason).", param="reason")
    now = timezone.now()
    who = actor.get_username()
    start = next_period_start() or period_start_of(now)
    while (end := period_boundary_after(start)) <= now:
        period_close(start=start, end=end, closed_by=who)
        start = end
    if start >= now:
        raise InvalidInput("The current period has just started; there is nothing to close.")
    period = period_close(start=start, end=now, closed_by=who, early=True)
    LogEntry.objects.log_actions(
        user_id=actor.pk,
        queryset=BillingPeriod.objects.filter(pk=period.pk),
        action_flag=CHANGE,
        change_message=f"Closed the billing period {period} early: {reason.strip()[:200]}",
        single_object=True,
    )
    return period
