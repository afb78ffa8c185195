"""Reads for webhooks, scoped by organization."""

from __future__ import annotations

from django.db.models import QuerySet

from marketplace.accounts.models import Organization
from marketplace.api.models import WebhookDelivery, WebhookEndpoint


def webhook_endpoints_for_org(org: Organization) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(organization=org, deleted_at__isnull=True)


def webhook_deliveries_for_org(org: Organization) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.filter(organization=org).select_related("event")
