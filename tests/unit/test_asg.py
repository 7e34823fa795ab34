"""The Auto Scaling report's episodes: nothing while healthy or when off, one report once the
mount has been down `unhealthy_after_s`, none again in the same episode, a new episode after
recovery, retries after a failure with the missing IAM action named."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.unit.factories import make_state

from volagent.aws import asg
from volagent.config import Config, from_dict
from volagent.state import AgentState

CLOSED = "http://127.0.0.1:9"  # loopback discard port: nobody answers


class AccessDenied(Exception):
    response = {"Error": {"Code": "AccessDenied", "Message": "not allowed"}}  # noqa: RUF012


def make(tmp_path: Path, after: float) -> tuple[AgentState, asg.AsgReporter, list[str]]:
    st = make_state(
        tmp_path,
        mount_state=None,
        docker_state=None,
        mount={"region": "us-east-1"},
        aws={"imds_endpoint": CLOSED},
        health={"unhealthy_after_s": after},
    )
    st.instance_id = "i-0abc"
    calls: list[str] = []

    def report(cfg: Config, instance_id: str, region: str) -> None:
        calls.append(instance_id)

    return st, asg.AsgReporter(st, asg.instance_identity(st), report=report), calls


async def test_one_report_per_episode(tmp_path: Path) -> None:
    st, rep, calls = make(tmp_path, after=10)

    st.set_mount_state("mounted")
    await rep.check(0)
    st.set_mount_state("stalled")
    await rep.check(100)
    await rep.check(109)
    assert calls == []
    await rep.check(110)
    await rep.check(200)
    assert calls == ["i-0abc"]
    assert any("reported Unhealthy" in w for w in st.warnings)
    st.set_mount_state("mounted")
    await rep.check(201)
    assert st.warnings == []
    st.set_mount_state("unmounted")
    await rep.check(300)
    await rep.check(310)
    assert calls == ["i-0abc", "i-0abc"]
    assert (
        st.metrics.registry.get_sample_value("volagent_asg_reports_total", {"result": "reported"})
        == 2
    )


async def test_off_by_default_and_with_zero(tmp_path: Path) -> None:
    st, rep, calls = make(tmp_path, after=0)
    st.set_mount_state("unmounted")
    for t in (0, 1000, 100000):
        await rep.check(t)
    assert calls == []
    assert from_dict({}).health.unhealthy_after_s == 0


async def test_failure_names_the_iam_action_and_retries(tmp_path: Path) -> None:
    st, _, _ = make(tmp_path, after=1)
    attempts: list[float] = []

    def denied(cfg: Config, instance_id: str, region: str) -> None:
        attempts.append(1)
        raise AccessDenied("An error occurred (AccessDenied) when calling SetInstanceHealth")

    rep = asg.AsgReporter(st, asg.instance_identity(st), report=denied)
    st.set_mount_state("stalled")

    await rep.check(0)
    await rep.check(1)
    await rep.check(2)  # backing off
    assert len(attempts) == 1
    await rep.check(1 + asg.RETRY_S)
    assert len(attempts) == 2
    [warning] = st.warnings
    assert "autoscaling:SetInstanceHealth" in warning
    assert (
        st.metrics.registry.get_sample_value("volagent_asg_reports_total", {"result": "failed"})
        == 2
    )


async def test_unknown_instance_id_is_a_clear_failure(tmp_path: Path) -> None:
    st, rep, calls = make(tmp_path, after=1)
    st.instance_id = ""
    st.set_mount_state("stalled")
    await rep.check(0)
    await rep.check(5)
    assert calls == []
    assert any("instance metadata" in w and "unreachable" in w for w in st.warnings)


@pytest.mark.parametrize(
    ("code", "expected"),
    [("AccessDenied", "autoscaling:SetInstanceHealth"), ("ValidationError", "Auto Scaling group")],
)
def test_describe_failure(code: str, expected: str) -> None:
    exc = Exception("boom")
    exc.response = {"Error": {"Code": code}}  # type: ignore[attr-defined]
    assert expected in asg.describe_failure(exc)


async def test_while_healthy_the_reporter_waits_for_the_mount_to_flip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st, rep, _ = make(tmp_path, after=10)
    looks: list[str] = []
    real_check = rep.check

    async def check(now: float) -> None:
        looks.append(st.mount.state)
        await real_check(now)

    monkeypatch.setattr(rep, "check", check)

    st.set_mount_state("mounted")
    task = asyncio.create_task(rep.run())
    for _ in range(50):
        await asyncio.sleep(0)
    assert looks == ["mounted"]  # one look, then waiting: no ticking while healthy
    st.set_mount_state("mounted")  # a state set again that flips nothing wakes nobody
    for _ in range(50):
        await asyncio.sleep(0)
    assert looks == ["mounted"]
    st.set_mount_state("stalled")
    for _ in range(50):
        await asyncio.sleep(0)
    assert looks == ["mounted", "stalled"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
