"""ReadOnly: a property that reads a dotted attribute path or a tuple index."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sottovoce.readonly import ReadOnly


class _Inner:
    def __init__(self) -> None:
        self.value = 7


class _Holder:
    __slots__ = ("_inner",)

    def __init__(self) -> None:
        self._inner = _Inner()

    value = ReadOnly[int]("_inner.value")


@dataclass(frozen=True, slots=True)
class _Frozen:
    inner: _Inner

    value = ReadOnly[int]("inner.value")


class _Pair(tuple[int, bytes]):
    __slots__ = ()

    number = ReadOnly[int](0, "the number")
    data = ReadOnly[bytes](1)


def test_reads_through_the_path_and_follows_changes() -> None:
    h = _Holder()
    assert h.value == 7
    h._inner.value = 9
    assert h.value == 9


def test_assignment_and_deletion_are_refused() -> None:
    h = _Holder()
    with pytest.raises(AttributeError):
        h.value = 3  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        del h.value
    assert h.value == 7


def test_frozen_dataclass_does_not_take_it_for_a_field() -> None:
    f = _Frozen(_Inner())
    assert f.value == 7
    assert [name for name in _Frozen.__dataclass_fields__] == ["inner"]


def test_index_reads_a_tuple_field() -> None:
    p = _Pair((4, b"x"))
    assert (p.number, p.data) == (4, b"x")
    assert _Pair.number.__doc__ == "the number"
    assert _Pair.data.__doc__ == "Reads ``1``."


def test_class_access_gives_the_descriptor() -> None:
    assert isinstance(_Holder.value, ReadOnly)
    assert repr(_Holder.value) == "ReadOnly('_inner.value')"
