"""Text from outside (paths, names, errors a container's creator chose) made safe to print on
an operator's terminal.

A control character in a bind path or a container name would otherwise reach the terminal
as itself: an escape sequence can clear the screen, move the cursor, retitle the window or
paint a fake "OK"; a carriage return or newline can overwrite or forge a line. Every such
character is shown escaped instead (`\\x1b`, `\\r`, `\\u202e`), so the text stays readable
and tells the truth. Also sizes spelled for people (`format_size`). Standard library only,
nothing imported: `volagent status` uses it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs an import on the fast path; annotations stay lazy
if TYPE_CHECKING:
    from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(code: int) -> str:
    char = chr(code)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI to some terminals), and the
# invisible marks that reorder or hide text (bidirectional overrides, zero-width marks)
_UNSAFE = [
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x061C,
    *range(0x200B, 0x2010),
    *range(0x2028, 0x202F),
    *range(0x2060, 0x2070),
    0xFEFF,
]
_TABLE = {code: _escape(code) for code in _UNSAFE}


def printable(text: str) -> str:
    """`text` with every control and invisible formatting character escaped."""
    if text.isascii() and text.isprintable():
        return text  # the usual case, checked in C
    return text.translate(_TABLE)


def printable_tree(value: object) -> object:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with `printable` applied
    to every string in it, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [printable_tree(v) for v in value]
    return value


def printable_doc(doc: dict[str, Any]) -> dict[str, Any]:
    """`printable_tree` of a JSON object (the status document)."""
    return {printable(k): printable_tree(v) for k, v in doc.items()}


_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_size(n: float, sep: str = " ") -> str:
    """Bytes for people, in binary units: 1536 -> "1.5 KiB"; with `sep=""` as the config
    writes sizes ("1.5KiB")."""
    unit = 0
    while abs(n) >= 1024 and unit < len(_BINARY_UNITS) - 1:
        n /= 1024
        unit += 1
    return f"{n:.0f}{sep}B" if unit == 0 else f"{n:.1f}{sep}{_BINARY_UNITS[unit]}"
