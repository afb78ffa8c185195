"""Invariant 3 under contention, on PostgreSQL: many clients, each on its own connection, book
overlapping windows at once while providers add maintenance and shrink pools; afterwards no pool
has more GPUs booked (plus maintenance) than it has at any instant."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from marketplace.capacity import services
from marketplace.capacity.models import Booking, MaintenanceWindow, Pool
from marketplace.errors import PartageError
from tests.capacity import factories

pytestmark = [pytest.mark.pg, pytest.mark.django_db(transaction=True)]

THREADS = 24
REQUESTS_PER_THREAD = 6


def sweep_violations(pool: Pool) -> list[str]:
    """Check every instant where the load can change: each booking or maintenance start."""
    bookings = list(Booking.objects.filter(pool=pool, status=Booking.Status.CONFIRMED))
    windows = list(MaintenanceWindow.objects.filter(pool=pool))
    problems = []
    for instant in {b.start for b in bookings} | {w.start for w in windows}:
        booked = sum(b.gpu_count for b in bookings if b.start <= instant < b.end)
        down = sum(w.gpu_count or pool.gpu_count for w in windows if w.start <= instant < w.end)
        if booked + down > pool.gpu_count:
            problems.append(
                f"{pool.public_id} at {instant}: {booked} booked + {down} down > {pool.gpu_count}"
            )
    return problems


def test_concurrent_overlapping_bookings_never_overbook(org_a, org_b) -> None:
    assert connection.vendor == "postgresql"
    pools = [factories.pool(gpus=8, price="1.00"), factories.pool(gpus=5, price="2.00")]
    base = timezone.now().replace(second=0, microsecond=0) + timedelta(days=3)
    services.maintenance_window_create(
        pool=pools[0],
        start=base + timedelta(minutes=60),
        end=base + timedelta(minutes=90),
        gpu_count=3,
    )
    orgs = [org_a, org_b]
    barrier = threading.Barrier(THREADS)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def request(number: int, rng: random.Random) -> None:
        """Mostly bookings; every fourth client is a provider adding maintenance windows or
        shrinking a pool, the other writes that add load to a pool."""
        start = base + timedelta(minutes=rng.randrange(0, 180, 5))
        end = start + timedelta(minutes=rng.randrange(5, 120, 5))
        if number % 4 == 3:
            pool = Pool.objects.get(pk=rng.choice(pools).pk)
            if rng.random() < 0.2:
                services.pool_update(
                    provider=pool.provider,
                    pool_id=pool.public_id,
                    changes={"gpu_count": pool.gpu_count - 1},
                )
            else:
                services.maintenance_window_create(
                    pool=pool, start=start, end=end, gpu_count=rng.randint(1, 3)
                )
            return
        services.booking_create(
            organization=orgs[number % 2],
            flavor="h100-80g",
            gpu_count=rng.randint(1, 5),
            start=start,
            end=end,
            pool_id=rng.choice([None, None, pools[0].public_id, pools[1].public_id]),
        )

    def client(number: int) -> None:
        rng = random.Random(number)
        try:
            barrier.wait()
            for _ in range(REQUESTS_PER_THREAD):
                try:
                    request(number, rng)
                    result = "booked" if number % 4 != 3 else "provider write"
                except PartageError as e:
                    result = e.code
                with lock:
                    outcomes.append(result)
        except BaseException as e:  # surfaced below, with the thread's own traceback
            errors.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[0]
    assert len(outcomes) == THREADS * REQUESTS_PER_THREAD
    # The test only means something if clients really competed: some won, some were refused.
    assert outcomes.count("booked") >= 10
    assert outcomes.count("capacity_unavailable") >= 10
    assert outcomes.count("provider write") >= 3
    violations = [
        v
        for pool in Pool.objects.filter(pk__in=[p.pk for p in pools])
        for v in sweep_violations(pool)
    ]
    assert violations == []
