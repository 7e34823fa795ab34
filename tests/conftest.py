"""Suite-wide settings: a safe environment, hypothesis without wall-clock deadlines, the
root requirement of tests marked `docker` or `mount`, and the test bed's shared fixtures."""

from __future__ import annotations

import os

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
NOT_ROOT_REASON = (
    "needs root: the test bed starts a private dockerd and makes real mounts "
    "(run `make test` as root; CI does)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason=NOT_ROOT_REASON)
    for item in items:
        if item.get_closest_marker("docker") or item.get_closest_marker("mount"):
            item.add_marker(skip)
