"""Demo credit for the embedded default: the demo startup starts with a balance, credited the way
staff credit a bank transfer (a top-up with its proforma, marked received), once."""

from __future__ import annotations

from decimal import Decimal

from marketplace.accounts.models import Organization
from marketplace.billing.models import Topup
from marketplace.billing.services.topups import topup_bank_received, topup_start

DEMO_CREDIT = Decimal("25.00")
DEMO_ACTOR = "partage_up (demo credit of the embedded default)"


def demo_credit_seed(*, organization: Organization, amount: Decimal = DEMO_CREDIT) -> Topup:
    """The demo's credit: one bank-transfer top-up, received. Reused when it exists."""
    done = Topup.objects.filter(organization=organization, created_by=DEMO_ACTOR).first()
    if done is not None and done.status == Topup.Status.CREDITED:
        return done
    topup = done or topup_start(
        organization=organization,
        amount=str(amount),
        method=Topup.Method.BANK_TRANSFER,
        created_by=DEMO_ACTOR,
    )
    credited, _ = topup_bank_received(topup_id=topup.public_id, actor=DEMO_ACTOR)
    return credited
