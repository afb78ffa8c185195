"""Writes for capacity: providers, pools, maintenance, bookings, residency, placements.

No pool is ever overbooked (REFERENCE §5 invariant 3): every write that adds load to a pool —
a booking, a maintenance window, a smaller GPU count — locks the pool row first (pool → org
quota → org balance), computes the peak of overlapping bookings and maintenance, and writes
only if the peak plus the new load fits.
"""

from marketplace.capacity import policies
from marketplace.capacity.services.bookings import (
    BookingQuote,
    BookingRequest,
    EarliestWindow,
    booking_cancel,
    booking_cancellation_quote,
    booking_candidates,
    booking_create,
    booking_quote,
    booking_request,
    earliest_window,
)
from marketplace.capacity.services.common import CapacityUnavailable
from marketplace.capacity.services.placements import placement_commit, placements_commit
from marketplace.capacity.services.retiring import (
    provider_pools_resume,
    provider_pools_retire,
    provider_pools_retiring,
)
from marketplace.capacity.services.supply import (
    cluster_connection_create,
    maintenance_window_create,
    pool_approve,
    pool_create,
    pool_reject,
    pool_retire,
    pool_update,
    provider_approve,
    provider_payout_details_set,
    provider_profile_upsert,
    provider_reject,
    residency_policy_set,
)

__all__ = [
    "BookingQuote",
    "BookingRequest",
    "CapacityUnavailable",
    "EarliestWindow",
    "booking_cancel",
    "booking_cancellation_quote",
    "booking_candidates",
    "booking_create",
    "booking_quote",
    "booking_request",
    "cluster_connection_create",
    "earliest_window",
    "maintenance_window_create",
    "placement_commit",
    "placements_commit",
    "policies",
    "pool_approve",
    "pool_create",
    "pool_reject",
    "pool_retire",
    "pool_update",
    "provider_approve",
    "provider_payout_details_set",
    "provider_pools_resume",
    "provider_pools_retire",
    "provider_pools_retiring",
    "provider_profile_upsert",
    "provider_reject",
    "residency_policy_set",
]
