"""A room's shared profile (name, topic, admins) and the rules every commit must keep
(docs/architecture.md §Rooms, "Room rules"; wire format in docs/protocol.md §Rooms).

The profile is a GroupContext extension of a private-use type (RFC 9420 §13.4), so
every member of an epoch sees the same name, topic and admins, and the key schedule
binds them. One rule function serves both sides: the delivery service calls it on
the proposals :func:`sottovoce.mls.public.check_member_commit` found in a commit
(so a commit that breaks the rules never becomes an epoch's commit), and every
member calls it again on the commit it processes (defence in depth)::

    committer is an admin ──► anything
    committer is a member ──► Add, Update, PSK; Remove of its own user's leaves;
                              a Remove by reference that its target proposed itself
                              (leaving), and of that account's other devices with
                              it; a Remove of a device the directory revoked
    nobody left is an admin ──► every member acts as one (a room is never orphaned)
    a room without a profile (made before profiles) ──► no rules until one is set

Usernames, not devices, hold roles: every device of an admin account acts as admin.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError, RemoteError, UsageError
from sottovoce.limits import MAX_ROOM_MEMBERS, MAX_ROOM_NAME_BYTES
from sottovoce.mls.common import Extension
from sottovoce.mls.messages import (
    GroupContextExtensions,
    LeafNode,
    Proposal,
    ReInit,
    Remove,
    find_extension,
)
from sottovoce.mls.public import leaf_identity
from sottovoce.protocol.fields import ID_RE

__all__ = [
    "MAX_ROOM_TOPIC_BYTES",
    "PROFILE_VERSION",
    "ROOM_PROFILE_EXTENSION",
    "Device",
    "RoomProfile",
    "RuleBroken",
    "check_commit_rules",
    "members_of",
    "profile_extension",
    "profile_of",
    "removed_others",
    "with_profile",
]

#: The extension type of the profile: RFC 9420 §17.3 reserves 0xF000-0xFFFF for
#: private use.
ROOM_PROFILE_EXTENSION = 0xF5A1
PROFILE_VERSION = 1
MAX_ROOM_TOPIC_BYTES = 1024
#: A user id or device id is at most this many bytes (protocol/fields.py's ID kind).
_MAX_ID_BYTES = 128

#: (username, device id) of a member device.
Device = tuple[str, str]


class RuleBroken(RemoteError):
    """A commit breaks the room's rules (the server refuses it; members reject it)."""


def _text(raw: bytes, what: str, limit: int, *, empty: bool) -> str:
    if len(raw) > limit or (not raw and not empty):
        raise DecodeError(f"the room {what} is not 1-{limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"the room {what} is not UTF-8") from None


@dataclass(frozen=True, slots=True)
class RoomProfile:
    """What every member sees of a room: its name, topic and admin usernames."""

    name: str
    topic: str = ""
    admins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name, topic = self.name.encode("utf-8"), self.topic.encode("utf-8")
        if not name or len(name) > MAX_ROOM_NAME_BYTES:
            raise UsageError(f"a room name is 1-{MAX_ROOM_NAME_BYTES} bytes")
        if len(topic) > MAX_ROOM_TOPIC_BYTES:
            raise UsageError(f"a room topic is at most {MAX_ROOM_TOPIC_BYTES} bytes")
        if len(self.admins) > MAX_ROOM_MEMBERS or list(self.admins) != sorted(set(self.admins)):
            raise UsageError("room admins are sorted, distinct and at most one per member")
        for admin in self.admins:
            if len(admin) > _MAX_ID_BYTES or not ID_RE.fullmatch(admin) or "/" in admin:
                raise UsageError("a room admin is a username")

    def with_admins(self, admins: Iterable[str]) -> RoomProfile:
        return RoomProfile(self.name, self.topic, tuple(sorted(set(admins))))

    def encode(self) -> bytes:
        """``uint8 version; opaque name<V>; opaque topic<V>; opaque admins<V><V>``."""
        w = Writer()
        w.u8(PROFILE_VERSION)
        w.opaque_v(self.name.encode("utf-8"))
        w.opaque_v(self.topic.encode("utf-8"))
        w.vector_v([a.encode("ascii") for a in self.admins], Writer.opaque_v)
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> RoomProfile:
        if r.u8() != PROFILE_VERSION:
            raise DecodeError("unknown room profile version")
        name = _text(r.opaque_v(), "name", MAX_ROOM_NAME_BYTES, empty=False)
        topic = _text(r.opaque_v(), "topic", MAX_ROOM_TOPIC_BYTES, empty=True)
        admins = tuple(
            _text(a, "admin", _MAX_ID_BYTES, empty=False) for a in r.vector_v(Reader.opaque_v)
        )
        try:
            return cls(name, topic, admins)
        except UsageError as exc:
            raise DecodeError(str(exc)) from None

    @classmethod
    def decode(cls, data: bytes) -> RoomProfile:
        return decode(cls.read, data)


def profile_of(extensions: Sequence[Extension]) -> RoomProfile | None:
    """The room profile among GroupContext ``extensions`` (``None``: a room made before
    profiles); one that does not decode raises ``DecodeError``."""
    ext = find_extension(extensions, ROOM_PROFILE_EXTENSION)
    return None if ext is None else RoomProfile.decode(ext.extension_data)


def profile_extension(profile: RoomProfile) -> Extension:
    return Extension(extension_type=ROOM_PROFILE_EXTENSION, extension_data=profile.encode())


def with_profile(extensions: Sequence[Extension], profile: RoomProfile) -> tuple[Extension, ...]:
    """``extensions`` with the profile replaced (or added), the others kept in order."""
    kept = [e for e in extensions if e.extension_type != ROOM_PROFILE_EXTENSION]
    return (*kept, profile_extension(profile))


def _device(leaf: LeafNode | None) -> Device | None:
    identity = None if leaf is None else leaf_identity(leaf)
    if identity is None:
        return None
    try:
        user, _, device = identity.decode("ascii").partition("/")
    except UnicodeDecodeError:
        return None
    return (user, device) if user and device else None


def members_of(leaves: Iterable[tuple[int, LeafNode | None]]) -> dict[int, Device]:
    """Leaf index → member device, for the leaves whose credential names one."""
    return {i: d for i, leaf in leaves if (d := _device(leaf)) is not None}


def removed_others(
    members: Mapping[int, Device], proposals: Sequence[tuple[int, Proposal]]
) -> list[Device]:
    """The devices a commit's Removes take out that are not their proposer's own user's
    (the ones only an admin, or a revocation, may remove)."""
    out = []
    for sender, proposal in proposals:
        if isinstance(proposal, Remove):
            target, by = members.get(proposal.removed), members.get(sender)
            if target is not None and (by is None or by[0] != target[0]):
                out.append(target)
    return out


def check_commit_rules(
    extensions: Sequence[Extension],
    members: Mapping[int, Device],
    proposals: Sequence[tuple[int, Proposal]],
    *,
    revoked: Collection[Device] = (),
) -> None:
    """Raise :class:`RuleBroken` unless a commit over ``proposals`` ((sender leaf,
    proposal), as :class:`~sottovoce.mls.public.MemberCommit` gives them) keeps the
    rules of the room whose GroupContext ``extensions`` and ``members`` (leaf index →
    device) are those of the epoch it was made in.
    ``revoked``: devices the directory says are revoked (anyone may remove them)."""
    try:
        profile = profile_of(extensions)
    except DecodeError:
        profile = None  # not ours to repair: an admin may set a valid one
    if profile is None:
        return
    present = {user for user, _ in members.values()}
    orphaned = not (present & set(profile.admins))
    # Accounts leaving in this commit: a leaf's Remove of itself takes its account's
    # other devices with it.
    leaving = {
        who[0] for sender, p in proposals
        if isinstance(p, Remove) and p.removed == sender and (who := members.get(sender))
    }

    def is_admin(leaf: int) -> bool:
        who = members.get(leaf)
        return orphaned or (who is not None and who[0] in profile.admins)

    for sender, proposal in proposals:
        if isinstance(proposal, Remove):
            target, by = members.get(proposal.removed), members.get(sender)
            if (
                proposal.removed == sender
                or (target is not None and by is not None and target[0] == by[0])
                or (target is not None and (target in revoked or target[0] in leaving))
                or is_admin(sender)
            ):
                continue
            raise RuleBroken("only a room admin may remove another member")
        if isinstance(proposal, GroupContextExtensions):
            try:
                after = profile_of(proposal.extensions)
            except DecodeError:
                raise RuleBroken("the new room profile does not decode") from None
            if after is None:
                raise RuleBroken("a room's profile cannot be dropped")
            if after != profile and not is_admin(sender):
                raise RuleBroken("only a room admin may rename a room or change its roles")
        if isinstance(proposal, ReInit) and not is_admin(sender):
            raise RuleBroken("only a room admin may reinitialise a room")
