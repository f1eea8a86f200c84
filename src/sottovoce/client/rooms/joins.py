"""How this device enters a room: by Welcome, by token, or by asking the members
(RFC 9420 §12.4.3; protocol/rooms.py, "Joining by token").

    inbox envelope roomKind "welcome" ──► our KeyPackage by ref ──► join_from_welcome
        (opened before the batch; every member leaf's key must be its device
         certificate's, one directory lookup per unknown user) ──► else refuse
    join_with_token ──► groupinfo.get {token} ──► external commit injecting the PSK
        token_psk(T), psk_id = its hash ──► room.commit ──► joined (members check the
        PSK: a wrong, unknown or missing one is refused)
    request_join ──► groupinfo.get {token}: the room's suite ──► a fresh KeyPackage of
        it ──► room.join.request ──► a member online
        commits our Add and its Welcome comes to the inbox (above)
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable
from typing import Any

from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.events import ClientEvent, ErrorEvent, RoomJoined
from sottovoce.client.ids import new_id, now_ms
from sottovoce.client.ports import Contacts, Link
from sottovoce.client.rooms.audit import AuditLog
from sottovoce.client.rooms.book import RoomBook, request_commit
from sottovoce.client.rooms.keypackages import KeyPackages
from sottovoce.client.rooms.model import (
    ROOM_REQUEST_TIMEOUT_S,
    SUITE,
    Device,
    Room,
    RoomFrame,
    UnverifiedMember,
    device_of,
    member_refs,
    mls_suite,
    parse_room_frame,
    room_id_of,
)
from sottovoce.client.rooms.sync import RoomSync
from sottovoce.client.rooms.tree_blob import BadWelcomeTree, TreeRef, fetch_tree, tree_ref
from sottovoce.errors import DecodeError, RemoteError, SottovoceError, UsageError
from sottovoce.limits import MAX_ROOM_GROUP_INFO_BYTES, ROOM_COMMIT_RETRIES
from sottovoce.mls.common import PreSharedKeyID
from sottovoce.mls.framing import MLSMessage, decode_message
from sottovoce.mls.group import Group
from sottovoce.mls.messages import GroupInfo, Welcome
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.audit import AuditAction
from sottovoce.protocol.fields import ProtocolError, req_b64, req_int
from sottovoce.secret import Secret


class Joins:
    """This device joining rooms; see the module docstring."""

    def __init__(
        self, book: RoomBook, link: Link, contacts: Contacts, key_packages: KeyPackages,
        audit: AuditLog, sync: RoomSync,
    ) -> None:
        self._book, self._store, self._link = book, book.store, link
        self._contacts, self._key_packages = contacts, key_packages
        self._audit, self._sync = audit, sync
        #: Welcomes opened (and their members looked up) before the batch that stores them.
        self._welcomes: dict[str, tuple[Group, bytes] | SottovoceError] = {}
        #: Out-of-band trees of Welcomes (tree_blob.py), fetched before the batch.
        self._trees: dict[str, bytes] = {}

    def forget_welcomes(self) -> None:
        """The batch is over (stored or rolled back): its opened Welcomes are dropped."""
        self._welcomes.clear()
        self._trees.clear()

    # =========================================================================
    # By token, or by asking the members
    # =========================================================================

    async def join_with_token(self, token: str, label: str | None = None) -> Room:
        """Join by external commit (RFC 9420 §12.4.3.2) from the GroupInfo the token unlocks.

        The commit injects the token's PSK (``token_psk``, named by the hash the server
        keeps), which the members check: knowing the wire token or its hash is not enough.
        """
        secret_token = pr.req_token({"token": token})
        wire = pr.wire_token(secret_token)
        for attempt in range(ROOM_COMMIT_RETRIES):
            _, data = await self._link.request(
                pr.GroupInfoGet(token=wire),
                frozenset({pr.ROOM_GROUPINFO}),
                timeout=ROOM_REQUEST_TIMEOUT_S,
            )
            epoch = req_int(data, "epoch")
            room_id = pr.req_room_id(data)
            info = req_b64(data, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES)
            with self._store.transaction():
                self._book.tokens.remember(room_id, secret_token)
            psk = PreSharedKeyID.external(
                pr.token_hash(wire), secrets.token_bytes(mls_suite().nh)
            )
            group, commit = self._book.external_join(room_id, info, epoch, psks=[psk])
            message_id = new_id()
            request = pr.RoomCommit(
                roomId=room_id,
                epoch=epoch,
                messageId=message_id,
                idempotencyKey=new_id(),
                commit=commit,
                adds=member_refs([self._book.me]),
                groupInfo=group.group_info(),
                audit=None,
                token=wire,
            )
            reply = await request_commit(self._link, request, attempt)
            if reply is None:
                continue
            seq = req_int(reply, "serverSeq")
            room = Room(room_id=room_id, label=label or room_id, group=group, last_seq=seq)
            events: list[ClientEvent] = [
                RoomJoined(room_id=room_id, label=room.label, epoch=group.epoch)
            ]
            with self._store.transaction():
                self.join(room, events)
            self._book.emit_all(events)
            self._book.notify()
            # A non-member cannot read the chain head, so the joiner appends its entry
            # right after the join (bound to the epoch its commit created).
            with contextlib.suppress(ServerError):
                await self._audit.append(room, AuditAction.MEMBER_JOINED)
            return room
        raise ServerError("commit_conflict", "the room kept changing; try again", retryable=True)

    async def request_join(self, token: str) -> str:
        """Join by request: the members (any one online) answer with an Add and a Welcome.

        Returns the room id; the room appears (``RoomJoined``) when the Welcome arrives.
        """
        secret_token = pr.req_token({"token": token})
        wire = pr.wire_token(secret_token)
        kp = self._key_packages.make_one(await self._room_suite(wire))
        _, data = await self._link.request(
            pr.JoinRequest(token=wire, keyPackage=MLSMessage(body=kp).encode()),
            frozenset({pr.ROOM_JOIN_REQUESTED}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        room_id = pr.req_room_id(data)
        with self._store.transaction():  # to check later joiners' PSK once we are in
            self._book.tokens.remember(room_id, secret_token)
        return room_id

    async def _room_suite(self, wire: Secret) -> int:
        """The MLS cipher suite of the room the token opens, from its GroupInfo (suite 1
        if the server holds none). Unverified: a wrong one only makes the join fail."""
        _, data = await self._link.request(
            pr.GroupInfoGet(token=wire), frozenset({pr.ROOM_GROUPINFO}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        if data.get("groupInfo") is None:
            return SUITE
        info = req_b64(data, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES)
        try:
            body = decode_message(info).body
        except DecodeError:
            body = None
        if not isinstance(body, GroupInfo):
            raise RemoteError("the room's GroupInfo does not decode")
        return body.group_context.cipher_suite

    def join(self, room: Room, events: list[ClientEvent]) -> None:
        """Store a room we just joined and play the frames that came before we knew it."""
        old = self._book.rooms.get(room.room_id)
        if old is not None:
            room.label = old.label
            room.lock = old.lock
            room.name_key = old.name_key  # still opens the names if they did not change
        if not self._store.add_room(room.room_id, room.label):
            self._store.update_room(room.room_id, removed=False)
        self._book.rooms[room.room_id] = room
        self._book.touched.add(room.room_id)
        self._book.persist(room, seq=room.last_seq)
        self._sync.play_early(room, events)

    # =========================================================================
    # By Welcome (opened before the batch, stored inside it)
    # =========================================================================

    async def prepare(
        self, frames: list[dict[str, Any]], welcomes: Iterable[ev.Envelope] = ()
    ) -> None:
        """Before a batch: look up users a commit adds whose devices we do not know,
        and open each Welcome to look up its members (checked in the batch)."""
        wanted: set[str] = set()
        for envelope in welcomes:
            await self._fetch_tree(envelope)
            for member_user, member_device in self._prepare_welcome(envelope):
                known = self._contacts.contact(member_user)
                if known is None or (
                    member_device not in known.certificates
                    and member_device not in known.revoked
                ):
                    wanted.add(member_user)
        for data in frames:
            env = data.get("envelope")
            adds = env.get("adds") if isinstance(env, dict) else None
            for item in adds if isinstance(adds, list) else []:
                user = item.get("userId") if isinstance(item, dict) else None
                device = item.get("deviceId") if isinstance(item, dict) else None
                if not isinstance(user, str) or not isinstance(device, str):
                    continue
                contact = self._contacts.contact(user)
                if contact is None or device not in contact.certificates:
                    wanted.add(user)
        for user in sorted(wanted):  # one lookup per user, only when not known yet
            try:
                await self._contacts.lookup(user)
            except NotConnected:
                self._book.unreachable.add(user)
            except (SottovoceError, ProtocolError):
                pass

    async def _fetch_tree(self, envelope: ev.Envelope) -> None:
        """The out-of-band tree of a Welcome for us, if its GroupInfo names one."""
        key = envelope.messageId
        if key in self._welcomes or key in self._trees:
            return
        try:
            ref = self._tree_ref(envelope.ciphertext)
            if ref is not None:
                self._trees[key] = await fetch_tree(self._link, ref)
        except BadWelcomeTree as exc:
            self._welcomes[key] = exc  # the batch reports it
        except ServerError as exc:
            self._welcomes[key] = BadWelcomeTree(
                f"the Welcome's out-of-band tree is not on the server ({exc.code})")
        except (SottovoceError, UsageError):
            pass  # opening the Welcome reports it

    def _tree_ref(self, data: bytes) -> TreeRef | None:
        welcome = MLSMessage.decode(data).body
        found = self._key_packages.find(welcome) if isinstance(welcome, Welcome) else None
        if not isinstance(welcome, Welcome) or found is None:
            return None
        _, record = found
        info = Group.welcome_group_info(welcome, record.key_package, record.private)
        return tree_ref(info)

    def _prepare_welcome(self, envelope: ev.Envelope) -> list[Device]:
        """Open a Welcome for us (cached for the batch); the member devices it names."""
        if envelope.messageId in self._welcomes:
            return []
        try:
            opened = self._open_welcome(envelope.ciphertext, envelope.conversationId,
                                        self._trees.get(envelope.messageId))
        except NotConnected:
            return []  # its tree could not be fetched: the batch tries again
        except SottovoceError as exc:
            self._welcomes[envelope.messageId] = exc  # the batch reports it
            return []
        except UsageError:
            return []
        self._welcomes[envelope.messageId] = opened
        others = (device_of(m.credential) for m in opened[0].members())
        return [d for d in others if d is not None and d != self._book.me]

    def _open_welcome(
        self, data: bytes, room_id: str, tree: bytes | None = None
    ) -> tuple[Group, bytes]:
        """Join the group of a Welcome for one of our KeyPackages (nothing is stored);
        ``tree``: its out-of-band ratchet tree, fetched before."""
        welcome = MLSMessage.decode(data).body
        if not isinstance(welcome, Welcome):
            raise RemoteError("room welcome is not an MLS Welcome")
        found = self._key_packages.find(welcome)
        if found is None:
            raise RemoteError("the Welcome is for none of our KeyPackages")
        ref, record = found
        if tree is None and tree_ref(
                Group.welcome_group_info(welcome, record.key_package, record.private)):
            raise NotConnected("the Welcome's out-of-band tree is not fetched yet")
        group = Group.join_from_welcome(
            welcome,
            record.key_package,
            record.private,
            ratchet_tree=tree,
            signing_key=self._book.signing_key,
            now_ms=now_ms(),
            config=self._book.group_config(room_id),
        )
        return group, ref

    def _check_members(self, group: Group) -> None:
        """Every member leaf of a group we join must be its device's, by the directory.

        The Welcome's tree is signed by the member who added us, not by the members
        it lists: a dishonest (or compromised) member could have put a leaf with
        someone else's name and its own key. Each leaf's ``user/device`` credential
        must carry the signature key of that device's certificate. A device the
        directory lists as revoked has no valid certificate left; it is accepted
        (it can no longer connect, and the members remove it on the server's
        removeRequest), any other unknown device or key refuses the join.
        """
        own = self._book.signing_key.verify_key.data
        for member in group.members():
            who = device_of(member.credential)
            if who is None:
                raise UnverifiedMember(f"member leaf {member.index} has no user/device name")
            user, device = who
            if who == self._book.me:
                if member.signature_key != own:
                    raise UnverifiedMember("our own leaf in the Welcome is not ours")
                continue
            contact = self._contacts.contact(user)
            if contact is None and user in self._book.unreachable:
                # Not a verdict: fail the batch (nothing acked), the resume retries it.
                raise NotConnected(f"could not look up room member '{user}'")
            if contact is None:
                raise UnverifiedMember(f"member {user}/{device} is not in the directory")
            if device in contact.revoked and device not in contact.certificates:
                continue
            if not self._key_packages.key_matches(user, device, member.signature_key):
                raise UnverifiedMember(
                    f"member {user}/{device}: its signature key is not its device certificate's"
                )

    def accept_inbox(self, data: dict[str, Any], events: list[ClientEvent]) -> None:
        """An inbox envelope of a room (a Welcome for us)."""
        frame = parse_room_frame(data, events, "welcome")
        if frame is None:
            return
        if frame.kind != "welcome":
            events.append(ErrorEvent(code="bad_frame", message="unexpected room inbox frame"))
            return
        self._accept_welcome(frame, events)

    def _accept_welcome(self, frame: RoomFrame, events: list[ClientEvent]) -> None:
        room = self._book.rooms.get(frame.room_id)
        if room is not None and not room.removed and room.last_seq >= frame.server_seq:
            return  # replay of a Welcome we already used
        try:
            opened = self._welcomes.pop(frame.message_id, None)
            if isinstance(opened, SottovoceError):
                raise opened
            if opened is None:
                opened = self._open_welcome(frame.ciphertext, frame.room_id,
                                            self._trees.get(frame.message_id))
            group, ref = opened
            if room_id_of(group.group_id) != frame.room_id or group.epoch != frame.epoch:
                raise RemoteError("the Welcome is for another room or epoch")
            self._check_members(group)
        except NotConnected:
            raise
        except (SottovoceError, UsageError) as exc:
            events.append(
                ErrorEvent(
                    code=getattr(exc, "code", "bad_welcome"),
                    message=f"refused to join room {frame.room_id}: {exc}",
                    message_id=frame.message_id,
                )
            )
            return
        self._store.delete_key_package(ref)  # one-time keys are used once (last resort stays)
        new = Room(
            room_id=frame.room_id, label=frame.room_id, group=group, last_seq=frame.server_seq
        )
        events.append(RoomJoined(room_id=frame.room_id, label=new.label, epoch=group.epoch))
        self.join(new, events)
