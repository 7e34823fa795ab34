"""The domain's value types, parsed once where they enter (the config, a container's labels):
owners, directory modes, sizes, and the names of racks, apps and services."""

from __future__ import annotations

import re
from dataclasses import dataclass

# a rack, app or service name: one path component, lower case, as Convox names them
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "B": 1,
    **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGTP")},
    **{f"{p}IB": 1024 ** (i + 1) for i, p in enumerate("KMGTP")},
}


@dataclass(frozen=True)
class Owner:
    """A numeric owner, `UID:GID`."""

    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


def parse_owner(text: str) -> Owner:
    """`"1000:1000"` or `"1000"` (gid = uid) to an Owner; raises ValueError."""
    uid_s, sep, gid_s = text.strip().partition(":")
    if not sep:
        gid_s = uid_s
    if not (uid_s.isdigit() and gid_s.isdigit()):
        raise ValueError(f"{text!r} is not a numeric UID:GID")
    uid, gid = int(uid_s), int(gid_s)
    if uid >= 2**32 - 1 or gid >= 2**32 - 1:
        raise ValueError(f"{text!r} is out of range")
    return Owner(uid, gid)


class Size:
    """A size from the config, such as `"50GiB"`: the text as written and its bytes, parsed
    once at load."""

    __slots__ = ("bytes", "text")

    def __init__(self, text: str) -> None:
        match = _SIZE_RE.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a size like 500MB or 50GiB")
        number, unit = match.groups()
        self.text = text.strip()
        self.bytes = int(float(number) * _SIZE_UNITS[(unit or "B").upper()])
        if self.bytes <= 0:
            raise ValueError(f"{text!r} is not a positive size")

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Size({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Size) and other.bytes == self.bytes

    def __hash__(self) -> int:
        return hash(self.bytes)


def parse_mode(text: str) -> int:
    """`"0750"` to 0o750; only permission bits (and setgid/sticky) are allowed."""
    if not re.fullmatch(r"0?[0-7]{3,4}", text.strip()):
        raise ValueError(f"{text!r} is not an octal mode like 0755")
    mode = int(text, 8)
    if mode & ~0o3777:
        raise ValueError(f"{text!r}: setuid is not allowed on directories volagent creates")
    return mode
