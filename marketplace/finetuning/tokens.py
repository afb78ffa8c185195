"""Short-lived tokens that let one trainer (local process or pod) call back for one job only.

A token expires with the attempt it was issued for: at the attempt's deadline plus the time a
trainer needs to report after it (the stop grace period), never later than
PARTAGE_JOB_TOKEN_TTL_SECONDS after issue.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core import signing

_SALT = "partage.job-token.v1"
# After the deadline the cluster stops the trainer with a grace period (300 s on Kubernetes) in
# which it writes a checkpoint and reports its exit; the token must outlive that, and a little
# clock skew between the web tier and the nodes.
AFTER_DEADLINE_SECONDS = 600


def job_token_issue(*, job_id: str, attempt: int, deadline_seconds: int) -> str:
    """A token for `attempt` of `job_id` that expires when an attempt started now must end."""
    expires_at = int(time.time()) + deadline_seconds + AFTER_DEADLINE_SECONDS
    return signing.TimestampSigner(salt=_SALT).sign_object(
        {"job": job_id, "attempt": attempt, "exp": expires_at}
    )


def job_token_verify(token: str) -> tuple[str, int] | None:
    """(job_id, attempt) when the token is genuine and fresh; None otherwise."""
    try:
        payload = signing.TimestampSigner(salt=_SALT).unsign_object(
            token, max_age=settings.PARTAGE_JOB_TOKEN_TTL_SECONDS
        )
    except (signing.BadSignature, ValueError):
        return None
    expires_at = payload.get("exp")
    if expires_at is not None and time.time() >= int(expires_at):
        return None  # past the attempt's deadline
    return str(payload["job"]), int(payload["attempt"])
