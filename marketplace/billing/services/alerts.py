"""Low-balance alerts: the domain event `billing.balance_low` (e-mailed by notifications'
balance topic, delivered to webhook endpoints), once per crossing.

An organization sets a threshold (low_balance_threshold_set). After a write that lowers its
available balance (a hold, a capture, a booking charge) and when a hold is refused for lack of
funds, the writer calls balance_low_check under the org's balance lock. The first time the
balance is below the threshold (or a hold is refused), BillingAccount.low_balance_since is set
and the event is recorded; later charges find it set and say nothing. Only money coming in (a
credited top-up) or a new threshold re-arms the alert, when the balance is back at or above it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from marketplace.accounts.models import Organization
from marketplace.billing.models import BillingAccount
from marketplace.billing.services.ledger import account_lock, balances_available
from marketplace.errors import InvalidInput
from marketplace.events.services import event_record

logger = logging.getLogger("partage.billing")

BALANCE_LOW = "billing.balance_low"


def balance_low_check(
    *,
    accounts: Mapping[int, BillingAccount],
    refused: Collection[int] = (),
    available: Mapping[int, Decimal] | None = None,
    rearm: bool = False,
) -> list[int]:
    """Record `billing.balance_low` for each org (of `accounts`, locked by the caller) whose
    available balance is now below its threshold, or whose hold was refused (`refused`), unless
    already alerted since the balance last went back up. With `rearm` (the caller credited the
    org), an org whose balance is back at or above its threshold can be alerted again later.

    `available`: the orgs' available balances if the caller has them (saves a statement).
    No statement at all for orgs without a threshold, none alerted and none refused.
    Returns the ids of the organizations alerted.
    """
    watched = {
        org_id: account
        for org_id, account in accounts.items()
        if account.low_balance_threshold is not None
        or (rearm and account.low_balance_since is not None)
        or org_id in refused
    }
    if not watched:
        return []
    missing = [org_id for org_id in watched if available is None or org_id not in available]
    balances = {**(available or {}), **balances_available(organization_ids=missing)}
    now = timezone.now()
    alerted: list[BillingAccount] = []
    changed: list[BillingAccount] = []
    for org_id, account in watched.items():
        threshold = account.low_balance_threshold
        low = org_id in refused or (threshold is not None and balances[org_id] < threshold)
        if low and account.low_balance_since is None:
            account.low_balance_since = now
            alerted.append(account)
            changed.append(account)
        elif rearm and not low and account.low_balance_since is not None:
            account.low_balance_since = None
            changed.append(account)
    if changed:
        BillingAccount.objects.bulk_update(changed, ["low_balance_since"])
    for account in alerted:
        _balance_low_announce(
            account=account,
            available=balances[account.organization_id],
            reason="hold_refused" if account.organization_id in refused else "below_threshold",
        )
    return [account.organization_id for account in alerted]


def _balance_low_announce(*, account: BillingAccount, available: Decimal, reason: str) -> None:
    """Record the event, in the caller's transaction (it rolls back with it)."""
    threshold = account.low_balance_threshold
    data = {
        "available": f"{available:.2f}",
        "threshold": f"{threshold:.2f}" if threshold is not None else None,
        "currency": "EUR",
        "reason": reason,
    }
    event_record(
        event_type=BALANCE_LOW,
        organization_id=account.organization_id,
        subject_id=account.organization.public_id,
        data=data,
    )
    logger.info("balance low", extra={"org_id": account.organization_id, **data})


def low_balance_threshold_set(
    *, organization: Organization, threshold: Decimal | None
) -> BillingAccount:
    """Set (or remove, with None) the org's low-balance threshold; re-arms the alert when the
    balance is at or above the new threshold, alerts now when it is already below."""
    if threshold is not None and (
        threshold <= 0 or threshold != threshold.quantize(Decimal("0.01"))
    ):
        raise InvalidInput(
            "low_balance_threshold must be a positive amount in EUR with at most two decimals, "
            "or null to turn the alert off.",
            param="low_balance_threshold",
        )
    with transaction.atomic():
        account = account_lock(organization_id=organization.pk)
        account.low_balance_threshold = threshold
        account.low_balance_since = None
        account.save(update_fields=["low_balance_threshold", "low_balance_since"])
        balance_low_check(accounts={organization.pk: account})
    return account
