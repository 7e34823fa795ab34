"""The integration test bed: a private Docker engine, the busybox test image, test
containers, and the agent as a real process with private paths.

Importable from benchmarks too (`from tests.integration.testbed import ...`).
"""

from collections.abc import Callable

from tests.integration.testbed.agent import AgentFailed, AgentProcess, agent_env, volagent_cli
from tests.integration.testbed.containers import Containers, app_labels, parallel
from tests.integration.testbed.dockerd import Dockerd, DockerdError
from tests.integration.testbed.image import IMAGE, build_rootfs_tar, ensure_image

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
