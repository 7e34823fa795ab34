"""The wait between tries: exponential from `initial`, a random share of `jitter` on top,
never more than the cap, and no deprecated tenacity argument on the way."""

from __future__ import annotations

import warnings

import tenacity

from volagent.retrying import exponential_jitter


def _state(attempt: int) -> tenacity.RetryCallState:
    rs = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    rs.attempt_number = attempt
    return rs


def test_waits_grow_from_initial_and_stop_at_the_cap() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wait = exponential_jitter(0.25, cap=2.0, jitter=0.1)
        waits = [wait(_state(n)) for n in range(1, 9)]
    assert 0.25 <= waits[0] <= 0.35
    assert 0.5 <= waits[1] <= 0.6
    assert 1.0 <= waits[2] <= 1.1
    assert waits[3:] == [2.0] * 5  # the cap holds with the jitter included
