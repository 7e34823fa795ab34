"""One reading of a local-driver volume for the guard and the Docker watch: what it binds,
from a create body's options or from Docker's inspect alike."""

from __future__ import annotations

import pytest

from volagent.volumes.local_volume import LocalVolume, local_volume


def inspected(options: dict[str, str], driver: str = "local") -> LocalVolume | None:
    return LocalVolume.from_inspect("v", {"Driver": driver, "Options": options})


@pytest.mark.parametrize(
    ("options", "device"),
    [
        ({"type": "none", "o": "bind", "device": "/srv/data"}, "/srv/data"),
        ({"type": "none", "o": "rw, rbind", "device": "/srv/data"}, "/srv/data"),
        # the kernel ignores the type of a bind: it binds the device all the same
        ({"type": "ext4", "o": "bind", "device": "/srv/data"}, "/srv/data"),
        # option names matched as Go matches them, whatever their case
        ({"TYPE": "none", "O": "bind", "DEVIce": "/srv/data"}, "/srv/data"),
        ({"type": "none", "o": "bind", "device": "relative/data"}, ""),
        ({"type": "nfs4", "o": "addr=10.0.0.1", "device": ":/export"}, ""),
        ({}, ""),
    ],
)
def test_what_a_local_volume_binds_is_read_alike_from_inspect_and_request(
    options: dict[str, str], device: str
) -> None:
    from_inspect = inspected(options)
    from_request = local_volume("v", "local", options)
    assert from_inspect == from_request
    assert from_inspect is not None
    assert from_inspect.bind_device == device


def test_volumes_of_other_drivers_or_none_at_all_are_not_the_local_drivers() -> None:
    assert inspected({"o": "bind", "device": "/x"}, driver="rexray") is None
    assert LocalVolume.from_inspect("v", None) is None
    assert LocalVolume.from_inspect("v", {}) is None


def test_options_that_are_not_a_mapping_count_as_none() -> None:
    vol = LocalVolume.from_inspect("v", {"Driver": "local", "Options": None})
    assert vol is not None and vol.plain and vol.bind_device == ""
