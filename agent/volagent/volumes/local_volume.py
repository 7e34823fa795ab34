"""A volume of Docker's local driver, as the start guard and the Docker watch both read it:
whether it is a mount of its own (`type=nfs4,o=addr=HOST`, `type=none,o=bind,device=PATH`)
and which host path it binds, whether it comes from a request's body or Docker's inspect.

The local driver hands `device`, `type` and `o` to mount(2) at every start of a container
that uses the volume: with `bind` (or `rbind`) among the options it is a bind of `device`,
whatever the type says (the kernel ignores the type of a bind). Option names are matched as
Go's encoding/json matches keys (`go_fold`), so a spelling dockerd accepts is read alike here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def go_fold(key: str) -> str:
    """The case folding Go's encoding/json applies when matching keys to field names."""
    return key.replace("\u212a", "k").replace("\u017f", "s").lower()


@dataclass(frozen=True)
class LocalVolume:
    """A volume of the local driver, with the options that make it a mount of its own."""

    name: str
    type: str
    options: tuple[str, ...]
    device: str

    @property
    def plain(self) -> bool:
        """A volume of the driver's own directory, with no options of its own."""
        return not (self.type or self.options or self.device)

    @property
    def is_bind(self) -> bool:
        return bool({"bind", "rbind"} & set(self.options))

    @property
    def bind_device(self) -> str:
        """The host path it binds at every start ("" when it binds none, or names no
        absolute path: dockerd's mount of it then fails)."""
        return self.device if self.is_bind and self.device.startswith("/") else ""

    @classmethod
    def from_inspect(cls, name: str, data: Mapping[str, Any] | None) -> LocalVolume | None:
        """The volume as Docker's inspect shows it (its `Driver` and `Options`); None for a
        volume of another driver, or none at all."""
        if not data:
            return None
        raw = data.get("Options")
        return local_volume(name, data.get("Driver"), raw if isinstance(raw, Mapping) else {})

    @property
    def nfs_server(self) -> str:
        """The server an NFS volume mounts from ("" when it is not NFS)."""
        if not self.type.startswith("nfs"):
            return ""
        for opt in self.options:
            if opt.startswith("addr="):
                return opt[5:]
        host, sep, _ = self.device.partition(":")
        return host if sep else ""


def local_volume(name: str, driver: Any, opts: Mapping[str, Any]) -> LocalVolume | None:
    """The local driver's volume with its mount options; None for other drivers."""
    if driver not in ("", "local", None):
        return None
    folded = {go_fold(str(k)): str(v) for k, v in opts.items()}
    options = tuple(o.strip() for o in (folded.get("o") or "").split(",") if o.strip())
    return LocalVolume(
        name=name,
        type=(folded.get("type") or "").strip(),
        options=options,
        device=folded.get("device") or "",
    )
