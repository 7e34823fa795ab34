"""Suite-wide settings: a safe environment, hypothesis without wall-clock deadlines, the
root requirement of tests marked `root`, `docker` or `mount`, and the test bed's shared
fixtures."""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Iterator

import hypothesis
import pytest

# Fixtures shared by the test trees live with the test bed they start (tests/testbed/);
# tests ask for them by name.
pytest_plugins = ["tests.testbed.aws"]

# No test may reach real AWS or a developer's own volagent: AWS goes to loopback with fake
# credentials, boto3 never looks for instance metadata by itself, and no inherited variable
# picks another config or socket.
for _name in ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_PROFILE", "VOLAGENT_CONFIG"):
    os.environ.pop(_name, None)
os.environ.pop("VOLAGENT_SOCKET", None)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"

# The machine is shared and noisy: no per-example deadline, no "too slow" health check.
hypothesis.settings.register_profile(
    "volagent",
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "volagent"))

IS_ROOT = os.geteuid() == 0
# Why a test needs root, by marker: `root` itself (directories given to other users, the
# parents volagent makes root's, namespaces), the test bed's private dockerd and real mounts.
NEEDS_ROOT = {
    "root": "needs root: it gives directories to other users, or volagent makes root's parents",
    "docker": "needs root: it starts a private dockerd",
    "mount": "needs root: it makes real mounts (bind, tmpfs, FUSE)",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need root skip, saying why, when the suite runs as another user (`make
    test` runs as root; so does CI)."""
    if IS_ROOT:
        return
    for item in items:
        for marker, reason in NEEDS_ROOT.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=f"{reason} (run as root)"))
                break


@pytest.fixture
def docker_py_failed_connects() -> Iterator[None]:
    """For a test whose Docker does not answer: docker-py (7.x) leaves the socket of a failed
    connect to the garbage collector (UnixHTTPConnection.connect), so volagent cannot close
    it. It is collected here with its ResourceWarning ignored, not in whichever test the
    collector happens to run next; every other unclosed resource stays an error."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed <socket.socket", ResourceWarning)
        yield
        gc.collect()
