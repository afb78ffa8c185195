"""Writes for capacity: providers, pools, maintenance, bookings, residency, placements.

No pool is ever overbooked (REFERENCE §5 invariant 3): every write that adds load to a pool —
a booking, a maintenance window, a smaller GPU count — locks the pool row with
`select_for_update`, computes the peak of overlapping bookings and maintenance, and writes only
if the peak plus the new load fits. The pool lock is the first lock taken (pool → org quota →
org balance).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace.accounts.models import ApiKey, Organization, User
from marketplace.capacity import policies, selectors
from marketplace.capacity.models import (
    ApprovalStatus,
    Booking,
    ClusterConnection,
    GpuFlavor,
    MaintenanceWindow,
    Placement,
    Pool,
    ProviderProfile,
    ResidencyPolicy,
)
from marketplace.capacity.placement import PlacementDecision
from marketplace.capacity.timeline import peak
from marketplace.errors import Conflict, Forbidden, InvalidInput, InvalidTransition, NotFound
from marketplace.finetuning.models import FineTuningJob

MAX_BOOKING = timedelta(days=92)
START_GRACE = timedelta(minutes=5)  # a "start now" request arrives a little after now


class CapacityUnavailable(Conflict):
    """Nothing fits; `details` names the earliest window that would."""

    code = "capacity_unavailable"


def _lock_pool(pk: int) -> Pool:
    """The pool lock, first in the order pool → org quota → org balance.

    NO KEY UPDATE: serializes every check-then-write on the pool, yet does not block rows that
    merely reference the pool by foreign key (their KEY SHARE lock), such as a new booking or
    billing row written while another lock is held.
    """
    return Pool.objects.select_for_update(no_key=True).get(pk=pk)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


# ---------------------------------------------------------------- providers


def provider_profile_upsert(
    *, organization: Organization, payout_reference: str = ""
) -> ProviderProfile:
    if organization.kind != Organization.Kind.PROVIDER:
        raise Forbidden(
            f"Organization {organization.slug} is a {organization.kind}; only provider "
            "organizations have a provider profile.",
            param="organization",
        )
    profile, _ = ProviderProfile.objects.update_or_create(
        organization=organization, defaults={"payout_reference": payout_reference.strip()}
    )
    return profile


def provider_approve(*, organization: Organization, by: User) -> ProviderProfile:
    missing = [
        name
        for name, value in (
            ("legal name", organization.legal_name),
            ("country", organization.country),
            ("VAT id", organization.vat_id),
        )
        if not value
    ]
    profile = ProviderProfile.objects.filter(organization=organization).first()
    if profile is None or not profile.payout_reference:
        missing.append("payout reference")
    if missing:
        raise InvalidInput(
            f"Provider {organization.slug} cannot be approved yet: missing {', '.join(missing)}. "
            "Fill them in first.",
            param="organization",
        )
    assert profile is not None
    ProviderProfile.objects.filter(pk=profile.pk).update(
        approval_status=ApprovalStatus.APPROVED, approved_by=by, approved_at=timezone.now()
    )
    profile.refresh_from_db()
    return profile


def provider_reject(*, organization: Organization, by: User, note: str = "") -> ProviderProfile:
    profile, _ = ProviderProfile.objects.get_or_create(organization=organization)
    ProviderProfile.objects.filter(pk=profile.pk).update(
        approval_status=ApprovalStatus.REJECTED,
        approved_by=None,
        approved_at=None,
        review_note=note,
    )
    profile.refresh_from_db()
    return profile


# ---------------------------------------------------------------- pools


POOL_EDITABLE = frozenset(
    {
        "name",
        "gpu_count",
        "region",
        "price_per_gpu_hour",
        "certifications",
        "node_selector",
        "tolerations",
    }
)


def _price(value: Any) -> Decimal:
    try:
        price = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidInput(
            f"price_per_gpu_hour {value!r} is not a number; send a decimal string such as '2.10'.",
            param="price_per_gpu_hour",
        ) from None
    if not price.is_finite() or price < 0 or price >= Decimal("1000000"):
        raise InvalidInput(
            "price_per_gpu_hour must be an amount in EUR from 0 to 999999.9999.",
            param="price_per_gpu_hour",
        )
    if price != price.quantize(Decimal("0.0001")):
        raise InvalidInput(
            "price_per_gpu_hour has at most 4 decimal places.", param="price_per_gpu_hour"
        )
    return price.quantize(Decimal("0.0001"))


def _pool_fields(changes: dict[str, Any]) -> dict[str, Any]:
    """Validate the editable pool fields present in `changes`."""
    clean: dict[str, Any] = {}
    if "name" in changes:
        name = str(changes["name"] or "").strip()
        if not name or len(name) > 100:
            raise InvalidInput("name must be 1 to 100 characters.", param="name")
        clean["name"] = name
    if "gpu_count" in changes:
        count = changes["gpu_count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
            raise InvalidInput("gpu_count must be an integer from 1 to 100000.", param="gpu_count")
        clean["gpu_count"] = count
    if "region" in changes:
        region = str(changes["region"] or "").strip()
        if not region or len(region) > 60:
            raise InvalidInput(
                "region must be 1 to 60 characters, e.g. 'eu-west-paris'.", param="region"
            )
        clean["region"] = region
    if "price_per_gpu_hour" in changes:
        clean["price_per_gpu_hour"] = _price(changes["price_per_gpu_hour"])
    if "certifications" in changes:
        certs = changes["certifications"] or []
        if not isinstance(certs, list) or not all(isinstance(c, str) and c for c in certs):
            raise InvalidInput(
                "certifications must be a list of names, e.g. ['iso27001', 'hds'].",
                param="certifications",
            )
        clean["certifications"] = sorted({c.strip().lower() for c in certs})
    if "node_selector" in changes:
        selector = changes["node_selector"] or {}
        if not isinstance(selector, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
        ):
            raise InvalidInput(
                "node_selector must map label names to string values.", param="node_selector"
            )
        clean["node_selector"] = selector
    if "tolerations" in changes:
        tolerations = changes["tolerations"] or []
        if not isinstance(tolerations, list) or not all(
            isinstance(t, dict) and isinstance(t.get("key", ""), str) for t in tolerations
        ):
            raise InvalidInput(
                "tolerations must be a list of Kubernetes tolerations, e.g. "
                "[{'key': 'nvidia.com/gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}].",
                param="tolerations",
            )
        clean["tolerations"] = tolerations
    return clean


def _provider_checked(organization: Organization) -> None:
    if organization.kind != Organization.Kind.PROVIDER:
        raise Forbidden(
            "Only provider organizations can offer pools; this key belongs to a "
            f"{organization.kind}. Ask Partage staff to register you as a provider.",
        )


def pool_create(*, provider: Organization, flavor: str, country: str, **fields: Any) -> Pool:
    """A provider offers a pool; it waits for staff approval before it is placeable."""
    _provider_checked(provider)
    unknown = set(fields) - POOL_EDITABLE
    if unknown:
        raise InvalidInput(f"Unknown pool field(s): {', '.join(sorted(unknown))}.")
    missing = {"name", "gpu_count", "region", "price_per_gpu_hour"} - set(fields)
    if missing:
        raise InvalidInput(
            f"Missing pool field(s): {', '.join(sorted(missing))}.", param=sorted(missing)[0]
        )
    gpu_flavor = GpuFlavor.objects.filter(slug=flavor).first()
    if gpu_flavor is None:
        known = ", ".join(GpuFlavor.objects.values_list("slug", flat=True)) or "none yet"
        raise InvalidInput(
            f"Unknown GPU flavor {flavor!r}; known flavors: {known}.", param="flavor"
        )
    clean = _pool_fields(fields)
    with transaction.atomic():
        ProviderProfile.objects.get_or_create(organization=provider)
        return Pool.objects.create(
            public_id=_new_id("pool"),
            provider=provider,
            flavor=gpu_flavor,
            country=policies.country_code(country),
            status=Pool.Status.PENDING,
            **clean,
        )


def pool_update(*, provider: Organization, pool_id: str, changes: dict[str, Any]) -> Pool:
    _provider_checked(provider)
    fixed = set(changes) & {"flavor", "country", "provider", "status", "cluster"}
    if fixed:
        raise InvalidInput(
            f"{', '.join(sorted(fixed))} cannot be changed on a pool; offer a new pool instead "
            "(status and cluster are set by Partage staff).",
            param=sorted(fixed)[0],
        )
    unknown = set(changes) - POOL_EDITABLE
    if unknown:
        raise InvalidInput(f"Unknown pool field(s): {', '.join(sorted(unknown))}.")
    clean = _pool_fields(changes)
    with transaction.atomic():
        pool = (
            Pool.objects.select_for_update(no_key=True)
            .filter(provider=provider, public_id=pool_id)
            .first()
        )
        if pool is None:
            raise NotFound(f"No pool {pool_id!r} of yours.", param="pool_id")
        new_count = clean.get("gpu_count", pool.gpu_count)
        if new_count < pool.gpu_count:
            now = timezone.now()
            reserved = selectors.pool_peak_reserved(pool, now, now + selectors.SEARCH_HORIZON)
            if reserved > new_count:
                raise Conflict(
                    f"Pool {pool_id} has up to {reserved} GPUs booked or in maintenance ahead; "
                    f"it cannot shrink to {new_count}. Wait for those bookings to end.",
                    param="gpu_count",
                )
        for name, value in clean.items():
            setattr(pool, name, value)
        pool.save()
    return pool


def pool_approve(*, pool: Pool, by: User, cluster: ClusterConnection | None = None) -> Pool:
    with transaction.atomic():
        locked = _lock_pool(pool.pk)
        if locked.status not in {
            Pool.Status.PENDING,
            Pool.Status.REJECTED,
            Pool.Status.MAINTENANCE,
        }:
            raise InvalidTransition(
                f"Pool {locked.public_id} is {locked.status}; it cannot be approved."
            )
        profile = ProviderProfile.objects.filter(organization=locked.provider).first()
        if profile is None or not profile.is_approved:
            raise InvalidInput(
                f"Approve provider {locked.provider.slug} before its pools.", param="provider"
            )
        locked.cluster = cluster or locked.cluster
        if locked.cluster is None:
            raise InvalidInput(
                f"Pool {locked.public_id} has no cluster connection; attach one before approving.",
                param="cluster",
            )
        locked.status = Pool.Status.ACTIVE
        locked.approved_by = by
        locked.approved_at = timezone.now()
        locked.save()
    return locked


def pool_reject(*, pool: Pool, by: User, note: str = "") -> Pool:
    updated = Pool.objects.filter(pk=pool.pk, status=Pool.Status.PENDING).update(
        status=Pool.Status.REJECTED, review_note=note, approved_by=None, approved_at=None
    )
    if not updated:
        raise InvalidTransition(f"Pool {pool.public_id} is not pending approval.")
    return Pool.objects.get(pk=pool.pk)


def pool_retire(*, pool: Pool) -> Pool:
    with transaction.atomic():
        locked = _lock_pool(pool.pk)
        ahead = Booking.objects.filter(
            pool=locked, status=Booking.Status.CONFIRMED, end__gt=timezone.now()
        ).count()
        if ahead:
            raise Conflict(
                f"Pool {locked.public_id} has {ahead} confirmed booking(s) still to run; "
                "it can be retired once they have ended.",
            )
        locked.status = Pool.Status.RETIRED
        locked.save(update_fields=["status", "updated_at"])
    return locked


# ---------------------------------------------------------------- maintenance


def _window(start: datetime, end: datetime) -> None:
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise InvalidInput("start and end must be timezone-aware instants.", param="start")
    if end <= start:
        raise InvalidInput("end must be after start.", param="end")


def maintenance_window_create(
    *,
    pool: Pool,
    start: datetime,
    end: datetime,
    gpu_count: int | None = None,
    reason: str = "",
    created_by: User | None = None,
) -> MaintenanceWindow:
    _window(start, end)
    with transaction.atomic():
        locked = _lock_pool(pool.pk)
        gpus = locked.gpu_count if gpu_count is None else gpu_count
        if not 1 <= gpus <= locked.gpu_count:
            raise InvalidInput(
                f"gpu_count must be from 1 to the pool's {locked.gpu_count}.", param="gpu_count"
            )
        reserved = selectors.pool_peak_reserved(locked, start, end)
        if reserved + gpus > locked.gpu_count:
            raise Conflict(
                f"Bookings and maintenance already take up to {reserved} of {locked.gpu_count} GPUs "
                f"in that window; {gpus} more would overbook the pool. Move the window or "
                "take fewer GPUs.",
                param="start",
            )
        return MaintenanceWindow.objects.create(
            pool=locked,
            start=start,
            end=end,
            gpu_count=gpu_count,
            reason=reason,
            created_by=created_by,
        )


# ---------------------------------------------------------------- residency


def residency_policy_set(
    *, organization: Organization, eu_only: bool, countries: list[str]
) -> ResidencyPolicy:
    parsed = policies.residency_parse({"eu_only": eu_only, "countries": countries})
    policy, _ = ResidencyPolicy.objects.update_or_create(
        organization=organization,
        defaults={"eu_only": parsed.eu_only, "countries": sorted(parsed.countries)},
    )
    return policy


# ---------------------------------------------------------------- bookings


@dataclass(frozen=True)
class BookingRequest:
    organization: Organization
    flavor: GpuFlavor
    gpu_count: int
    start: datetime
    end: datetime
    pool_id: str | None
    region: str | None

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def booking_request(
    *,
    organization: Organization,
    flavor: str,
    gpu_count: int,
    start: datetime,
    end: datetime,
    pool_id: str | None = None,
    region: str | None = None,
    at: datetime | None = None,
) -> BookingRequest:
    """Validate a booking request; every problem says which field and how to fix it."""
    now = at or timezone.now()
    gpu_flavor = GpuFlavor.objects.filter(slug=flavor).first()
    if gpu_flavor is None:
        known = ", ".join(GpuFlavor.objects.values_list("slug", flat=True)) or "none yet"
        raise InvalidInput(
            f"Unknown GPU flavor {flavor!r}; known flavors: {known}.", param="flavor"
        )
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int) or gpu_count < 1:
        raise InvalidInput("gpus must be a positive integer.", param="gpus")
    _window(start, end)
    if start < now - START_GRACE:
        raise InvalidInput("start is in the past; book from now on.", param="start")
    if start > now + selectors.SEARCH_HORIZON:
        raise InvalidInput(
            "start is more than a year ahead; book closer to the date.", param="start"
        )
    if end - start > MAX_BOOKING:
        raise InvalidInput(
            f"A booking lasts at most {MAX_BOOKING.days} days; split longer needs.", param="end"
        )
    return BookingRequest(organization, gpu_flavor, gpu_count, start, end, pool_id, region)


def booking_candidates(request: BookingRequest) -> list[Pool]:
    """Pools that could hold the booking, cheapest first (ties: oldest pool)."""
    residency = selectors.residency_for_org(request.organization)
    pools = selectors.placeable_pools().filter(flavor=request.flavor)
    if request.pool_id:
        pool = Pool.objects.filter(public_id=request.pool_id).first()
        if pool is None or not pools.filter(pk=pool.pk).exists():
            raise InvalidInput(
                f"Pool {request.pool_id!r} is not an active {request.flavor.slug} offer; "
                "GET /v1/offers lists them.",
                param="pool",
            )
        if not residency.allows(pool.country):
            raise InvalidInput(
                f"Pool {pool.public_id} is in {pool.country}; your organization's data-residency "
                f"policy ({residency.describe()}) forbids it.",
                param="pool",
            )
        pools = pools.filter(pk=pool.pk)
    if request.region:
        pools = pools.filter(region=request.region)
    candidates = [
        p for p in pools.order_by("price_per_gpu_hour", "pk") if residency.allows(p.country)
    ]
    candidates = [p for p in candidates if p.gpu_count >= request.gpu_count]
    if not candidates:
        where = f" in region {request.region}" if request.region else ""
        raise InvalidInput(
            f"No active pool offers {request.gpu_count} {request.flavor.slug} GPUs{where} within "
            f"your residency policy ({residency.describe()}). GET /v1/offers lists what exists.",
            param="gpus",
        )
    return candidates


@dataclass(frozen=True)
class EarliestWindow:
    pool: Pool
    start: datetime
    end: datetime


def earliest_window(request: BookingRequest, candidates: list[Pool]) -> EarliestWindow | None:
    best: EarliestWindow | None = None
    for pool in candidates:
        start = selectors.earliest_booking_window(
            pool, gpus=request.gpu_count, duration=request.duration, not_before=request.start
        )
        if start is not None and (best is None or start < best.start):
            best = EarliestWindow(pool, start, start + request.duration)
    return best


def _unavailable(request: BookingRequest, candidates: list[Pool]) -> CapacityUnavailable:
    window = earliest_window(request, candidates)
    wanted = (
        f"{request.gpu_count} {request.flavor.slug} GPUs for "
        f"[{request.start:%Y-%m-%d %H:%M}, {request.end:%Y-%m-%d %H:%M}) UTC"
    )
    if window is None:
        return CapacityUnavailable(
            f"No pool can hold {wanted} within a year.", param="start", details={"earliest": None}
        )
    return CapacityUnavailable(
        f"No pool has {wanted}. The earliest window that fits is "
        f"[{window.start:%Y-%m-%d %H:%M}, {window.end:%Y-%m-%d %H:%M}) UTC on pool "
        f"{window.pool.public_id}; book that window or choose another time.",
        param="start",
        details={
            "earliest": {
                "pool": window.pool.public_id,
                "start": _unix(window.start),
                "end": _unix(window.end),
            }
        },
    )


def _book_on(pool: Pool, request: BookingRequest, **audit: Any) -> Booking | None:
    """Lock the pool, check the peak, write. None when it does not fit (nothing written)."""
    with transaction.atomic():
        locked = _lock_pool(pool.pk)
        if locked.status != Pool.Status.ACTIVE:
            return None
        loads = selectors.reserved_loads([locked.pk], request.start, request.end)[locked.pk]
        if peak(loads, request.start, request.end) + request.gpu_count > locked.gpu_count:
            return None
        return Booking.objects.create(
            public_id=_new_id("bk"),
            organization=request.organization,
            pool=locked,
            flavor=request.flavor,
            gpu_count=request.gpu_count,
            start=request.start,
            end=request.end,
            price_per_gpu_hour=locked.price_per_gpu_hour,
            amount=policies.booking_amount(
                gpus=request.gpu_count,
                start=request.start,
                end=request.end,
                price=locked.price_per_gpu_hour,
            ),
            cancellation_policy=policies.CANCELLATION_POLICY,
            **audit,
        )


def booking_create(
    *,
    organization: Organization,
    flavor: str,
    gpu_count: int,
    start: datetime,
    end: datetime,
    pool_id: str | None = None,
    region: str | None = None,
    created_by: User | None = None,
    created_by_key: ApiKey | None = None,
) -> Booking:
    """Book on the cheapest candidate pool that fits; CapacityUnavailable names the earliest fit.

    Each candidate is tried in its own short transaction holding one pool lock, so locks are
    never stacked and the lock order stays pool → quota → balance.
    """
    request = booking_request(
        organization=organization,
        flavor=flavor,
        gpu_count=gpu_count,
        start=start,
        end=end,
        pool_id=pool_id,
        region=region,
    )
    candidates = booking_candidates(request)
    for pool in candidates:
        booking = _book_on(pool, request, created_by=created_by, created_by_key=created_by_key)
        if booking is not None:
            return booking
    raise _unavailable(request, candidates)


@dataclass(frozen=True)
class BookingQuote:
    pool: Pool | None
    gpu_count: int
    start: datetime
    end: datetime
    price_per_gpu_hour: Decimal | None
    amount: Decimal | None
    refund_schedule: list[dict[str, Any]]
    earliest: EarliestWindow | None
    fits: bool


def booking_quote(
    *,
    organization: Organization,
    flavor: str,
    gpu_count: int,
    start: datetime,
    end: datetime,
    pool_id: str | None = None,
    region: str | None = None,
) -> BookingQuote:
    """What booking would cost and refund, before confirming. Writes nothing, locks nothing."""
    request = booking_request(
        organization=organization,
        flavor=flavor,
        gpu_count=gpu_count,
        start=start,
        end=end,
        pool_id=pool_id,
        region=region,
    )
    candidates = booking_candidates(request)
    fitting = next(
        (
            p
            for p in candidates
            if selectors.pool_peak_reserved(p, request.start, request.end) + gpu_count
            <= p.gpu_count
        ),
        None,
    )
    earliest = None if fitting else earliest_window(request, candidates)
    pool = fitting or (earliest.pool if earliest else None)
    amount = (
        policies.booking_amount(gpus=gpu_count, start=start, end=end, price=pool.price_per_gpu_hour)
        if pool
        else None
    )
    return BookingQuote(
        pool=pool,
        gpu_count=gpu_count,
        start=start,
        end=end,
        price_per_gpu_hour=pool.price_per_gpu_hour if pool else None,
        amount=amount,
        refund_schedule=policies.refund_schedule(amount=amount, start=start) if amount else [],
        earliest=earliest,
        fits=fitting is not None,
    )


def booking_cancellation_quote(
    *, booking: Booking, at: datetime | None = None
) -> policies.CancellationQuote:
    if booking.status == Booking.Status.CANCELLED:
        return policies.CancellationQuote(
            cancellable=False,
            refund_fraction=booking.refund_fraction or Decimal("0"),
            refund_amount=booking.refund_amount or Decimal("0.00"),
            reason="The booking is already cancelled.",
        )
    return policies.cancellation_quote(
        amount=booking.amount, start=booking.start, at=at or timezone.now()
    )


def booking_cancel(
    *, organization: Organization, booking_id: str, by: User | None = None
) -> Booking:
    """Cancel before the start; the refund follows the policy shown in the quote."""
    with transaction.atomic():
        booking = (
            Booking.objects.select_for_update()
            .filter(organization=organization, public_id=booking_id)
            .first()
        )
        if booking is None:
            raise NotFound(f"No booking {booking_id!r}.", param="booking_id")
        if booking.status == Booking.Status.CANCELLED:
            raise InvalidTransition(
                f"Booking {booking_id} is already cancelled.", param="booking_id"
            )
        now = timezone.now()
        quote = policies.cancellation_quote(amount=booking.amount, start=booking.start, at=now)
        if not quote.cancellable:
            raise InvalidTransition(
                f"Booking {booking_id} started at {booking.start:%Y-%m-%d %H:%M} UTC; "
                f"{quote.reason}",
                param="booking_id",
            )
        booking.status = Booking.Status.CANCELLED
        booking.cancelled_at = now
        booking.cancelled_by = by
        booking.refund_fraction = quote.refund_fraction
        booking.refund_amount = quote.refund_amount
        booking.save(
            update_fields=[
                "status",
                "cancelled_at",
                "cancelled_by",
                "refund_fraction",
                "refund_amount",
            ]
        )
    return booking


# ---------------------------------------------------------------- placements


def placement_commit(*, job: FineTuningJob, decision: PlacementDecision) -> Placement:
    """Record a placement after re-checking, under the pool lock, that it still fits.

    Call it first in the admission transaction (the pool lock comes before quota and balance
    locks), then `job_admit(placement_reason=decision.reason)` in the same transaction.
    Raises CapacityUnavailable if a concurrent admission took the GPUs meanwhile.
    """
    with transaction.atomic():
        # NO KEY UPDATE: still serializes admissions and bookings on the pool, but does not block
        # billing rows that merely reference the pool (FK key-share) while they hold a balance
        # lock, which would deadlock against pool → balance.
        pool = Pool.objects.select_for_update(no_key=True).get(pk=decision.pool.pk)
        Placement.objects.filter(job=job).delete()  # a requeued job is placed afresh
        usage = selectors.pools_usage([pool], timezone.now())[pool.pk]
        if decision.booking is not None:
            room = usage.unused_in_booking(decision.booking.pk)
        else:
            room = usage.free
        if pool.status != Pool.Status.ACTIVE or room < job.gpu_count:
            raise CapacityUnavailable(
                f"Pool {pool.public_id} no longer has {job.gpu_count} free GPUs "
                f"(free now: {room}); the job stays queued.",
                param="gpu_count",
            )
        return Placement.objects.create(
            job=job,
            pool=pool,
            booking=decision.booking,
            gpu_count=job.gpu_count,
            price_per_gpu_hour=decision.price_per_gpu_hour,
            reason=decision.reason,
        )


def cluster_connection_create(
    *,
    name: str,
    kind: str = ClusterConnection.Kind.KUBECONFIG,
    namespace: str = "partage-jobs",
    credentials_ref: str = "",
    provider: Organization | None = None,
) -> ClusterConnection:
    if kind not in ClusterConnection.Kind.values:
        raise InvalidInput(
            f"kind must be one of {', '.join(ClusterConnection.Kind.values)}.", param="kind"
        )
    if kind == ClusterConnection.Kind.KUBECONFIG and not credentials_ref:
        raise InvalidInput(
            "A kubeconfig connection needs credentials_ref: the mounted path, e.g. "
            f"/var/run/secrets/partage/clusters/{name}/kubeconfig, or a Secret name.",
            param="credentials_ref",
        )
    if "\n" in credentials_ref or "apiVersion" in credentials_ref or len(credentials_ref) > 300:
        raise InvalidInput(
            "credentials_ref is a reference (path or Secret name), never the credentials.",
            param="credentials_ref",
        )
    return ClusterConnection.objects.create(
        name=name,
        kind=kind,
        namespace=namespace,
        credentials_ref=credentials_ref,
        provider=provider,
    )
