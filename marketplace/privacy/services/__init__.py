"""Writes for data protection.

exports       - an organization's full export, built by a Celery task, deleted when it expires.
retention     - each organization's retention, and the sweep that deletes expired data.
erasure       - deleting an organization (after a grace period) or a person's account.
accounting    - the erased organization's accounting records, once their legal retention ends.
staff_access  - the record of staff viewing or downloading customer content.
"""

from marketplace.privacy.services.accounting import (
    accounting_purge_sweep,
    organization_records_purge,
)
from marketplace.privacy.services.erasure import (
    erasure_pending,
    erasure_sweep,
    organization_erase,
    organization_erasure_cancel,
    organization_erasure_request,
    pseudonym_for,
    user_delete,
)
from marketplace.privacy.services.exports import export_build, export_request, exports_expire
from marketplace.privacy.services.retention import (
    retention_days_for,
    retention_schedule,
    retention_set,
    retention_sweep,
)
from marketplace.privacy.services.staff_access import staff_access_record, staff_content_open

__all__ = [
    "accounting_purge_sweep",
    "erasure_pending",
    "erasure_sweep",
    "export_build",
    "export_request",
    "exports_expire",
    "organization_erase",
    "organization_erasure_cancel",
    "organization_erasure_request",
    "organization_records_purge",
    "pseudonym_for",
    "retention_days_for",
    "retention_schedule",
    "retention_set",
    "retention_sweep",
    "staff_access_record",
    "staff_content_open",
    "user_delete",
]
