"""Provider statements: sold GPU-seconds only, the platform fee, the holdback for disputes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from marketplace.billing import services as billing
from tests.billing.conftest import admit, assert_invariants, fail, job_new, run_job, start, topup


def test_statement_counts_only_sold_gpu_seconds(
    org_a: Any, pool: Any, provider_org: Any, clock: Any
) -> None:
    topup(org_a, "50.00")
    run_job(job_new(org_a), pool, clock, 3600)  # sold: 3600 GPU-s, €2.50
    crashed = job_new(org_a, gpus=2)
    admit(crashed, pool)
    attempt = start(crashed)
    clock.shift(timedelta(seconds=1000))
    fail(attempt, exit_code=1)  # the trainer crashed: platform_error, waived
    crashed.refresh_from_db()
    assert crashed.failure_class == "platform_error"
    clock.move_to(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))
    nov = billing.month_bounds(2026, 11)
    statement = billing.statement_build(
        provider=provider_org, period_start=nov[0], period_end=nov[1]
    )
    assert statement.gross == Decimal("2.50")
    # The 2000 GPU-seconds of the crashed job were not sold: they are not on the statement.
    assert statement.gpu_seconds == Decimal("3600.000")
    assert_invariants()
