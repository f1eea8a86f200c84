"""A room's shared profile (its admins) and the rules every commit must keep
(docs/architecture.md §Rooms, "Room rules"; wire format in docs/protocol.md §Rooms).

The profile is a GroupContext extension of a private-use type (RFC 9420 §13.4), so
every member of an epoch sees the same admins, name and topic, and the key schedule
binds them. The server reads group contexts (commits, GroupInfo), so the name and
topic are there only sealed under a key it never holds (protocol/room_names.py): it
sees that they changed and who changed them, never what they say.

One rule function serves both sides: the delivery service calls it on
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
from sottovoce.limits import MAX_ROOM_MEMBERS
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
from sottovoce.protocol.room_names import MAX_SEALED_NAMES_BYTES, SealedNames

__all__ = [
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
#: Version 2 seals the name and topic; version 1 (read, never written) had them in
#: clear, where clients only ever wrote a placeholder name and no topic.
PROFILE_VERSION = 2
_V1_MAX_NAME_BYTES, _V1_MAX_TOPIC_BYTES = 200, 1024
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
    """What every member (and the server) sees of a room: its admin usernames, and its
    name and topic sealed (``sealed``: an encoded
    :class:`~sottovoce.protocol.room_names.SealedNames`, empty when the room shares no
    name, as one made before sealed names)."""

    admins: tuple[str, ...] = ()
    sealed: bytes = b""

    def __post_init__(self) -> None:
        if len(self.admins) > MAX_ROOM_MEMBERS or list(self.admins) != sorted(set(self.admins)):
            raise UsageError("room admins are sorted, distinct and at most one per member")
        for admin in self.admins:
            if len(admin) > _MAX_ID_BYTES or not ID_RE.fullmatch(admin) or "/" in admin:
                raise UsageError("a room admin is a username")
        if self.sealed:
            try:
                SealedNames.decode(self.sealed)
            except DecodeError as exc:
                raise UsageError(str(exc)) from None

    @property
    def names(self) -> SealedNames | None:
        """The sealed name and topic, parsed (``None``: the room shares none)."""
        return SealedNames.decode(self.sealed) if self.sealed else None

    def with_admins(self, admins: Iterable[str]) -> RoomProfile:
        return RoomProfile(tuple(sorted(set(admins))), self.sealed)

    def with_sealed(self, sealed: bytes) -> RoomProfile:
        return RoomProfile(self.admins, sealed)

    def encode(self) -> bytes:
        """``uint8 version = 2; opaque sealed<V>; opaque admins<V><V>``."""
        w = Writer()
        w.u8(PROFILE_VERSION)
        w.opaque_v(self.sealed)
        w.vector_v([a.encode("ascii") for a in self.admins], Writer.opaque_v)
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> RoomProfile:
        version = r.u8()
        if version == 1:  # name and topic in clear: only ever a placeholder, dropped
            _text(r.opaque_v(), "name", _V1_MAX_NAME_BYTES, empty=False)
            _text(r.opaque_v(), "topic", _V1_MAX_TOPIC_BYTES, empty=True)
            sealed = b""
        elif version == PROFILE_VERSION:
            sealed = r.opaque_v()
            if len(sealed) > MAX_SEALED_NAMES_BYTES:
                raise DecodeError("the room's sealed names are too long")
        else:
            raise DecodeError("unknown room profile version")
        admins = tuple(
            _text(a, "admin", _MAX_ID_BYTES, empty=False) for a in r.vector_v(Reader.opaque_v)
        )
        try:
            return cls(admins, sealed)
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
                raise RuleBroken(
                    "only a room admin may rename a room, set its topic or change its roles"
                )
        if isinstance(proposal, ReInit) and not is_admin(sender):
            raise RuleBroken("only a room admin may reinitialise a room")
