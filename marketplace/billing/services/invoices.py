"""Monthly invoices per organization: draft → finalized → void.

One line per job stream (a job on one pool at one price) with its GPU-seconds, rate and amount,
one line per booking charge (or negative line per cancellation refund) posted in the range, and
one line per inference stream (an org's completions on a base model at one price) with its
tokens, rates per million tokens and exactly the cents its completions charged in the range.
Amounts follow the one rounding rule of marketplace/billing/money.py: each line carries the
difference of the stream's cumulative amounts, each rounded half-even to the cent, so lines are
rounded once and add up exactly.

Usage records are picked up when the invoice is finalized, by range: the invoice bills the org's
records with usage_from <= recorded_at < usage_until (the period's end), where usage_from is how
far the org's finalized invoices reach. Nothing is written to the records. Usage from an
earlier period recorded after that period's invoice (an attempt still running at the cut) lands
on the next invoice, as a correction line. The aggregation runs in the database; only one row per line comes back to Python.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, models, transaction
from django.db.models import Case, F, Max, Q, Sum, When
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.billing.models import (
    BillingAccount,
    BookingCharge,
    Invoice,
    InvoiceLine,
    InvoiceNumberSequence,
    UsageRecord,
)
from marketplace.billing.money import (
    NO_SPLIT,
    ZERO,
    Split,
    exact_cents,
    exact_seconds,
    fee_percent,
    org_vat_rate,
    stream_split,
    vat_treatment,
)
from marketplace.billing.services.ledger import account_lock
from marketplace.billing.services.usage import WAIVED_FAILURES, metering_lock
from marketplace.billing.usage_sources import InferenceTotal, inference_totals
from marketplace.capacity.models import Pool
from marketplace.errors import InvalidInput, InvalidTransition
from marketplace.events.services import event_record
from marketplace.finetuning.models import FineTuningJob, JobStatus


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    if not 1 <= month <= 12 or not 2000 <= year <= 2100:
        raise InvalidInput(f"No such month: {year}-{month:02d}. Use YYYY-MM.", param="period")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def period_parse(text: str, *, param: str = "period") -> tuple[datetime, datetime]:
    """'2026-11' → [2026-11-01, 2026-12-01) in UTC."""
    try:
        year, month = (int(part) for part in text.split("-"))
    except ValueError:
        raise InvalidInput(
            f"{param} must look like 2026-11 (YYYY-MM); got {text!r}.", param=param
        ) from None
    return month_bounds(year, month)


@dataclass
class _Stream:
    job_id: str
    pool_id: int | None
    pool_public_id: str | None
    provider_id: int | None
    price: Decimal
    gpu_seconds: Decimal
    billable: Decimal  # gpu_seconds less what a booking already paid for
    waived: bool
    correction: bool


def _streams(
    records: models.QuerySet[UsageRecord], period_start: datetime
) -> dict[int, list[_Stream]]:
    """Aggregate usage per org and stream, in the database.

    The usage table alone is grouped (a hash aggregate); jobs and pools are not joined to its
    million rows but looked up for the streams.
    """
    before_period = Q(started_at__lt=period_start) | Q(
        started_at__isnull=True, ended_at__lt=period_start
    )
    rows = (
        records.values_list(
            "organization_id", "job_id", "pool_id", "provider_id", "price_per_gpu_hour"
        )
        .annotate(
            total_seconds=Sum("gpu_seconds"),
            billable_seconds=Sum(F("gpu_seconds") - F("covered_gpu_seconds")),
            # Usage from before the period that its own invoice could not bill: a correction.
            correction=Max(Case(When(before_period, then=1), default=0)),
        )
        .order_by()
    )
    waived = set(
        FineTuningJob.objects.filter(
            status=JobStatus.FAILED,
            failure_class__in=WAIVED_FAILURES,
            organization_id__in=records.values("organization_id").distinct().order_by(),
        ).values_list("id", flat=True)
    )
    pools = dict(Pool.objects.values_list("id", "public_id"))
    by_org: dict[int, list[_Stream]] = defaultdict(list)
    for row in rows.iterator(chunk_size=20_000):
        org_id, job_id, pool_id, provider_id, price, gpu_seconds, billable, correction = row
        by_org[org_id].append(
            _Stream(
                job_id=job_id,
                pool_id=pool_id,
                pool_public_id=pools.get(pool_id),
                provider_id=provider_id,
                price=Decimal(price),
                gpu_seconds=exact_seconds(gpu_seconds),
                billable=exact_seconds(billable),
                waived=job_id in waived,
                correction=bool(correction),
            )
        )
    return by_org


StreamKey = tuple[str, int | None, int | None, Decimal]


def _already_invoiced(job_ids: Any) -> dict[StreamKey, tuple[Decimal, Split]]:
    """Per stream: billable GPU-seconds and amounts on finalized invoices so far."""
    rows = (
        InvoiceLine.objects.filter(invoice__status=Invoice.Status.FINALIZED, job_id__in=job_ids)
        .values("job_id", "pool_id", "provider_id", "price_per_gpu_hour")
        .annotate(
            billable=Sum("billable_gpu_seconds"),
            amount=Sum("amount"),
            vat=Sum("vat"),
            fee=Sum("fee"),
            provider_amount=Sum("provider_amount"),
        )
        .order_by()
    )
    return {
        (r["job_id"], r["pool_id"], r["provider_id"], Decimal(r["price_per_gpu_hour"])): (
            exact_seconds(r["billable"]),
            Split(
                net=exact_cents(r["amount"]),
                vat=exact_cents(r["vat"]),
                fee=exact_cents(r["fee"]),
                provider=exact_cents(r["provider_amount"]),
            ),
        )
        for r in rows
    }


@dataclass(slots=True)
class _Line:
    """An invoice line before it is written (a model instance per line costs more than its math)."""

    job_id: str | None
    pool_id: int | None
    provider_id: int | None
    description: str
    gpu_seconds: Decimal
    billable_gpu_seconds: Decimal
    price_per_gpu_hour: Decimal
    amount: Decimal
    vat: Decimal
    fee: Decimal
    provider_amount: Decimal
    is_correction: bool
    invoice_id: int | None = None
    booking_id: int | None = None
    base_model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_per_million_prompt_tokens: Decimal = ZERO
    price_per_million_completion_tokens: Decimal = ZERO

    def model(self) -> InvoiceLine:
        return InvoiceLine(**{column: getattr(self, column) for column in LINE_COLUMNS})


def _line(stream: _Stream, prior: tuple[Decimal, Split], vat_rate: Decimal, fee: Decimal) -> _Line:
    prior_billable, prior_split = prior
    cumulative = ZERO if stream.waived else prior_billable + stream.billable
    delta = (
        stream_split(
            gpu_seconds=cumulative,
            price_per_gpu_hour=stream.price,
            vat_rate=vat_rate,
            fee_percent=fee,
        )
        - prior_split
    )
    pool = stream.pool_public_id or "the local executor"
    description = f"Fine-tuning {stream.job_id} on {pool}"
    if stream.waived:
        description += " (failed through a platform or provider fault: not charged)"
    elif stream.correction:
        description += " (late usage from an earlier period)"
    if stream.billable < stream.gpu_seconds and not stream.waived:
        covered = stream.gpu_seconds - stream.billable
        description += f" ({covered} GPU-s inside a booking: paid by the booking)"
    return _Line(
        job_id=stream.job_id,
        pool_id=stream.pool_id,
        provider_id=stream.provider_id,
        description=description,
        gpu_seconds=stream.gpu_seconds,
        billable_gpu_seconds=cumulative - prior_billable,
        price_per_gpu_hour=stream.price,
        amount=delta.net,
        vat=delta.vat,
        fee=delta.fee,
        provider_amount=delta.provider,
        is_correction=stream.correction or stream.waived,
    )


def _lines_for(
    streams_by_org: dict[int, list[_Stream]], job_ids: Any, orgs: dict[int, Organization]
) -> dict[int, list[_Line]]:
    prior = _already_invoiced(job_ids)
    fee = fee_percent()
    lines: dict[int, list[_Line]] = {}
    for org_id, streams in streams_by_org.items():
        org = orgs[org_id]
        rate = org_vat_rate(org)
        lines[org_id] = [
            _line(
                s,
                prior.get((s.job_id, s.pool_id, s.provider_id, s.price), (ZERO, NO_SPLIT)),
                rate,
                fee,
            )
            for s in sorted(streams, key=lambda s: (s.job_id, s.pool_id or 0, s.price))
        ]
    return lines


def _booking_lines(
    charges: models.QuerySet[BookingCharge], period_start: datetime
) -> dict[int, list[_Line]]:
    """One line per booking charge or refund, with exactly the amounts the ledger moved.

    A booking charge was rounded once, by the line rule, when it was posted (billing/bookings.py);
    the invoice carries it as it is, and a cancellation's refund as a negative line.
    """
    rows = charges.select_related("booking", "pool").order_by("created_at", "id")
    by_org: dict[int, list[_Line]] = defaultdict(list)
    for charge in rows:
        booking = charge.booking
        window = f"[{booking.start:%Y-%m-%d %H:%M}, {booking.end:%Y-%m-%d %H:%M}) UTC"
        if charge.kind == BookingCharge.Kind.CHARGE:
            description = (
                f"GPU booking {booking.public_id}: {booking.gpu_count} GPU(s) on "
                f"{charge.pool.public_id}, {window}"
            )
        else:
            description = f"Refund: GPU booking {booking.public_id} cancelled ({window})"
        late = charge.created_at < period_start
        if late:
            description += " (from an earlier period)"
        by_org[charge.organization_id].append(
            _Line(
                job_id=None,
                booking_id=charge.booking_id,
                pool_id=charge.pool_id,
                provider_id=charge.provider_id,
                description=description,
                gpu_seconds=charge.gpu_seconds,
                billable_gpu_seconds=charge.gpu_seconds,
                price_per_gpu_hour=charge.price_per_gpu_hour,
                amount=charge.net,
                vat=charge.vat,
                fee=charge.fee,
                provider_amount=charge.provider_amount,
                is_correction=late or charge.kind == BookingCharge.Kind.REFUND,
            )
        )
    return by_org


def _inference_lines(totals: list[InferenceTotal]) -> dict[int, list[_Line]]:
    """One line per inference stream (late usage apart), with exactly the cents the ledger moved.

    Each completion posted the difference of its stream's rounded running total before and after
    it (inference/services.py, the money rule's stream rule applied to tokens); a line carries
    the sum of those differences, so inference lines add up to the ledger's charges to the cent.
    Inference is platform revenue (docs/billing.md): no provider, no provider share.
    """
    by_org: dict[int, list[_Line]] = defaultdict(list)
    ordered = sorted(totals, key=lambda t: (t.organization_id, not t.late, t.base_model))
    for total in ordered:
        rates = (
            f"{total.prompt_tokens} prompt tokens at "
            f"{total.price_per_million_prompt_tokens.normalize():f} and "
            f"{total.completion_tokens} completion tokens at "
            f"{total.price_per_million_completion_tokens.normalize():f} EUR per million"
        )
        asked = f"{total.completions} completion(s) on {total.models} fine-tuned model(s)"
        description = f"Inference on {total.base_model}: {asked}, {rates}"
        if total.late:
            description += " (from an earlier period)"
        by_org[total.organization_id].append(
            _Line(
                job_id=None,
                pool_id=None,
                provider_id=None,
                description=description[:300],
                gpu_seconds=ZERO,
                billable_gpu_seconds=ZERO,
                price_per_gpu_hour=ZERO,
                amount=total.net,
                vat=total.vat,
                fee=total.net,
                provider_amount=ZERO,
                is_correction=total.late,
                base_model=total.base_model,
                prompt_tokens=total.prompt_tokens,
                completion_tokens=total.completion_tokens,
                price_per_million_prompt_tokens=total.price_per_million_prompt_tokens,
                price_per_million_completion_tokens=total.price_per_million_completion_tokens,
            )
        )
    return by_org


def _all_lines(
    records: models.QuerySet[UsageRecord],
    charges: models.QuerySet[BookingCharge],
    inference: list[InferenceTotal],
    period_start: datetime,
    orgs: dict[int, Organization],
) -> dict[int, list[_Line]]:
    """Job-stream lines, then booking lines, then inference lines, per org."""
    lines = _lines_for(_streams(records, period_start), records.values("job_id"), orgs)
    for org_id, own in _booking_lines(charges, period_start).items():
        lines.setdefault(org_id, []).extend(own)
    for org_id, own in _inference_lines(
        [total for total in inference if total.organization_id in orgs]
    ).items():
        lines.setdefault(org_id, []).extend(own)
    return lines


def _snapshot(invoice: Invoice, org: Organization, lines: list[_Line]) -> None:
    treatment = vat_treatment(country=org.country, vat_id=org.vat_id)
    invoice.customer_name = org.legal_name or org.name
    invoice.customer_country = org.country
    invoice.customer_vat_id = org.vat_id
    invoice.vat_rate = treatment.rate
    invoice.reverse_charge = treatment.reverse_charge
    invoice.vat_note = treatment.note
    invoice.subtotal = sum((line.amount for line in lines), ZERO)
    invoice.vat = sum((line.vat for line in lines), ZERO)
    invoice.total = invoice.subtotal + invoice.vat


def _new_public_id() -> str:
    return f"inv-{uuid.uuid4().hex[:24]}"


def invoice_numbers_take(year: int, count: int) -> list[str]:
    """Hand out `count` consecutive numbers of the issuer's series for the year.

    The series' row is locked (SELECT ... FOR UPDATE) until the caller's transaction ends, so
    concurrent finalizations queue on it: no number is skipped or given twice, and a rollback
    gives its numbers back.
    """
    issuer = settings.PARTAGE_INVOICE_ISSUER
    InvoiceNumberSequence.objects.get_or_create(issuer=issuer, year=year)
    sequence = InvoiceNumberSequence.objects.select_for_update().get(issuer=issuer, year=year)
    first = sequence.last + 1
    sequence.last += count
    sequence.save(update_fields=["last"])
    return [f"{issuer}-{year}-{n:06d}" for n in range(first, first + count)]


def covered_until(organization_ids: Any = None) -> dict[int, datetime]:
    """Per org: how far (in recorded_at) its finalized invoices have billed its usage."""
    # Invoices only: a credit note issued with an invoice claims nothing of its own.
    finalized = Invoice.objects.filter(status=Invoice.Status.FINALIZED, kind=Invoice.Kind.INVOICE)
    if organization_ids is not None:
        finalized = finalized.filter(organization_id__in=organization_ids)
    rows = finalized.values("organization_id").annotate(until=Max("usage_until")).order_by()
    return {row["organization_id"]: row["until"] for row in rows}


def uninvoiced(
    period_end: datetime,
    covered: dict[int, datetime],
    organization_ids: Any = None,
    *,
    model: type[models.Model] = UsageRecord,
    stamp: str = "recorded_at",
) -> models.QuerySet[Any]:
    """Usage recorded before period_end that no finalized invoice has billed yet.

    Orgs are grouped by how far they are covered (in a monthly run, all alike), so the filter
    stays a handful of range conditions however many orgs there are.
    """
    orgs_by_cut: dict[datetime, list[int]] = defaultdict(list)
    for org_id, until in covered.items():
        orgs_by_cut[until].append(org_id)
    wanted = ~Q(organization_id__in=list(covered))
    for until, org_ids in orgs_by_cut.items():
        wanted |= Q(organization_id__in=org_ids, **{f"{stamp}__gte": until})
    records = model._default_manager.filter(wanted, **{f"{stamp}__lt": period_end})
    if organization_ids is not None:
        records = records.filter(organization_id__in=organization_ids)
    return records


def _booking_charges_uninvoiced(
    period_end: datetime, covered: dict[int, datetime], organization_ids: Any = None
) -> models.QuerySet[BookingCharge]:
    """Booking charges and refunds posted before period_end and not on a finalized invoice:
    claimed by the same range as usage (created_at, stamped under the metering lock)."""
    return uninvoiced(
        period_end, covered, organization_ids, model=BookingCharge, stamp="created_at"
    )


def invoice_draft(
    *, organization: Organization, period_start: datetime, period_end: datetime
) -> Invoice:
    """Create or refresh the org's draft for the period: a preview, no usage is claimed yet."""
    with transaction.atomic():
        invoice = (
            Invoice.objects.select_for_update()
            .filter(organization=organization, period_start=period_start, kind=Invoice.Kind.INVOICE)
            .exclude(status=Invoice.Status.VOID)
            .first()
        )
        if invoice is not None and invoice.status == Invoice.Status.FINALIZED:
            raise InvalidTransition(
                f"Invoice {invoice.number} for this period is finalized; it cannot change. "
                "New usage goes on the next period's invoice.",
                param="period",
            )
        if invoice is None:
            invoice = Invoice(
                organization=organization,
                period_start=period_start,
                period_end=period_end,
                public_id=_new_public_id(),
            )
        covered = covered_until([organization.pk])
        records = uninvoiced(period_end, covered, [organization.pk])
        charges = _booking_charges_uninvoiced(period_end, covered, [organization.pk])
        inference = inference_totals(
            period_start=period_start,
            period_end=period_end,
            covered=covered,
            organization_ids=[organization.pk],
        )
        invoice.usage_from = covered.get(organization.pk)
        invoice.usage_until = period_end
        lines = _all_lines(
            records, charges, inference, period_start, {organization.pk: organization}
        )
        own = lines.get(organization.pk, [])
        _snapshot(invoice, organization, own)
        invoice.save()
        InvoiceLine.objects.filter(invoice=invoice).delete()
        for line in own:
            line.invoice_id = invoice.pk
        _lines_write(own)
    return invoice


def invoices_finalize(
    *, period_start: datetime, period_end: datetime, organizations: list[Organization] | None = None
) -> list[Invoice]:
    """Finalize the period's invoices (of every org with usage, or of the given orgs).

    Claims every usage record recorded before period_end and not yet invoiced, then computes the
    lines from exactly those records. Orgs whose invoice for the period is already finalized are
    skipped: their late records wait for the next period. Idempotent.
    """
    if period_end > timezone.now():
        raise InvalidInput(
            f"The period ending {period_end:%Y-%m-%d} is not over yet; finalize it after it ends.",
            param="period",
        )
    with transaction.atomic():
        metering_lock(exclusive=True)  # every record stamped before the cut is committed
        org_filter = [org.pk for org in organizations] if organizations is not None else None
        covered = covered_until(org_filter)
        pending = uninvoiced(period_end, covered, org_filter)
        org_ids = set(pending.values_list("organization_id", flat=True).distinct().order_by())
        booked = _booking_charges_uninvoiced(period_end, covered, org_filter)
        org_ids |= set(booked.values_list("organization_id", flat=True).distinct().order_by())
        # Under the exclusive metering lock: every completion stamped before the cut is here.
        inference = inference_totals(
            period_start=period_start,
            period_end=period_end,
            covered=covered,
            organization_ids=org_filter,
        )
        org_ids |= {total.organization_id for total in inference}
        live = {
            inv.organization_id: inv
            for inv in Invoice.objects.select_for_update()
            .filter(
                period_start=period_start, organization_id__in=org_ids, kind=Invoice.Kind.INVOICE
            )
            .exclude(status=Invoice.Status.VOID)
        }
        org_ids -= {
            org_id for org_id, inv in live.items() if inv.status == Invoice.Status.FINALIZED
        }
        if not org_ids:
            return []
        drafts = {org_id: inv for org_id, inv in live.items() if org_id in org_ids}
        InvoiceLine.objects.filter(invoice__in=list(drafts.values())).delete()
        _aggregation_tune()
        # The invoices claim their usage by range: no usage record is written.
        claimed = uninvoiced(period_end, covered, sorted(org_ids))
        claimed_charges = _booking_charges_uninvoiced(period_end, covered, sorted(org_ids))
        orgs = Organization.objects.in_bulk(list(org_ids))
        lines = _all_lines(claimed, claimed_charges, inference, period_start, orgs)
        refunds = _refunds_of_finalized(lines)
        count = len(org_ids) + sum(len(notes) for notes in refunds.values())
        numbers = iter(invoice_numbers_take(period_start.year, count))
        now = timezone.now()
        invoices: dict[int, Invoice] = {}
        for org_id in sorted(org_ids):
            invoice = drafts.get(org_id) or Invoice(
                organization_id=org_id,
                period_start=period_start,
                period_end=period_end,
                public_id=_new_public_id(),
            )
            _snapshot(invoice, orgs[org_id], lines.get(org_id, []))
            invoice.status = Invoice.Status.FINALIZED
            invoice.number = next(numbers)
            invoice.finalized_at = now
            invoice.usage_from = covered.get(org_id)
            invoice.usage_until = period_end
            if invoice.pk is not None:
                invoice.save()
            invoices[org_id] = invoice
        notes = [
            (
                _credit_note(
                    orgs[org_id], credited_id, own, period_start, period_end, next(numbers), now
                ),
                own,
            )
            for org_id in sorted(refunds)
            for credited_id, own in sorted(refunds[org_id].items())
        ]
        for note, _ in notes:
            note.usage_from = covered.get(note.organization_id)
        # Created complete, in one statement: no second pass to update them.
        Invoice.objects.bulk_create(
            [inv for inv in invoices.values() if inv.pk is None] + [note for note, _ in notes]
        )
        for org_id, invoice in invoices.items():
            for line in lines.get(org_id, []):
                line.invoice_id = invoice.pk
        for note, own in notes:
            for line in own:
                line.invoice_id = note.pk
        _lines_write(
            [line for own in lines.values() for line in own]
            + [line for _, own in notes for line in own]
        )
        finalized = list(invoices.values()) + [note for note, _ in notes]
        for invoice in finalized:
            _invoice_finalized_record(invoice)
    return finalized


def _refunds_of_finalized(lines: dict[int, list[_Line]]) -> dict[int, dict[int, list[_Line]]]:
    """Take out of `lines` the negative ones that refund what a finalized invoice billed (a
    waived job, a booking cancelled after its charge was invoiced): per org, per invoice they
    credit. A finalized invoice is never edited: these go on a credit note that references it.
    """
    negative = [line for own in lines.values() for line in own if line.amount + line.vat < 0]
    if not negative:
        return {}
    billed = InvoiceLine.objects.filter(
        invoice__status=Invoice.Status.FINALIZED, invoice__kind=Invoice.Kind.INVOICE, amount__gt=0
    )
    by_job = dict(
        billed.filter(job_id__in={line.job_id for line in negative if line.job_id})
        .values("job_id")
        .annotate(last=Max("invoice_id"))
        .values_list("job_id", "last")
        .order_by()
    )
    by_booking = dict(
        billed.filter(booking_id__in={line.booking_id for line in negative if line.booking_id})
        .values("booking_id")
        .annotate(last=Max("invoice_id"))
        .values_list("booking_id", "last")
        .order_by()
    )
    refunds: dict[int, dict[int, list[_Line]]] = {}
    for org_id, own in lines.items():
        kept = []
        for line in own:
            if line.job_id:
                credited = by_job.get(line.job_id)
            else:
                credited = by_booking.get(line.booking_id) if line.booking_id else None
            if line.amount + line.vat < 0 and credited is not None:
                refunds.setdefault(org_id, {}).setdefault(credited, []).append(line)
            else:
                kept.append(line)
        lines[org_id] = kept
    return refunds


def _credit_note(
    org: Organization,
    credited_id: int,
    lines: list[_Line],
    period_start: datetime,
    period_end: datetime,
    number: str,
    now: datetime,
) -> Invoice:
    note = Invoice(
        kind=Invoice.Kind.CREDIT_NOTE,
        credits_id=credited_id,
        organization_id=org.pk,
        period_start=period_start,
        period_end=period_end,
        public_id=_new_public_id(),
        status=Invoice.Status.FINALIZED,
        number=number,
        finalized_at=now,
        usage_until=period_end,
    )
    _snapshot(note, org, lines)
    return note


def _invoice_finalized_record(invoice: Invoice) -> None:
    """Announce a finalized invoice (webhooks, the invoice e-mail), in its transaction."""
    event_record(
        event_type="invoice.finalized",
        organization_id=invoice.organization_id,
        subject_id=invoice.public_id,
        data={
            "kind": invoice.kind,  # invoice, or a credit_note that credits another invoice
            "credits": invoice.credits.public_id if invoice.credits else None,
            "number": invoice.number,
            "total": str(invoice.total),
            "currency": invoice.currency,
            "period_start": int(invoice.period_start.timestamp()),
            "period_end": int(invoice.period_end.timestamp()),
        },
        occurred_at=invoice.finalized_at,
        # Once per invoice, whichever path finalizes it.
        dedup_key=f"invoice.finalized:{invoice.public_id}",
    )


LINE_COLUMNS = (
    "invoice_id",
    "job_id",
    "booking_id",
    "pool_id",
    "provider_id",
    "description",
    "gpu_seconds",
    "billable_gpu_seconds",
    "price_per_gpu_hour",
    "amount",
    "vat",
    "fee",
    "provider_amount",
    "is_correction",
    "base_model",
    "prompt_tokens",
    "completion_tokens",
    "price_per_million_prompt_tokens",
    "price_per_million_completion_tokens",
)


def _lines_write(lines: list[_Line]) -> None:
    """Write invoice lines; on PostgreSQL with COPY (100k lines in about a second)."""
    if connection.vendor != "postgresql":
        InvoiceLine.objects.bulk_create([line.model() for line in lines], batch_size=2000)
        return
    statement = f"COPY billing_invoiceline ({', '.join(LINE_COLUMNS)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
        for line in lines:
            copy.write_row([getattr(line, column) for column in LINE_COLUMNS])


def _aggregation_tune() -> None:
    """Let PostgreSQL aggregate a month of usage in memory for this transaction only."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL work_mem = '128MB'")
            cursor.execute("SET LOCAL jit = off")


def invoice_finalize(*, invoice: Invoice) -> Invoice:
    if invoice.status != Invoice.Status.DRAFT:
        raise InvalidTransition(
            f"Invoice {invoice} is {invoice.status}; only a draft can be finalized."
        )
    invoices_finalize(
        period_start=invoice.period_start,
        period_end=invoice.period_end,
        organizations=[invoice.organization],
    )
    invoice.refresh_from_db()
    if invoice.status == Invoice.Status.DRAFT:
        # No usage at all: finalize the empty invoice as it is.
        with transaction.atomic():
            metering_lock(exclusive=True)
            _snapshot(invoice, invoice.organization, [])
            since = covered_until([invoice.organization_id]).get(invoice.organization_id)
            invoice.usage_from = since
            invoice.usage_until = max(invoice.period_end, since or invoice.period_end)
            invoice.status = Invoice.Status.FINALIZED
            invoice.number = invoice_numbers_take(invoice.period_start.year, 1)[0]
            invoice.finalized_at = timezone.now()
            invoice.save()
            _invoice_finalized_record(invoice)
    return invoice


def invoice_void(*, invoice: Invoice, reason: str) -> Invoice:
    """Void a draft or finalized invoice. Its usage goes back to be invoiced again (next run).

    Only an org's latest finalized invoice can be voided, so that its finalized invoices keep
    tiling its usage; an older one is corrected on the next invoice instead.
    """
    if not reason.strip():
        raise InvalidInput("Say why the invoice is voided (reason).", param="reason")
    if invoice.kind == Invoice.Kind.CREDIT_NOTE:
        raise InvalidTransition(
            f"Credit note {invoice} is issued; it cannot be voided. Correct it on the next "
            "invoice.",
            param="invoice",
        )
    with transaction.atomic():
        metering_lock(exclusive=True)
        notes = Invoice.objects.filter(
            Q(credits=invoice)
            | Q(organization_id=invoice.organization_id, period_start=invoice.period_start),
            kind=Invoice.Kind.CREDIT_NOTE,
            status=Invoice.Status.FINALIZED,
        )
        if invoice.status == Invoice.Status.FINALIZED and notes.exists():
            raise InvalidTransition(
                f"Invoice {invoice} has credit notes ({', '.join(str(n) for n in notes)}) that "
                "refer to it or were issued with it; correct it on the next invoice instead.",
                param="invoice",
            )
        later = Invoice.objects.filter(
            organization_id=invoice.organization_id,
            kind=Invoice.Kind.INVOICE,
            status=Invoice.Status.FINALIZED,
            usage_until__gt=invoice.usage_until or invoice.period_end,
        ).exclude(pk=invoice.pk)
        if invoice.status == Invoice.Status.FINALIZED and later.exists():
            raise InvalidTransition(
                f"Invoice {invoice} is not the organization's latest finalized invoice; void "
                f"{later.order_by('usage_until').first()} first, or correct it on the next invoice.",
                param="invoice",
            )
        updated = Invoice.objects.filter(
            pk=invoice.pk, status__in=[Invoice.Status.DRAFT, Invoice.Status.FINALIZED]
        ).update(status=Invoice.Status.VOID, voided_at=timezone.now(), void_reason=reason[:300])
        if not updated:
            raise InvalidTransition(f"Invoice {invoice} is already void.", param="invoice")
    invoice.refresh_from_db()
    return invoice


def billing_contact_set(*, organization: Organization, email: str) -> BillingAccount:
    """Where the org's invoices and credit notes are e-mailed (empty: to its owners)."""
    email = email.strip()
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise InvalidInput(
                f"billing_email {email!r} is not an e-mail address; e.g. accounts@example.com.",
                param="billing_email",
            ) from None
    with transaction.atomic():
        account = account_lock(organization_id=organization.pk)
        account.billing_email = email
        account.save(update_fields=["billing_email"])
    return account
