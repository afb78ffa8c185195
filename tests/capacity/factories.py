"""Factories for capacity tests: flavors, approved providers, clusters, pools, jobs, outcomes.

Pools go through the real services (create → approve) so tests exercise the approval path.
"""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal
from typing import Any

from marketplace.accounts.models import Organization, User
from marketplace.accounts.services import organization_create
from marketplace.capacity import services
from marketplace.capacity.models import ClusterConnection, GpuFlavor, Placement, Pool
from marketplace.finetuning.models import File, FineTuningJob, JobStatus

_seq = itertools.count(1)


def flavor(
    slug: str = "h100-80g", *, model_name: str = "NVIDIA H100", memory_gb: int = 80
) -> GpuFlavor:
    found, _ = GpuFlavor.objects.get_or_create(
        slug=slug,
        defaults={"model_name": model_name, "memory_gb": memory_gb, "interconnect": "sxm"},
    )
    return found


def staff() -> User:
    user = User.objects.filter(username="staff-bot").first()
    return user or User.objects.create_user(
        "staff-bot", email="staff-bot@partage.example", is_staff=True
    )


def provider(
    slug: str | None = None, *, country: str = "FR", approved: bool = True
) -> Organization:
    slug = slug or f"provider-{next(_seq)}"
    org = organization_create(
        name=slug.title(),
        slug=slug,
        kind=Organization.Kind.PROVIDER,
        country=country,
        legal_name=f"{slug.title()} SAS",
        vat_id=f"FR{next(_seq):011d}",
    )
    services.provider_profile_upsert(organization=org, payout_reference=f"payout-{slug}")
    if approved:
        services.provider_approve(organization=org, by=staff())
    return org


def fund(org: Organization, amount: str = "100000") -> Organization:
    """Prepaid credit for an org that books: a booking is paid when it is confirmed."""
    from marketplace.billing.services import topup_record

    topup_record(
        organization=org,
        amount=Decimal(amount),
        reference=f"fund-{org.slug}-{next(_seq)}",
        created_by="test",
    )
    return org


def cluster(name: str | None = None) -> ClusterConnection:
    name = name or f"cluster-{next(_seq)}"
    return services.cluster_connection_create(
        name=name, credentials_ref=f"/var/run/secrets/partage/clusters/{name}/kubeconfig"
    )


def pool(
    owner: Organization | None = None,
    *,
    gpus: int = 8,
    price: str | Decimal = "2.50",
    country: str = "FR",
    region: str = "eu-west-paris",
    flavor_slug: str = "h100-80g",
    approve: bool = True,
    **fields: Any,
) -> Pool:
    owner = owner or provider()
    flavor(flavor_slug)
    created = services.pool_create(
        provider=owner,
        flavor=flavor_slug,
        country=country,
        name=fields.pop("name", f"pool {next(_seq)}"),
        gpu_count=gpus,
        region=region,
        price_per_gpu_hour=str(price),
        **fields,
    )
    if approve:
        return services.pool_approve(pool=created, by=staff(), cluster=cluster())
    return created


def job(
    org: Organization,
    *,
    gpus: int = 1,
    flavor_slug: str = "h100-80g",
    status: str = JobStatus.QUEUED,
    residency: dict[str, Any] | None = None,
    failure_class: str = "",
) -> FineTuningJob:
    training = File.objects.create(
        id=f"file-{uuid.uuid4().hex[:24]}",
        organization=org,
        filename="train.jsonl",
        purpose=File.Purpose.FINE_TUNE,
        bytes=10,
        sha256="0" * 64,
        content="files/none.jsonl",
    )
    return FineTuningJob.objects.create(
        id=f"ftjob-{uuid.uuid4().hex[:24]}",
        organization=org,
        model="tiny-random",
        training_file=training,
        seed=1,
        gpu_flavor=flavor_slug,
        gpu_count=gpus,
        residency=residency or {},
        status=status,
        failure_class=failure_class,
    )


def outcome(on: Pool, org: Organization, *, succeeded: bool) -> FineTuningJob:
    """A finished job placed on `on`: a success, or a provider-caused failure."""
    finished = job(
        org,
        status=JobStatus.SUCCEEDED if succeeded else JobStatus.FAILED,
        failure_class="" if succeeded else "provider_error",
    )
    Placement.objects.create(
        job=finished, pool=on, gpu_count=1, price_per_gpu_hour=on.price_per_gpu_hour, reason="test"
    )
    return finished


def running_on(on: Pool, org: Organization, *, gpus: int, booking: Any = None) -> FineTuningJob:
    """A job holding `gpus` GPUs on `on` (state running), optionally inside a booking."""
    running = job(org, gpus=gpus, status=JobStatus.RUNNING)
    Placement.objects.create(
        job=running,
        pool=on,
        booking=booking,
        gpu_count=gpus,
        price_per_gpu_hour=on.price_per_gpu_hour,
        reason="test",
    )
    return running
