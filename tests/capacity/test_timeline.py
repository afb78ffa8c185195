"""The interval arithmetic behind the no-overbooking check, against a brute-force sweep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.capacity.timeline import Load, earliest_fit, load_at, peak

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


loads_strategy = st.lists(
    st.tuples(st.integers(0, 60), st.integers(1, 30), st.integers(1, 8)).map(
        lambda t: Load(at(t[0]), at(t[0] + t[1]), t[2])
    ),
    max_size=12,
)


def brute_peak(loads: list[Load], start: int, end: int) -> int:
    return max((load_at(loads, at(m)) for m in range(start, end)), default=0)


def test_half_open_windows_do_not_overlap() -> None:
    loads = [Load(at(0), at(10), 8), Load(at(10), at(20), 8)]
    assert peak(loads, at(0), at(20)) == 8
    assert peak(loads, at(10), at(11)) == 8
    assert peak([*loads, Load(at(9), at(11), 1)], at(0), at(20)) == 9


@settings(max_examples=300)
@given(loads=loads_strategy, start=st.integers(0, 80), length=st.integers(1, 40))
def test_peak_equals_the_brute_force_maximum(loads: list[Load], start: int, length: int) -> None:
    # All ends and starts are whole minutes, so sampling every minute sees every level.
    assert peak(loads, at(start), at(start + length)) == brute_peak(loads, start, start + length)


@settings(max_examples=300)
@given(
    loads=loads_strategy,
    capacity=st.integers(1, 16),
    gpus=st.integers(1, 16),
    duration=st.integers(1, 30),
    not_before=st.integers(0, 60),
)
def test_earliest_fit_fits_and_nothing_earlier_does(
    loads: list[Load], capacity: int, gpus: int, duration: int, not_before: int
) -> None:
    found = earliest_fit(
        loads,
        capacity=capacity,
        gpus=gpus,
        duration=timedelta(minutes=duration),
        not_before=at(not_before),
    )
    if gpus > capacity:
        assert found is None
        return
    assert found is not None
    start = int((found - T0).total_seconds() // 60)
    assert brute_peak(loads, start, start + duration) + gpus <= capacity
    for earlier in range(not_before, start):
        assert brute_peak(loads, earlier, earlier + duration) + gpus > capacity
