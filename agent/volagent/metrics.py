"""Prometheus metrics, in a registry of their own (one per daemon, none global)."""

from __future__ import annotations

import functools

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from volagent import __version__
from volagent.vocabulary import HEALTHY_MOUNT_STATES, MountState

# seconds (the client takes them as floats)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric volagent exports. Names are prefixed `volagent_`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # the process' own figures (process_resident_memory_bytes, process_open_fds,
        # process_start_time_seconds, CPU), as every Prometheus client exports them
        ProcessCollector(registry=r)
        counter = functools.partial(Counter, registry=r)
        gauge = functools.partial(Gauge, registry=r)
        histogram = functools.partial(Histogram, registry=r, buckets=_FAST_BUCKETS)
        self.build_info = gauge(
            "volagent_build_info", "Always 1; the version of volagent this host runs", ["version"]
        )
        self.build_info.labels(version=__version__).set(1)
        self.mount_up = gauge(
            "volagent_mount_up", "1 when the shared filesystem is healthy (mounted or local)"
        )
        self.mount_state = gauge("volagent_mount_state", "1 for the current mount state", ["state"])
        self.probe_seconds = histogram("volagent_probe_seconds", "Duration of mount health probes")
        self.probe_failures = counter(
            "volagent_probe_failures", "Mount probes that failed or timed out"
        )
        self.remounts = counter("volagent_remounts", "Mounts made after the first")
        self.dirs_created = counter(
            "volagent_directories_created", "Directories created under the mount point"
        )
        self.late = counter(
            "volagent_late_volumes",
            "Volumes whose container started before their directory was prepared",
        )
        self.violations = counter("volagent_violations", "Binds refused as namespace violations")
        self.mount_mismatches = counter(
            "volagent_mount_mismatches",
            "Containers found, after a start, on something other than what volagent prepared "
            "(stopped, their restart policy turned off)",
        )
        self.directory_walks = counter(
            "volagent_directory_walks",
            "Walks of a bind's directories on the shared filesystem (each a round trip per "
            "component on NFS)",
        )
        self.prepare_failures = counter(
            "volagent_prepare_failures", "Directory preparations that failed"
        )
        self.docker_connected = gauge(
            "volagent_docker_connected", "1 while the Docker event stream is connected"
        )
        self.events = counter("volagent_docker_events", "Docker events seen")
        self.reconnects = counter(
            "volagent_docker_reconnects", "Reconnections to the Docker event stream"
        )
        self.containers = gauge(
            "volagent_containers", "Containers known with binds under the mount point"
        )
        self.guard_decisions = counter(
            "volagent_guard_decisions", "Authorization decisions", ["result"]
        )
        self.volume_lookups = counter(
            "volagent_guard_volume_lookups",
            "Named volumes looked up in Docker to judge a container that mounts them",
        )
        self.guard_seconds = histogram(
            "volagent_guard_decision_seconds", "Time to decide an authorization request"
        )
        self.config_reloads = counter(
            "volagent_config_reloads", "Config reloads by result", ["result"]
        )
        self.heartbeats = counter(
            "volagent_heartbeats",
            "Heartbeats of this host by result (written, failed, skipped while unhealthy)",
            ["result"],
        )
        self.rack_hosts = gauge(
            "volagent_rack_hosts",
            "Hosts sharing the filesystem, by freshness of their heartbeat (fresh, stale), as of "
            "the last read of the heartbeats (status --rack, each usage pass)",
            ["freshness"],
        )
        self.registry_claims = counter(
            "volagent_registry_claims",
            "Claims of binds in the rack's registry by result (registered; held: this host's "
            "entries held the paths already; clash; failed)",
            ["result"],
        )
        self.usage_records = counter(
            "volagent_usage_records",
            "Records of namespace use written for gc, by result (written, failed)",
            ["result"],
        )
        self.asg_reports = counter(
            "volagent_asg_reports",
            "Reports of this instance as unhealthy to its Auto Scaling group, by result",
            ["result"],
        )
        self.namespace_bytes = gauge(
            "volagent_namespace_bytes",
            'Bytes used on the shared filesystem by an app\'s namespace (service "": all of '
            "it), from the last finished usage walk",
            ["app", "service"],
        )
        self.namespace_inodes = gauge(
            "volagent_namespace_inodes",
            'Files and directories in an app\'s namespace (service "": all of it)',
            ["app", "service"],
        )
        self.namespace_measured = gauge(
            "volagent_namespace_measured_timestamp_seconds",
            "When the usage walk last finished measuring an app's namespace (Unix time)",
            ["app"],
        )
        self.quota_bytes = gauge(
            "volagent_namespace_quota_bytes", "The app's limit from [quotas]", ["app"]
        )
        self.over_quota = gauge(
            "volagent_namespace_over_quota",
            "1 while the app's namespace uses more than its limit",
            ["app"],
        )
        self.usage_walk_ops = counter(
            "volagent_usage_walk_operations",
            "Filesystem operations spent by the usage walk of this host",
        )
        self.usage_walks = counter(
            "volagent_usage_walks",
            "Namespace walks of this host by result (finished, interrupted)",
            ["result"],
        )
        self.usage_walk_budget = gauge(
            "volagent_usage_walk_budget_ops_per_second",
            "The usage walk's budget, [usage] ops_per_second",
        )
        # label values known in advance are exported at 0 from the start, so rate() and
        # the alert rules see a series before the first event of its kind
        for by_result, values in (
            (self.guard_decisions, ("allow", "deny", "error")),
            (self.heartbeats, ("written", "failed", "skipped")),
            (self.usage_walks, ("finished", "interrupted")),
            (self.config_reloads, ("applied", "refused")),
            (self.registry_claims, ("registered", "held", "clash", "failed")),
        ):
            for value in values:
                by_result.labels(result=value)
        for freshness in ("fresh", "stale"):
            self.rack_hosts.labels(freshness=freshness)
        self.set_mount_state(MountState.UNMOUNTED)

    def set_mount_state(self, state: MountState) -> None:
        for s in MountState:
            self.mount_state.labels(state=s).set(1 if s is state else 0)
        self.mount_up.set(1 if state in HEALTHY_MOUNT_STATES else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
