"""Short-lived tokens that let one trainer (local process or pod) call back for one job only."""

from __future__ import annotations

from django.conf import settings
from django.core import signing

_SALT = "partage.job-token.v1"


def job_token_issue(*, job_id: str, attempt: int) -> str:
    return signing.TimestampSigner(salt=_SALT).sign_object({"job": job_id, "attempt": attempt})


def job_token_verify(token: str) -> tuple[str, int] | None:
    """(job_id, attempt) when the token is genuine and fresh; None otherwise."""
    try:
        payload = signing.TimestampSigner(salt=_SALT).unsign_object(
            token, max_age=settings.PARTAGE_JOB_TOKEN_TTL_SECONDS
        )
    except (signing.BadSignature, ValueError):
        return None
    return str(payload["job"]), int(payload["attempt"])
