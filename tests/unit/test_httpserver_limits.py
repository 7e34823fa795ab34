"""The bookkeeping behind the HTTP server's per-peer limits."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from volagent.httpserver.limits import (
    BudgetExceeded,
    ByteBudget,
    ConnectionLedger,
    PeerLimits,
    Turnstile,
)

NOBODY = 65534


def test_each_non_root_uid_gets_its_share_and_root_keeps_its_slots() -> None:
    ledger = ConnectionLedger(6, PeerLimits(per_uid_connections=2, root_reserved=2))
    assert ledger.admit(1000) is None
    assert ledger.admit(1000) is None
    refused = ledger.admit(1000)
    assert refused is not None and "uid 1000 already hold 2 connections" in refused
    assert ledger.admit(NOBODY) is None
    assert ledger.admit(NOBODY) is None
    # four taken, two left: both are root's
    refused = ledger.admit(1001)
    assert refused is not None and "not kept for root" in refused
    assert ledger.admit(None) is not None  # TCP peers count as non-root
    assert ledger.admit(0) is None
    assert ledger.admit(0) is None
    refused = ledger.admit(0)
    assert refused is not None and "too many connections (6)" in refused
    ledger.release(1000)
    assert ledger.admit(1001) is None
    assert ledger.by_uid == {1000: 1, NOBODY: 2, 0: 2, 1001: 1}
    # root's own connections never shrink what the others may use
    ledger.release(0)
    ledger.release(0)
    assert ledger.admit(1002) is not None
    assert ledger.total == 4


def test_peers_without_credentials_share_one_share() -> None:
    ledger = ConnectionLedger(10, PeerLimits(per_uid_connections=1, root_reserved=0))
    assert ledger.admit(None) is None
    refused = ledger.admit(None)
    assert refused is not None and "peers without credentials" in refused


def test_without_limits_only_the_total_counts() -> None:
    ledger = ConnectionLedger(2, None)
    assert ledger.admit(1000) is None
    assert ledger.admit(1000) is None
    assert ledger.admit(0) is not None


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_pipelined"):
        PeerLimits(max_pipelined=0)
    with pytest.raises(ValueError, match="root_reserved must leave"):
        ConnectionLedger(4, PeerLimits(root_reserved=4))


def test_byte_budget_refuses_growth_over_its_limit_and_takes_returns() -> None:
    budget = ByteBudget(100)
    budget.change(60)
    with pytest.raises(BudgetExceeded):
        budget.change(41)
    assert budget.used == 60
    budget.change(40)
    budget.change(-100)
    assert budget.used == 0
    ByteBudget(None).change(1 << 40)


async def test_turnstile_gives_one_pass_per_turn_of_the_loop() -> None:
    async def main() -> list[str]:
        gate = Turnstile()
        order: list[str] = []

        async def request(name: str) -> None:
            await gate.wait_turn()
            order.append(name)

        async def ticker() -> None:
            for i in range(40):
                order.append(f"tick{i}")
                await asyncio.sleep(0)

        await asyncio.gather(ticker(), *(request(f"r{i}") for i in range(4)))
        return order

    order = await main()
    # each request had to wait for the loop to turn since the one before it
    positions = [order.index(f"r{i}") for i in range(4)]
    ticks_between = [
        sum(1 for item in order[a:b] if item.startswith("tick"))
        for a, b in itertools.pairwise(positions)
    ]
    assert all(n >= 1 for n in ticks_between), order


async def test_turnstile_serves_root_first_and_accepting_every_other_pass() -> None:
    async def main() -> list[str]:
        gate = Turnstile(share=1.0)
        order: list[str] = []

        async def request(name: str, root: bool = False) -> None:
            await gate.wait_turn(root=root)
            order.append(name)

        # all in one turn: "first" takes the turn's pass, the rest queue in this order
        first = asyncio.ensure_future(request("first"))
        waiting = [asyncio.ensure_future(request(f"user{i}")) for i in range(3)]
        waiting.append(asyncio.ensure_future(request("root", root=True)))
        await asyncio.sleep(0)
        gate.call_in_turn(lambda: order.append("accept"))
        await asyncio.gather(first, *waiting)
        return order

    order = await main()
    assert order[0] == "first"
    assert order.index("root") < order.index("user0")
    assert order.index("accept") <= 2  # not behind every request


async def test_turnstile_keeps_the_loop_for_others_in_proportion_to_work_done() -> None:
    async def main() -> tuple[float, float]:
        gate = Turnstile(share=0.5)
        await gate.wait_turn()
        loop = asyncio.get_running_loop()
        done_at = loop.time()
        gate.charge(0.002)  # 2 ms of work: the next pass waits 2 ms more
        await gate.wait_turn()
        return done_at, loop.time()

    done_at, next_at = await main()
    assert next_at - done_at >= 0.002
