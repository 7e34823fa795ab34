"""Prometheus metrics, in a registry of their own (one per daemon, none global)."""

from __future__ import annotations

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

_FAST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """Every metric volagent exports. Names are prefixed `volagent_`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # the process' own figures (process_resident_memory_bytes, process_open_fds,
        # process_start_time_seconds, CPU), as every Prometheus client exports them
        ProcessCollector(registry=r)
        self.build_info = Gauge(
            "volagent_build_info",
            "Always 1; the version of volagent this host runs",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        self.mount_up = Gauge(
            "volagent_mount_up",
            "1 when the shared filesystem is healthy (mounted or local)",
            registry=r,
        )
        self.mount_state = Gauge(
            "volagent_mount_state", "1 for the current mount state", ["state"], registry=r
        )
        self.probe_seconds = Histogram(
            "volagent_probe_seconds",
            "Duration of mount health probes",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.probe_failures = Counter(
            "volagent_probe_failures", "Mount probes that failed or timed out", registry=r
        )
        self.remounts = Counter("volagent_remounts", "Mounts made after the first", registry=r)
        self.dirs_created = Counter(
            "volagent_directories_created", "Directories created under the mount point", registry=r
        )
        self.late = Counter(
            "volagent_late_volumes",
            "Volumes whose container started before their directory was prepared",
            registry=r,
        )
        self.violations = Counter(
            "volagent_violations", "Binds refused as namespace violations", registry=r
        )
        self.mount_mismatches = Counter(
            "volagent_mount_mismatches",
            "Containers found, after a start, on something other than what volagent prepared "
            "(stopped, their restart policy turned off)",
            registry=r,
        )
        self.directory_walks = Counter(
            "volagent_directory_walks",
            "Walks of a bind's directories on the shared filesystem (each a round trip per "
            "component on NFS)",
            registry=r,
        )
        self.prepare_failures = Counter(
            "volagent_prepare_failures", "Directory preparations that failed", registry=r
        )
        self.docker_connected = Gauge(
            "volagent_docker_connected", "1 while the Docker event stream is connected", registry=r
        )
        self.events = Counter("volagent_docker_events", "Docker events seen", registry=r)
        self.reconnects = Counter(
            "volagent_docker_reconnects", "Reconnections to the Docker event stream", registry=r
        )
        self.containers = Gauge(
            "volagent_containers", "Containers known with binds under the mount point", registry=r
        )
        self.guard_decisions = Counter(
            "volagent_guard_decisions", "Authorization decisions", ["result"], registry=r
        )
        self.volume_lookups = Counter(
            "volagent_guard_volume_lookups",
            "Named volumes looked up in Docker to judge a container that mounts them",
            registry=r,
        )
        self.guard_seconds = Histogram(
            "volagent_guard_decision_seconds",
            "Time to decide an authorization request",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "volagent_config_reloads", "Config reloads by result", ["result"], registry=r
        )
        self.heartbeats = Counter(
            "volagent_heartbeats",
            "Heartbeats of this host by result (written, failed, skipped while unhealthy)",
            ["result"],
            registry=r,
        )
        self.rack_hosts = Gauge(
            "volagent_rack_hosts",
            "Hosts sharing the filesystem, by freshness of their heartbeat (fresh, stale), as of "
            "the last read of the heartbeats (status --rack, each usage pass)",
            ["freshness"],
            registry=r,
        )
        self.registry_claims = Counter(
            "volagent_registry_claims",
            "Claims of binds in the rack's registry by result (registered; held: this host's "
            "entries held the paths already; clash; failed)",
            ["result"],
            registry=r,
        )
        self.usage_records = Counter(
            "volagent_usage_records",
            "Records of namespace use written for gc, by result (written, failed)",
            ["result"],
            registry=r,
        )
        self.asg_reports = Counter(
            "volagent_asg_reports",
            "Reports of this instance as unhealthy to its Auto Scaling group, by result",
            ["result"],
            registry=r,
        )
        self.namespace_bytes = Gauge(
            "volagent_namespace_bytes",
            'Bytes used on the shared filesystem by an app\'s namespace (service "": all of '
            "it), from the last finished usage walk",
            ["app", "service"],
            registry=r,
        )
        self.namespace_inodes = Gauge(
            "volagent_namespace_inodes",
            'Files and directories in an app\'s namespace (service "": all of it)',
            ["app", "service"],
            registry=r,
        )
        self.namespace_measured = Gauge(
            "volagent_namespace_measured_timestamp_seconds",
            "When the usage walk last finished measuring an app's namespace (Unix time)",
            ["app"],
            registry=r,
        )
        self.quota_bytes = Gauge(
            "volagent_namespace_quota_bytes", "The app's limit from [quotas]", ["app"], registry=r
        )
        self.over_quota = Gauge(
            "volagent_namespace_over_quota",
            "1 while the app's namespace uses more than its limit",
            ["app"],
            registry=r,
        )
        self.usage_walk_ops = Counter(
            "volagent_usage_walk_operations",
            "Filesystem operations spent by the usage walk of this host",
            registry=r,
        )
        self.usage_walks = Counter(
            "volagent_usage_walks",
            "Namespace walks of this host by result (finished, interrupted)",
            ["result"],
            registry=r,
        )
        self.usage_walk_budget = Gauge(
            "volagent_usage_walk_budget_ops_per_second",
            "The usage walk's budget, [usage] ops_per_second",
            registry=r,
        )
        # label values known in advance are exported at 0 from the start, so rate() and
        # the alert rules see a series before the first event of its kind
        for counter, values in (
            (self.guard_decisions, ("allow", "deny", "error")),
            (self.heartbeats, ("written", "failed", "skipped")),
            (self.usage_walks, ("finished", "interrupted")),
            (self.config_reloads, ("applied", "refused")),
            (self.registry_claims, ("registered", "held", "clash", "failed")),
        ):
            for value in values:
                counter.labels(result=value)
        for freshness in ("fresh", "stale"):
            self.rack_hosts.labels(freshness=freshness)
        self.set_mount_state(MountState.UNMOUNTED)

    def set_mount_state(self, state: MountState) -> None:
        for s in MountState:
            self.mount_state.labels(state=s).set(1 if s is state else 0)
        self.mount_up.set(1 if state in HEALTHY_MOUNT_STATES else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
