"""How the mount side tells the rest of volagent: the mount status, `mount_dev`, warnings,
metrics, log events, and the `on_healthy` call each time the mount becomes healthy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from volagent.config import Config
from volagent.mount.target import Target
from volagent.state import AgentState
from volagent.vocabulary import MountState, MountType

LOCAL_WARNING = "mount.local"
PROBE_WARNING = "mount.probe"
IMMUTABLE_WARNING = "mount.immutable"


class Reporter:
    """The mount side's writes to AgentState, in one place."""

    def __init__(self, state: AgentState, on_healthy: Callable[[], None], logger: Any) -> None:
        self.state = state
        self._on_healthy = on_healthy
        self.log = logger

    def show(self, cfg: Config, target: Target | None) -> None:
        """What the status document says is (to be) mounted where."""
        m = self.state.mount
        m.mount_point = cfg.mount_point
        if target is not None:
            m.type = target.type
            m.source = target.source
            m.file_system_id = target.file_system_id
        elif not m.type:
            # until a target is found: what the config names (efs and nfs4 find their source)
            m.type = cfg.mount.type
            m.source = cfg.mount.local_path if m.type == MountType.LOCAL else cfg.mount.source
            m.file_system_id = cfg.mount.file_system_id

    def unhealthy(self, state: MountState, error: str | None) -> None:
        self.state.mount_dev = None
        self.state.mount_epoch += 1
        self.state.set_mount_state(state, error)

    def mounting(self, error: str | None = None, keep_error: bool = True) -> None:
        """`mounting`, keeping the last error on show until a mount succeeds."""
        if keep_error and error is None:
            error = self.state.mount.error
        self.unhealthy(MountState.MOUNTING, error)

    def healthy(
        self,
        target: Target,
        mount_point: str,
        dev: int,
        seconds: float | None,
        problem: str | None = None,
    ) -> None:
        """A probe answered: the mount is healthy (`problem`: it answers, but the canary
        failed, e.g. the filesystem is full)."""
        st = self.state
        was = st.mount.state == target.healthy_state
        if seconds is not None:
            st.metrics.probe_seconds.observe(seconds)
            st.mount.last_probe_ms = round(seconds * 1000, 3)
        st.mount_dev = dev
        st.set_mount_state(target.healthy_state, problem)
        if problem:
            st.warn(PROBE_WARNING, f"{mount_point}: {problem}")
        else:
            st.clear_warning(PROBE_WARNING)
        if target.is_local:
            why = "EFS could not be had" if target.fallback else "mount type is local"
            st.warn(
                LOCAL_WARNING,
                f"data is not shared: {mount_point} is the local directory {target.source} ({why})",
            )
        else:
            st.clear_warning(LOCAL_WARNING)
        if was:
            return
        self.log.info(
            "mount.healthy",
            state=target.healthy_state,
            mount_point=mount_point,
            type=target.type,
            source=target.source,
            probe_ms=st.mount.last_probe_ms,
        )
        try:
            self._on_healthy()
        except Exception as exc:
            self.log.error("mount.on_healthy_failed", error=repr(exc))

    def stalled(self, mount_point: str, timeout: float, count: int) -> None:
        self.state.metrics.probe_failures.inc()
        error = (
            f"probe did not finish within {timeout:g}s ({count} in a row): "
            "the filesystem is not answering"
        )
        if self.state.mount.state != MountState.STALLED:
            self.log.warning("mount.stalled", mount_point=mount_point, error=error)
        self.unhealthy(MountState.STALLED, error)

    def immutable_unsupported(self, mount_point: str, why: str) -> None:
        self.state.warn(
            IMMUTABLE_WARNING,
            f"{mount_point} cannot be made immutable ({why}): while unmounted, writes under "
            "it would land on local disk",
        )

    def immutable_ok(self) -> None:
        self.state.clear_warning(IMMUTABLE_WARNING)
