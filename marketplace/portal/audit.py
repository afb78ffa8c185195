"""Staff changes made in the cockpit that no domain audits itself (pool prices, provider and pool
reviews, bank transfers marked received), each written to Django admin's change log in the same transaction as the change.

Quota changes are audited by the quotas domain (QuotaAuditEntry). Pool edits made in the Django
admin land in the same log, so the cockpit's list and each pool's admin history agree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import models, transaction
from django.db.models import QuerySet

from marketplace.accounts.models import Organization, User
from marketplace.capacity import services as capacity_services
from marketplace.capacity.models import ClusterConnection, Pool, ProviderProfile


def _log(*, actor: User, obj: models.Model, message: str) -> None:
    LogEntry.objects.log_actions(
        user_id=actor.pk,
        queryset=type(obj)._default_manager.filter(pk=obj.pk),
        action_flag=CHANGE,
        change_message=message,
        single_object=True,
    )


def pool_price_set(*, pool: Pool, price: Decimal, actor: User) -> Pool:
    """Set a pool's price per GPU-hour (confirmed bookings keep theirs) and log who did it."""
    with transaction.atomic():
        old = pool.price_per_gpu_hour
        updated = capacity_services.pool_update(
            provider=pool.provider,
            pool_id=pool.public_id,
            changes={"price_per_gpu_hour": price},
        )
        _log(
            actor=actor,
            obj=updated,
            message=f"{updated.name}: price per GPU-hour €{old} → €{updated.price_per_gpu_hour}",
        )
    return updated


def provider_review(
    *, organization: Organization, approve: bool, actor: User, note: str = ""
) -> ProviderProfile:
    with transaction.atomic():
        if approve:
            profile = capacity_services.provider_approve(organization=organization, by=actor)
        else:
            profile = capacity_services.provider_reject(
                organization=organization, by=actor, note=note
            )
        verdict = "approved" if approve else "rejected"
        _log(actor=actor, obj=organization, message=f"{organization.name}: {verdict} as a provider")
    return profile


def pool_review(
    *,
    pool: Pool,
    approve: bool,
    actor: User,
    cluster: ClusterConnection | None = None,
    note: str = "",
) -> Pool:
    with transaction.atomic():
        if approve:
            reviewed = capacity_services.pool_approve(pool=pool, by=actor, cluster=cluster)
            where = f" on cluster {reviewed.cluster.name}" if reviewed.cluster else ""
            _log(actor=actor, obj=reviewed, message=f"{reviewed.name}: approved{where}")
        else:
            reviewed = capacity_services.pool_reject(pool=pool, by=actor, note=note)
            why = f" ({note})" if note else ""
            _log(actor=actor, obj=reviewed, message=f"{reviewed.name}: rejected{why}")
    return reviewed


def staff_changes(limit: int = 25) -> QuerySet[LogEntry]:
    """The latest changes to pools and organizations, and bank transfers marked received, from
    the cockpit or the Django admin."""
    from marketplace.billing.models import Topup

    types = ContentType.objects.get_for_models(Pool, Organization, Topup).values()
    return (
        LogEntry.objects.filter(content_type__in=list(types))
        .select_related("user", "content_type")
        .order_by("-action_time", "-id")[:limit]
    )


def topup_received(*, topup_id: str, actor: User) -> tuple[Any, bool]:
    """Staff saw a bank transfer arrive: billing credits the top-up once; the credit is logged
    with who did it, in the same transaction. A second click credits and logs nothing."""
    from marketplace.billing.services import topup_bank_received

    with transaction.atomic():
        topup, credited = topup_bank_received(topup_id=topup_id, actor=actor.get_username())
        if credited:
            _log(
                actor=actor,
                obj=topup,
                message=f"Bank transfer {topup.reference} received: €{topup.amount} credited to "
                f"{topup.organization.name}",
            )
    return topup, credited
