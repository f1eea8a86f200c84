"""Wire events and structs declared once: the field list drives parsing and serializing.

An event is a frozen dataclass whose fields say, each once, what they are on the
wire (:func:`wire`: the field kind from :mod:`sottovoce.protocol.fields`, optional or
required, default). :func:`parse` reads a JSON object field by field, in declaration
order, and raises the first :class:`~sottovoce.protocol.fields.ProtocolError`
(so the order of the fields is the order in which a bad frame's faults are reported);
:func:`dump` writes one back. Neither is written per event.

An event is a class decorated with :func:`event` (a nested object: :func:`struct`)
and listed in its module's :func:`registry`, so the server dispatches it;
protocol/events.py shows one. A rule that spans fields (``adds`` and ``removes``
disjoint) is a ``check`` on the last field it needs; it runs right after that field
is read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar, cast, dataclass_transform, overload

from sottovoce.protocol.fields import Kind, ProtocolError, bad

T = TypeVar("T")
D = TypeVar("D")
C = TypeVar("C", bound=type)
Data = dict[str, Any]
#: A rule over the fields read so far (``values``, by attribute) and the object they were
#: read from; raises ProtocolError.
Check = Callable[[Data, Data], None]

_META = "sottovoce.wire"


def _no_default() -> Any:
    raise TypeError("a required field has no default")  # unreachable: required is read


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One field as the wire sees it: declared by :func:`wire`, then completed by
    :func:`struct`/:func:`event` with its attribute, key, default and optionality."""

    kind: Kind[Any]
    key: str = ""
    #: None: required unless the dataclass field has a default.
    required: bool | None = None
    #: Values that mean "not given" (besides a missing key).
    absent: tuple[Any, ...] = (None,)
    omit_default: bool = False
    only_if: Callable[[Data], bool] | None = None
    check: Check | None = None
    inline: bool = False
    emit: bool = True
    # Completed by the decorator:
    attr: str = ""
    optional: bool = False
    default: Callable[[], Any] = _no_default


_MISSING = object()


@overload
def wire(kind: Kind[T], *, required: bool | None = ..., key: str | None = ...,
         absent: tuple[Any, ...] | None = ..., omit_default: bool = ...,
         only_if: Callable[[Data], bool] | None = ..., check: Check | None = ...,
         inline: bool = ..., emit: bool = ...) -> T: ...
@overload
def wire(kind: Kind[T], *, default: D, required: bool | None = ..., key: str | None = ...,
         absent: tuple[Any, ...] | None = ..., omit_default: bool = ...,
         only_if: Callable[[Data], bool] | None = ..., check: Check | None = ...,
         inline: bool = ..., emit: bool = ...) -> T | D: ...
@overload
def wire(kind: Kind[T], *, default_factory: Callable[[], T], required: bool | None = ...,
         key: str | None = ..., absent: tuple[Any, ...] | None = ..., omit_default: bool = ...,
         only_if: Callable[[Data], bool] | None = ..., check: Check | None = ...,
         inline: bool = ..., emit: bool = ...) -> T: ...
def wire(
    kind: Kind[Any],
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    required: bool | None = None,
    key: str | None = None,
    absent: tuple[Any, ...] | None = None,
    omit_default: bool = False,
    only_if: Callable[[Data], bool] | None = None,
    check: Check | None = None,
    inline: bool = False,
    emit: bool = True,
) -> Any:
    """Declare a field: its ``kind``; ``key`` on the wire (default: the attribute name).

    A field with a ``default`` is optional on the wire (missing, or one of the kind's
    ``absent`` values, gives the default) unless ``required=True``; ``omit_default``
    leaves it out of :func:`dump` while it holds its default. ``only_if(values)`` false:
    the field is not read and takes its default (a ``check`` before it refuses it if it
    must not be there). ``check(values, d)`` runs once the field is read. ``inline``: the
    kind reads the whole object, not one key (a struct extended by more fields).
    ``emit=False``: parse only.
    """
    spec = Field(kind=kind, key=key or "", required=required,
                 absent=kind.absent if absent is None else absent,
                 omit_default=omit_default, only_if=only_if, check=check,
                 inline=inline, emit=emit)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={_META: spec})


def _bind(f: dataclasses.Field[Any]) -> Field:
    spec: Field = f.metadata[_META]
    if f.default is not dataclasses.MISSING:
        value = f.default
        default: Callable[[], Any] = lambda: value  # noqa: E731
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory
    else:
        default = _no_default
    has_default = default is not _no_default
    return dataclasses.replace(
        spec,
        attr=f.name,
        key=spec.key or f.name,
        optional=has_default if spec.required is None else not spec.required,
        default=default,
    )


def _declare(cls: C) -> C:
    made: type[Any] = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
    fields = dataclasses.fields(made)
    missing = [f.name for f in fields if _META not in f.metadata]
    if missing:
        raise TypeError(f"{made.__name__}: fields {missing} are not declared with wire()")
    made._wire_fields = tuple(_bind(f) for f in fields)
    return cast(C, made)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(wire,))
def struct(cls: C) -> C:
    """Declare a nested wire object (an envelope, one device's ciphertext)."""
    return _declare(cls)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(wire,))
def event(name: str) -> Callable[[C], C]:
    """Declare a client event called ``name`` on the wire."""

    def declare(cls: C) -> C:
        cls.name = name  # type: ignore[attr-defined]  # ClientEvent.name: ClassVar[str]
        return _declare(cls)

    return declare


S = TypeVar("S", bound="Declared")


class Declared:
    """What :func:`struct` and :func:`event` give a class: its bound field list."""

    __slots__ = ()
    _wire_fields: ClassVar[tuple[Field, ...]] = ()


def parse(cls: type[S], d: Data) -> S:
    """Read ``d`` into ``cls``, field by field; raises :class:`ProtocolError`."""
    values: Data = {}
    for f in cls._wire_fields:
        if f.only_if is not None and not f.only_if(values):
            value = f.default()
        elif f.inline:
            value = f.kind.parse(d, f.key)
        else:
            v = d.get(f.key, _MISSING)
            if f.optional and (v is _MISSING or v in f.absent):
                value = f.default()
            else:
                value = f.kind.parse(None if v is _MISSING else v, f.key)
        values[f.attr] = value
        if f.check is not None:
            f.check(values, d)
    return cls(**values)


def dump(obj: Declared) -> Data:
    """The JSON object of ``obj`` (binary fields base64)."""
    out: Data = {}
    for f in obj._wire_fields:
        if not f.emit:
            continue
        value = getattr(obj, f.attr)
        if f.omit_default and value == f.default():
            continue
        if value is None:
            out[f.key] = None
        elif f.inline:
            out.update(f.kind.dump(value))
        else:
            out[f.key] = f.kind.dump(value)
    return out


class WireStruct(Declared):
    """Base of nested wire objects (declare with :func:`struct`)."""

    __slots__ = ()

    @classmethod
    def from_wire(cls, d: Data) -> Self:
        return parse(cls, d)

    def to_wire(self) -> Data:
        return dump(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Nested(Kind[S]):
    """A JSON object that is one struct; anything else is refused with ``why``."""

    cls: type[S]
    _: dataclasses.KW_ONLY
    why: str = "must be an object"

    def parse(self, v: Any, key: str) -> S:
        if not isinstance(v, dict):
            raise bad(key, self.why)
        return parse(self.cls, v)

    def dump(self, value: S) -> Data:
        return dump(value)


def frame(event: str, data: Data, request_id: str | None = None) -> str:
    """One text frame: ``{"event", "data"[, "requestId"]}`` (compact JSON)."""
    obj: Data = {"event": event, "data": data}
    if request_id is not None:
        obj["requestId"] = request_id
    return json.dumps(obj, separators=(",", ":"))


class ClientEvent(Declared):
    """Base of events a client sends (declare with :func:`event`); ``name`` is the wire
    event name."""

    __slots__ = ()
    name: ClassVar[str]

    @classmethod
    def from_data(cls, d: Data) -> Self:
        """Parse and validate the ``data`` of a frame; raises :class:`ProtocolError`."""
        return parse(cls, d)

    def to_data(self) -> Data:
        return dump(self)

    def to_frame(self, request_id: str | None = None) -> str:
        return frame(self.name, self.to_data(), request_id)


def registry(*events: type[ClientEvent]) -> dict[str, type[ClientEvent]]:
    """Events by wire name, for dispatch; a name given twice fails at import."""
    out: dict[str, type[ClientEvent]] = {}
    for cls in events:
        if cls.name in out:
            raise TypeError(f"two events are called {cls.name!r}")
        out[cls.name] = cls
    return out


__all__ = [
    "ClientEvent",
    "Declared",
    "Field",
    "Nested",
    "ProtocolError",
    "WireStruct",
    "dump",
    "event",
    "frame",
    "parse",
    "registry",
    "struct",
    "wire",
]
