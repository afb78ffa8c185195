"""Writes for the supply side: providers, cluster connections, pools, maintenance, residency.

Every write that adds load to a pool locks it first (see common.lock_pool) and checks the peak
of bookings and maintenance.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException

from marketplace.accounts.guards import content_add_check
from marketplace.accounts.models import Organization, User
from marketplace.capacity import policies, selectors
from marketplace.capacity.models import (
    ApprovalStatus,
    Booking,
    ClusterConnection,
    GpuFlavor,
    MaintenanceWindow,
    Pool,
    ProviderProfile,
    ResidencyPolicy,
)
from marketplace.capacity.services.common import (
    lock_pool,
    new_id,
    window_check,
)
from marketplace.errors import Conflict, Forbidden, InvalidInput, InvalidTransition, NotFound

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


def payout_details_check(*, name: str, iban: str, bic: str) -> tuple[str, str, str]:
    """The account holder, IBAN and BIC, normalized; InvalidInput naming the bad field."""
    name = " ".join(name.split())
    if not name:
        raise InvalidInput("Give the account holder's name (payout_name).", param="payout_name")
    if len(name) > 70:
        raise InvalidInput(
            "The account holder's name is at most 70 characters (SEPA).", param="payout_name"
        )
    try:
        checked_iban = IBAN(iban)
    except SchwiftyException as e:
        raise InvalidInput(
            f"payout_iban {iban!r} is not a valid IBAN ({e}); copy it from a bank statement, "
            "e.g. FR76 3000 6000 0112 3456 7890 189.",
            param="payout_iban",
        ) from e
    if not checked_iban.in_sepa_zone:
        raise InvalidInput(
            f"payout_iban {checked_iban.formatted} is outside the SEPA zone; payouts are SEPA "
            "credit transfers.",
            param="payout_iban",
        )
    bic = bic.replace(" ", "").upper()
    if bic:
        try:
            BIC(bic)
        except SchwiftyException as e:
            raise InvalidInput(
                f"payout_bic {bic!r} is not a valid BIC ({e}); it has 8 or 11 characters, "
                "e.g. AGRIFRPP.",
                param="payout_bic",
            ) from e
    return name, checked_iban.compact, bic


def provider_payout_details_set(
    *, organization: Organization, name: str, iban: str, bic: str = ""
) -> ProviderProfile:
    """Where the provider's payouts go (SEPA credit transfer); validated, then saved."""
    name, iban, bic = payout_details_check(name=name, iban=iban, bic=bic)
    with transaction.atomic():
        profile, _ = ProviderProfile.objects.select_for_update().get_or_create(
            organization=organization
        )
        profile.payout_name, profile.payout_iban, profile.payout_bic = name, iban, bic
        profile.save(update_fields=["payout_name", "payout_iban", "payout_bic"])
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
    content_add_check(organization=provider, action="offer a new GPU pool")
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
            public_id=new_id("pool"),
            provider=provider,
            flavor=gpu_flavor,
            country=policies.country_code(country),
            status=Pool.Status.PENDING,
            **clean,
        )


def pool_update(*, provider: Organization, pool_id: str, changes: dict[str, Any]) -> Pool:
    # Look the pool up first: another org's pool id answers 404 like an unknown one.
    if not Pool.objects.filter(provider=provider, public_id=pool_id).exists():
        raise NotFound(f"No pool with id {pool_id!r} among yours.", param="pool_id")
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
            raise NotFound(f"No pool with id {pool_id!r} among yours.", param="pool_id")
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
        locked = lock_pool(pool.pk)
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
        locked = lock_pool(pool.pk)
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


# ---------------------------------------------------------------- maintenance


def maintenance_window_create(
    *,
    pool: Pool,
    start: datetime,
    end: datetime,
    gpu_count: int | None = None,
    reason: str = "",
    created_by: User | None = None,
) -> MaintenanceWindow:
    window_check(start, end)
    with transaction.atomic():
        locked = lock_pool(pool.pk)
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
