"""The wait between tries, for every tenacity retry of volagent.

Exponential from `initial`, plus up to `jitter` at random, and never more than `cap` (jitter
included). tenacity's own `wait_exponential_jitter` does the same, but its `initial`
argument is deprecated from 9.2 and its replacement does not exist in the versions volagent
supports, so the sum is written here once.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import tenacity

Wait = Callable[[tenacity.RetryCallState], float]


def exponential_jitter(initial: float, cap: float, jitter: float) -> Wait:
    grow = tenacity.wait_exponential(multiplier=initial, max=cap)

    def wait(retry_state: tenacity.RetryCallState) -> float:
        return min(cap, grow(retry_state) + random.uniform(0, jitter))  # noqa: S311 - spreads retries

    return wait
