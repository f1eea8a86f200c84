"""One read-only attribute that reads through a dotted path on its owner.

A class that hands out parts of an object it holds (``Group`` and its epoch state,
``Member`` and its leaf) would otherwise spell each one as a three-line
``@property``. ``suite = ReadOnly[CipherSuite]("_state.suite")`` states the same
once: reading ``group.suite`` returns ``group._state.suite``, and assigning to it
raises :class:`AttributeError`, as for any property without a setter.

It is a ``property`` whose getter is :func:`operator.attrgetter` (or
:func:`operator.itemgetter`, for the named fields of a tuple subclass built once per
media frame), so a read runs no Python frame and costs no more than a hand-written
property.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, Generic, Never, Self, TypeVar, overload

__all__ = ["ReadOnly"]

T = TypeVar("T")


class ReadOnly(property, Generic[T]):
    """A read-only attribute whose value is ``attrgetter(path)`` of the instance, or
    ``itemgetter(path)`` when ``path`` is an index (a field of a tuple subclass)."""

    def __init__(self, path: str | int, doc: str | None = None) -> None:
        super().__init__(itemgetter(path) if isinstance(path, int) else attrgetter(path))
        self.path = path
        self.__doc__ = doc if doc is not None else f"Reads ``{path}``."

    def __repr__(self) -> str:
        return f"ReadOnly({self.path!r})"

    if TYPE_CHECKING:
        # Types only: at run time ``property.__get__`` (C) does the work.
        @overload
        def __get__(self, instance: None, owner: type | None = None, /) -> Self: ...

        @overload
        def __get__(self, instance: object, owner: type | None = None, /) -> T: ...

        def __get__(self, instance: object, owner: type | None = None, /) -> Any: ...

        def __set__(self, instance: object, value: Never, /) -> None: ...
