"""What the launch review and the job page show about price and start, read from the domains.

Nothing is computed here that a domain owns: GPU flavors come from capacity, the cost estimate
from billing, the estimated start from capacity's placement view.
"""

from __future__ import annotations

from typing import Any

from marketplace.accounts.models import Organization
from marketplace.finetuning.models import FineTuningJob


def flavor_choices() -> list[tuple[str, str]]:
    from marketplace.capacity.selectors import flavors

    return [(f.slug, f"{f.model_name} · {f.memory_gb} GB") for f in flavors()]


def launch_estimate(*, org: Organization, form: Any) -> dict[str, Any]:
    return {"cost": None, "estimated_start": None, "notes": []}


def job_cost(*, job: FineTuningJob) -> Any:
    return None
