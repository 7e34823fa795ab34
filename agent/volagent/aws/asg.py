"""Optional: report this instance unhealthy to its Auto Scaling group when the mount stays
down, so AWS replaces it (`[health] unhealthy_after_s`, 0 = never, the default).

An episode starts when the mount leaves `mounted`/`local` and ends when it is healthy again.
Once an episode has lasted `unhealthy_after_s`, `autoscaling:SetInstanceHealth` marks this
instance Unhealthy, once per episode (the grace period of the group is respected). A failed
report is retried every RETRY_S within the episode, and says which IAM action is missing
when that is the cause. boto3 is imported here only, and only when a report is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from volagent import log
from volagent.aws.imds import Imds
from volagent.config import Config
from volagent.state import AgentState, now_iso

TICK_S = 1.0
RETRY_S = 60.0
CALL_TIMEOUT_S = 30.0
WARNING_KEY = "asg"
ACTION = "autoscaling:SetInstanceHealth"

# (instance id, region) of this instance, found from instance metadata
Identity = Callable[[Config], Awaitable[tuple[str, str]]]


def instance_identity(state: AgentState) -> Identity:
    """This instance's id and region: known already, else asked of instance metadata (the
    mount side's IMDSv2 client); `[mount] region` wins over the metadata's region."""

    async def identity(cfg: Config) -> tuple[str, str]:
        instance_id, region = state.instance_id, cfg.mount.region
        if not instance_id or not region:
            imds = Imds(cfg.aws.imds_endpoint)
            async with asyncio.timeout(CALL_TIMEOUT_S):
                found = await asyncio.to_thread(imds.identity)
            instance_id = instance_id or found.instance_id
            region = region or found.region
            state.instance_id = instance_id
        return instance_id, region

    return identity


def set_unhealthy(cfg: Config, instance_id: str, region: str) -> None:
    """Blocking: marks the instance Unhealthy in its Auto Scaling group."""
    import boto3  # noqa: PLC0415 - heavy; only when a report is due
    from botocore.config import Config as BotoConfig  # noqa: PLC0415

    client: Any = boto3.client(
        "autoscaling",
        region_name=region or None,
        endpoint_url=cfg.aws.endpoint_url or None,
        config=BotoConfig(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3}),
    )
    client.set_instance_health(
        InstanceId=instance_id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=True
    )


def describe_failure(exc: BaseException) -> str:
    """The reason a report failed, with the fix where it is known."""
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str((response.get("Error") or {}).get("Code") or "")
    text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        return f"{text}; fix: allow {ACTION} in the instance role's IAM policy"
    if code == "ValidationError":
        return f"{text}; is this instance in an Auto Scaling group?"
    return text


class AsgReporter:
    """The root task; idle unless `[health] unhealthy_after_s` > 0."""

    def __init__(
        self,
        state: AgentState,
        identity: Identity,
        report: Callable[[Config, str, str], None] = set_unhealthy,
    ) -> None:
        self.state = state
        self.identity = identity
        self.report = report
        self.log = log.get("asg")
        self.since: float | None = None  # monotonic start of the current episode
        self.reported = False
        self._retry_at = 0.0

    async def run(self) -> None:
        while True:
            await self.check(time.monotonic())
            if self.state.mount_healthy:
                await self.state.mount_health_flipped()  # nothing to time while healthy
                continue
            # an unhealthy episode: look again each tick, for its limit (which a config
            # reload may change) or the mount coming back, whichever comes first
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self.state.mount_health_flipped()

    async def check(self, now: float) -> None:
        st = self.state
        limit = st.config.health.unhealthy_after_s
        if st.mount_healthy or limit <= 0:
            if self.since is not None and self.reported:
                self.log.info("asg_episode_over", mount=st.mount.state)
            self.since = None
            self.reported = False
            self._retry_at = 0.0
            st.clear_warning(WARNING_KEY)
            return
        if self.since is None:
            self.since = now
        if self.reported or now - self.since < limit or now < self._retry_at:
            return
        await self._report(now)

    async def _report(self, now: float) -> None:
        st = self.state
        try:
            instance_id, region = await self.identity(st.config)
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await asyncio.to_thread(self.report, st.config, instance_id, region)
        except Exception as exc:
            reason = describe_failure(exc)
            self._retry_at = now + RETRY_S
            st.metrics.asg_reports.labels(result="failed").inc()
            st.warn(WARNING_KEY, f"cannot report this instance unhealthy to Auto Scaling: {reason}")
            self.log.error("asg_report_failed", reason=reason)
            return
        self.reported = True
        st.metrics.asg_reports.labels(result="reported").inc()
        st.warn(
            WARNING_KEY,
            f"the mount has been {st.mount.state} for {now - (self.since or now):.0f} s: "
            f"instance {instance_id} reported Unhealthy to its Auto Scaling group at "
            f"{now_iso()}; it will be replaced",
        )
        self.log.error(
            "asg_reported_unhealthy",
            instance_id=instance_id,
            region=region,
            mount=st.mount.state,
            error=st.mount.error,
        )
