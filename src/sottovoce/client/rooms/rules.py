"""A member's side of the room rules (protocol/room_rules.py): the capabilities every
leaf of ours lists (so a room's profile extension may live in its GroupContext), the
profile of a room, and the check of a commit this device processes, the same one the
delivery service made before it accepted the commit (defence in depth: a server that
took a commit breaking the rules cannot make us follow it).
"""

from __future__ import annotations

from collections.abc import Collection

from sottovoce.client.ports import Contacts
from sottovoce.client.rooms.model import ROOM_SUITES, Device, Room, device_of
from sottovoce.errors import DecodeError
from sottovoce.mls.common import CredentialType, ProtocolVersion, SenderType, WireFormat
from sottovoce.mls.epoch import StagedCommit
from sottovoce.mls.group import Group
from sottovoce.mls.messages import Capabilities
from sottovoce.protocol.room_rules import (
    ROOM_PROFILE_EXTENSION,
    RoomProfile,
    check_commit_rules,
    members_of,
    profile_of,
    removed_others,
)

#: What every leaf of ours supports: MLS 1.0, the rooms' suites, basic credentials and
#: the room profile extension (RFC 9420 §13.4: a GroupContext extension must be
#: supported by every member).
ROOM_CAPABILITIES = Capabilities(
    versions=(ProtocolVersion.MLS10,),
    cipher_suites=ROOM_SUITES,
    extensions=(ROOM_PROFILE_EXTENSION,),
    credentials=(int(CredentialType.BASIC),),
)

#: Commits and proposals of rooms travel as PublicMessages: the delivery service
#: checks each commit against the room's rules (docs/architecture.md §Rooms, "Room rules").
HANDSHAKE_WIRE_FORMAT = WireFormat.PUBLIC_MESSAGE


def profile(room: Room) -> RoomProfile | None:
    """The room's shared profile (``None``: a room made before profiles, or unreadable)."""
    group = room.group
    if group is None:
        return None
    try:
        return profile_of(group.group_context.extensions)
    except DecodeError:
        return None


def lacks_capabilities(group: Group, index: int) -> bool:
    """The leaf at ``index`` predates a capability our leaves now list (a member that has
    not committed since): a profile cannot be set while any leaf lacks it (RFC 9420
    §12.1.7)."""
    member = group.member(index)
    if member is None:
        return False
    return not set(ROOM_CAPABILITIES.extensions) <= set(member.leaf.capabilities.extensions)


def not_upgraded(group: Group) -> list[str]:
    """The accounts with a device whose leaf lacks the room profile capability."""
    found = (device_of(m.credential) for m in group.members() if lacks_capabilities(group, m.index))
    return sorted({d[0] if d is not None else "?" for d in found})


def roles(room: Room) -> dict[str, str]:
    """Username → ``admin`` or ``member`` for every member account of the room."""
    p = profile(room)
    users = sorted({u for u, _ in room.members()})
    admins = set() if p is None else set(p.admins)
    if p is not None and not admins & set(users):
        admins = set(users)  # nobody left is an admin: every member acts as one
    return {u: "admin" if u in admins else "member" for u in users}


def check_staged(
    group: Group, staged: StagedCommit, contacts: Contacts, announced: Collection[Device]
) -> None:
    """Raise :class:`~sottovoce.protocol.room_rules.RuleBroken` if ``staged`` (a member's
    commit into ``group``'s current epoch) breaks the room's rules. A Remove of another
    user's device counts as a revocation when the server announced it in this room
    (``announced``) or our directory copy says so."""
    if staged.external:
        return  # a join or a resync: protocol/rooms.py "Joining by token" governs those
    members = members_of((m.index, m.leaf) for m in group.members())
    proposals = [
        (q.sender.index if q.sender.sender_type == SenderType.MEMBER else -1, q.proposal)
        for q in staged.proposals
    ]
    revoked = []
    for user, device in removed_others(members, proposals):
        contact = contacts.contact(user)
        if (user, device) in announced or (contact is not None and device in contact.revoked):
            revoked.append((user, device))
    check_commit_rules(group.group_context.extensions, members, proposals, revoked=revoked)
