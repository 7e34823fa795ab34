"""The test bed, one place for the unit tests, the integration tests and the benchmarks: a
private Docker engine, the busybox test image, test containers, the agent as a real process
with private paths, the EFS stand-in (efs_standin), AWS on loopback (aws), a Prometheus
server (prometheus), what the disk says (disk) and bounded waiting (waiting).

Fixtures that more than one tree uses are pytest plugins named in tests/conftest.py."""

from collections.abc import Callable

from tests.testbed.agent import AgentFailed, AgentProcess, agent_env, volagent_cli
from tests.testbed.containers import Containers, app_labels, parallel
from tests.testbed.dockerd import Dockerd, DockerdError
from tests.testbed.image import IMAGE, build_rootfs_tar, ensure_image

DockerdFactory = Callable[..., Dockerd]
AgentFactory = Callable[..., AgentProcess]

__all__ = [
    "IMAGE",
    "AgentFactory",
    "AgentFailed",
    "AgentProcess",
    "Containers",
    "Dockerd",
    "DockerdError",
    "DockerdFactory",
    "agent_env",
    "app_labels",
    "build_rootfs_tar",
    "ensure_image",
    "parallel",
    "volagent_cli",
]
