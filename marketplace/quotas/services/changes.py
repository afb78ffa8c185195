"""Staff changes to plans and organizations' quotas. Every changed value is audited: who,
when, through what, the old value and the new one. Django admin calls these too.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.utils import timezone

from marketplace.accounts.models import Organization, User
from marketplace.capacity.models import GpuFlavor
from marketplace.errors import InvalidInput
from marketplace.quotas.models import (
    QUOTA_FIELDS,
    FlavorQuotaOverride,
    OrganizationQuota,
    Plan,
    PlanFlavorQuota,
    QuotaAuditEntry,
)
from marketplace.quotas.quota_book import QuotaBook

INT_FIELDS = {"guaranteed_gpus", "max_gpus", "max_concurrent_jobs"}
HOUR_FIELDS = {"monthly_gpu_hours", "max_job_hours"}
PLAN_DEFAULT = "(plan default)"
UNLIMITED = "(unlimited)"


def _clean(field: str, value: Any, *, where: str) -> Any:
    """A validated quota value; None stays None (meaning: plan default / unlimited)."""
    if field not in QUOTA_FIELDS and field != "budget_unlimited":
        raise InvalidInput(
            f"{where}: unknown quota field {field!r}; known fields: {', '.join(QUOTA_FIELDS)}.",
            param=field,
        )
    if value is None:
        return None
    if field == "budget_unlimited":
        if not isinstance(value, bool):
            raise InvalidInput(f"{where}: budget_unlimited must be true or false.", param=field)
        return value
    if field in INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
            raise InvalidInput(
                f"{where}: {field} must be a whole number from 0 to 100000 (got {value!r}).",
                param=field,
            )
        return value
    try:
        hours = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidInput(
            f"{where}: {field} must be a number of hours such as 24 or 1.5 (got {value!r}).",
            param=field,
        ) from None
    if isinstance(value, bool) or not hours.is_finite() or hours < 0 or hours > Decimal("1e9"):
        raise InvalidInput(f"{where}: {field} must be a non-negative number of hours.", param=field)
    if field == "max_job_hours" and hours == 0:
        raise InvalidInput(f"{where}: max_job_hours must be more than 0.", param=field)
    return hours.quantize(Decimal("0.01"))


def _weight(value: Any, *, empty: str = "") -> Decimal:
    """A fair-share weight as stored (2 decimals), so that equal values compare equal."""
    try:
        weight = Decimal(str(value)) if not isinstance(value, bool) else Decimal("NaN")
    except (InvalidOperation, ValueError):
        weight = Decimal("NaN")
    if not weight.is_finite() or not Decimal("0.01") <= weight <= Decimal("9999.99"):
        hint = f" {empty}" if empty else ""
        raise InvalidInput(
            f"weight must be a number from 0.01 to 9999.99{hint} (got {value!r}).", param="weight"
        )
    return weight.quantize(Decimal("0.01"))


def _text(value: Any, empty: str) -> str:
    return empty if value is None else str(value)


def _audit(
    *,
    actor: User | None,
    via: str,
    field: str,
    old: str,
    new: str,
    organization: Organization | None = None,
    plan: Plan | None = None,
    flavor: GpuFlavor | None = None,
) -> None:
    if old != new:
        QuotaAuditEntry.objects.create(
            changed_by=actor,
            via=via,
            organization=organization,
            plan=plan,
            flavor=flavor,
            field=field,
            old_value=old[:100],
            new_value=new[:100],
        )


def _default_plan_unset(*, actor: User | None, via: str) -> None:
    """The previous default plan stops being the default (its organizations move): audited."""
    for previous in Plan.objects.select_for_update().filter(is_default=True):
        Plan.objects.filter(pk=previous.pk).update(is_default=False)
        _audit(actor=actor, via=via, plan=previous, field="is_default", old="True", new="False")


def plan_create(
    *,
    slug: str,
    name: str,
    weight: Decimal | int = 1,
    is_default: bool = False,
    actor: User | None = None,
    via: str = QuotaAuditEntry.Via.SERVICE,
) -> Plan:
    if Plan.objects.filter(slug=slug).exists():
        raise InvalidInput(f"A plan with slug {slug!r} exists; choose another slug.", param="slug")
    weight = _weight(weight)
    with transaction.atomic():
        if is_default:
            _default_plan_unset(actor=actor, via=via)
        plan = Plan.objects.create(slug=slug, name=name, weight=weight, is_default=is_default)
        _audit(actor=actor, via=via, plan=plan, field="plan", old="", new=f"created {slug}")
    return plan


def plan_flavor_quota_set(
    *,
    plan: Plan,
    flavor: GpuFlavor,
    values: dict[str, Any],
    actor: User | None = None,
    via: str = QuotaAuditEntry.Via.SERVICE,
) -> PlanFlavorQuota:
    """Create or change a plan's defaults for one flavor."""
    where = f"plan {plan.slug}, flavor {flavor.slug}"
    cleaned = {field: _clean(field, value, where=where) for field, value in values.items()}
    if "budget_unlimited" in cleaned:
        raise InvalidInput(
            f"{where}: leave monthly_gpu_hours empty for no budget cap.", param="budget_unlimited"
        )
    for field in ("guaranteed_gpus", "max_gpus", "max_job_hours", "max_concurrent_jobs"):
        if field in cleaned and cleaned[field] is None:
            raise InvalidInput(f"{where}: {field} needs a value in a plan.", param=field)
    with transaction.atomic():
        row = (
            PlanFlavorQuota.objects.select_for_update(of=("self",))
            .filter(plan=plan, flavor=flavor)
            .first()
        )
        existed = row is not None
        old = {f: getattr(row, f) for f in QUOTA_FIELDS} if row else dict.fromkeys(QUOTA_FIELDS)
        row = row or PlanFlavorQuota(plan=plan, flavor=flavor)
        for field, value in cleaned.items():
            setattr(row, field, value)
        if row.guaranteed_gpus > row.max_gpus:
            raise InvalidInput(
                f"{where}: guaranteed_gpus ({row.guaranteed_gpus}) cannot exceed max_gpus "
                f"({row.max_gpus}); raise max_gpus or lower the guarantee.",
                param="guaranteed_gpus",
            )
        row.save()
        for field in QUOTA_FIELDS:
            _audit(
                actor=actor,
                via=via,
                plan=plan,
                flavor=flavor,
                field=field,
                old=_text(old[field], UNLIMITED if existed else ""),
                new=_text(getattr(row, field), UNLIMITED),
            )
    return row


def org_plan_set(
    *,
    organization: Organization,
    plan: Plan | None,
    actor: User | None = None,
    via: str = QuotaAuditEntry.Via.SERVICE,
    weight: Decimal | int | None = None,
) -> OrganizationQuota:
    """Put an organization on a plan (None: the default plan) and set its fair-share weight
    (None: the plan's)."""
    if weight is not None:
        weight = _weight(weight, empty="(or empty for the plan's)")
    with transaction.atomic():
        OrganizationQuota.objects.get_or_create(organization=organization)
        row = OrganizationQuota.objects.select_for_update(of=("self",)).get(
            organization=organization
        )
        old_plan = row.plan.slug if row.plan else PLAN_DEFAULT
        old_weight = _text(row.weight, PLAN_DEFAULT)
        row.plan, row.weight, row.updated_at = plan, weight, timezone.now()
        row.save()
        _audit(
            actor=actor,
            via=via,
            organization=organization,
            field="plan",
            old=old_plan,
            new=plan.slug if plan else PLAN_DEFAULT,
        )
        _audit(
            actor=actor,
            via=via,
            organization=organization,
            field="weight",
            old=old_weight,
            new=_text(weight, PLAN_DEFAULT),
        )
    return row


def org_quota_override_set(
    *,
    organization: Organization,
    flavor: GpuFlavor,
    values: dict[str, Any],
    actor: User | None = None,
    via: str = QuotaAuditEntry.Via.SERVICE,
) -> FlavorQuotaOverride:
    """Override plan values for one organization and flavor. A None value returns that field to
    the plan's default. Guarantee above maximum (after merging with the plan) is refused."""
    where = f"organization {organization.slug}, flavor {flavor.slug}"
    if not values:
        raise InvalidInput(f"{where}: give at least one of {', '.join(QUOTA_FIELDS)}.")
    cleaned = {field: _clean(field, value, where=where) for field, value in values.items()}
    with transaction.atomic():
        OrganizationQuota.objects.get_or_create(organization=organization)
        # Lock the org-quota row: admissions of this organization wait for the change.
        OrganizationQuota.objects.select_for_update(of=("self",)).get(organization=organization)
        row, _ = FlavorQuotaOverride.objects.get_or_create(organization=organization, flavor=flavor)
        old = {f: getattr(row, f) for f in (*QUOTA_FIELDS, "budget_unlimited")}
        for field, value in cleaned.items():
            setattr(row, field, False if field == "budget_unlimited" and value is None else value)
        if "monthly_gpu_hours" in cleaned and cleaned["monthly_gpu_hours"] is not None:
            row.budget_unlimited = False
        row.updated_at = timezone.now()
        row.save()
        effective = QuotaBook(org_ids=[organization.pk]).quota(organization.pk, flavor.pk)
        raw_guarantee = row.guaranteed_gpus
        if (
            raw_guarantee is not None
            and effective.max_gpus is not None
            and raw_guarantee > effective.max_gpus
        ):
            raise InvalidInput(
                f"{where}: guaranteed_gpus ({raw_guarantee}) cannot exceed max_gpus "
                f"({effective.max_gpus}); raise max_gpus in the same change.",
                param="guaranteed_gpus",
            )
        for field in (*QUOTA_FIELDS, "budget_unlimited"):
            _audit(
                actor=actor,
                via=via,
                organization=organization,
                flavor=flavor,
                field=field,
                old=_text(old[field], PLAN_DEFAULT),
                new=_text(getattr(row, field), PLAN_DEFAULT),
            )
    return row


def plan_update(
    *,
    plan: Plan,
    name: str,
    weight: Decimal | int,
    is_default: bool,
    actor: User | None = None,
    via: str = QuotaAuditEntry.Via.SERVICE,
) -> Plan:
    weight = _weight(weight)
    with transaction.atomic():
        old = Plan.objects.select_for_update().get(pk=plan.pk)
        if is_default and not old.is_default:
            _default_plan_unset(actor=actor, via=via)
        Plan.objects.filter(pk=plan.pk).update(name=name, weight=weight, is_default=is_default)
        for field, before, after in [
            ("name", old.name, name),
            ("weight", str(old.weight), str(weight)),
            ("is_default", str(old.is_default), str(is_default)),
        ]:
            _audit(actor=actor, via=via, plan=plan, field=field, old=before, new=after)
    plan.refresh_from_db()
    return plan
