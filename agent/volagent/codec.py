"""The typed declarations of the records hosts share and of the status document: dataclasses
deriving from `Record`, each one's encoder compiled once, when the class is made, into the
dict display a hand-written to_dict was. A record's `format` is "major.minor" or a bare major;
absent, 1.0 (all 0.3.0 wrote, and 1.0 is never written: 0.3.0 reads the same bytes). Older and
newer minor formats are read, unknown keys ignored; a newer major one is refused naming the
file, as is a required field missing or mistyped (an optional one reads as its default)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Self, dataclass_transform

from volagent.errors import RecordError

LOCAL = {"codec": "local"}
NULL_IF_EMPTY = {"codec": "null if empty"}
OMIT_IF_NONE = {"codec": "omit if none"}
_FORMAT = re.compile(r"(\d+)(?:\.(\d+))?")
Convert = Callable[[Any], Any]  # a JSON value made the declared type, or TypeError


@dataclass_transform(field_specifiers=(dataclasses.field,))
class Record:
    """Base of each declaration; `class X(Record, frozen=True)` declares a frozen one."""

    KIND: ClassVar[str] = "record"  # what errors call it
    FORMAT: ClassVar[tuple[int, int]] = (1, 0)
    encode: ClassVar[Callable[[Any], dict[str, Any]]]  # compiled for each class
    _decoders: ClassVar[tuple[tuple[str, Convert, bool], ...]]  # (name, convert, required)

    def __init_subclass__(cls, *, frozen: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=frozen)(cls)
        hints = typing.get_type_hints(cls, localns={cls.__name__: cls})
        shared = [f for f in dataclasses.fields(typing.cast(Any, cls)) if f.metadata != LOCAL]
        cls.encode = _encoder(cls.FORMAT, shared, hints)
        unset = dataclasses.MISSING
        cls._decoders = tuple(
            (f.name, _converter(hints[f.name]), f.default is f.default_factory is unset)
            for f in shared
        )

    @classmethod
    def decode(cls, raw: Any, file: str) -> Self:
        """The record of `raw`, the JSON read from `file` (named in the RecordError)."""
        if not isinstance(raw, dict):
            raise RecordError(f"{file}: a bad {cls.KIND} (not an object)")
        readable(raw, file, cls.FORMAT)
        values = {}
        for name, convert, required in cls._decoders:
            try:
                values[name] = convert(raw[name])
            except (KeyError, TypeError, ValueError):
                if required:
                    raise RecordError(
                        f"{file}: a bad {cls.KIND} ({name} missing or of another type)"
                    ) from None
        return cls(**values)


def readable(raw: dict[str, Any], file: str, reads: tuple[int, int]) -> tuple[int, int]:
    """The format of `raw`, if this volagent (which writes `reads`) can read it."""
    given = raw.get("format", 1)
    found = _FORMAT.fullmatch(str(given)) if type(given) in (int, str) else None
    if found is None:
        raise RecordError(f"{file}: format {given!r} is not one volagent writes")
    major, minor = int(found[1]), int(found[2] or 0)
    if major > reads[0]:
        raise RecordError(
            f"{file}: format {given} is newer than this volagent reads ({reads[0]}.x): "
            "upgrade it (a newer host wrote it)"
        )
    return major, minor


def _encoder(
    fmt: tuple[int, int], fields: list[dataclasses.Field[Any]], hints: dict[str, Any]
) -> Callable[[Any], dict[str, Any]]:
    """The source of the dict display a hand-written encoder would be, compiled."""
    items, omitted = [], []
    for f in fields:
        value, hint = f"o.{f.name}", hints[f.name]
        if typing.get_origin(hint) is list and _is_record(typing.get_args(hint)[0]):
            value = f"[x.encode() for x in {value}]"
        elif _is_record(hint):
            value = f"{value}.encode()"
        elif f.metadata == NULL_IF_EMPTY:
            value = f"{value} or None"
        if f.metadata == OMIT_IF_NONE:
            omitted.append(f" if {value} is not None: d[{f.name!r}] = {value}\n")
        else:
            items.append(f"{f.name!r}: {value}")
    if fmt != (1, 0):
        items.append(f"'format': '{fmt[0]}.{fmt[1]}'")
    source = f"def encode(o):\n d = {{{', '.join(items)}}}\n{''.join(omitted)} return d\n"
    space: dict[str, Any] = {}
    exec(source, space)  # noqa: S102 - built from the field names of a class of ours
    encode: Callable[[Any], dict[str, Any]] = space["encode"]
    return encode


def _is_record(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Record)


def _converter(hint: Any) -> Convert:
    """How a field of type `hint` is read from JSON."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: None, else an X
        convert = _converter(next(a for a in args if a is not type(None)))
        return lambda v: None if v is None else convert(v)
    if hint is Any:
        return lambda v: v
    if hint is float:
        return lambda v: float(_is(v, int | float))
    if origin is list:
        item = _converter(args[0])
        return lambda v: [item(x) for x in _is(v, list)]
    if origin is tuple:
        items = [_converter(a) for a in args]
        return lambda v: tuple(c(x) for c, x in zip(items, _is(v, list), strict=True))
    if origin is dict:
        value = _converter(args[1])
        return lambda v: {_is(k, str): value(x) for k, x in _is(v, dict).items()}
    return lambda v: _is(v, origin or hint)


def _is(v: Any, kind: Any) -> Any:
    """`v` if it is a `kind` (a bool is no number)."""
    if isinstance(v, kind) and (type(v) is not bool or kind is bool):
        return v
    raise TypeError(f"{v!r} is not {kind}")
