"""Soft quotas: which apps use more of the shared filesystem than `[quotas]` allows, and the
refusal of their new creates when `over_quota = "deny"`.

Over the limit is a warning (the status turns degraded) and a metric; nothing is ever
deleted. The figures come from the last finished usage walk, so a limit is noticed within
one `[usage] interval_s` of being crossed.
"""

from __future__ import annotations

from volagent.config import QuotasConfig
from volagent.state import AgentState
from volagent.terminal import format_size
from volagent.values import Size
from volagent.vocabulary import OverQuota


def over(cfg: QuotasConfig, used: dict[str, int]) -> dict[str, tuple[int, Size]]:
    """The apps over their limit: app -> (bytes used, limit)."""
    out = {}
    for app, n in used.items():
        limit = cfg.limit_of(app)
        if limit is not None and n > limit.bytes:
            out[app] = (n, limit)
    return out


def warning(app: str, used: int, limit: Size, action: OverQuota) -> str:
    then = (
        "new creates of this app are denied"
        if action == OverQuota.DENY
        else "nothing is denied or deleted"
    )
    size = format_size(used, sep="")  # as the config writes sizes, like the limit beside it
    return (
        f"app {app} uses {size} of the shared filesystem, over its quota of {limit} "
        f"({then}): remove data with `volagent gc`, or raise [quotas.apps] {app}"
    )


def refusal(state: AgentState, app: str) -> str | None:
    """Why a new create of `app` is refused for its quota, or None. For the start guard:
    only with `[quotas] over_quota = "deny"` and only while the app is over its limit."""
    if state.config.quotas.over_quota != OverQuota.DENY or not app:
        return None
    reason = state.over_quota.get(app)
    if reason is None:
        return None
    return f"volagent denies this create: {reason}"
