"""A Welcome too large for one frame: its ratchet tree travels through the blob store
(RFC 9420 §12.4.3.3 lets the tree be delivered out of band; docs/protocol.md §Rooms).

    inviter: commit with the tree inline ──► Welcome over MAX_ROOM_WELCOME_BYTES?
        ──► commit again, the Welcome's GroupInfo without ``ratchet_tree`` but with a
            tree reference (blob id, key, SHA-256, size) ──► the tree sealed in chunks
            (crypto/file_chunks.py) ──► blob.create for the new devices, blob.put ──►
            the commit and its (now small) Welcome as always
    joiner: the Welcome's GroupInfo (decrypted with our KeyPackage, not yet checked)
        ──► a tree reference? blob.get every chunk, open and check each, the whole
        against the SHA-256 ──► join with that tree: the join checks it hashes to the
        GroupContext's tree_hash and the GroupInfo's signature as for an inline tree
        ──► blob.fetched

The reference sits in the GroupInfo the Welcome encrypts to the new members and the
inviter signs: the server stores sealed chunks and relays a Welcome it cannot open.
A small room's Welcome keeps its tree inline, exactly as before.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from sottovoce.client.ports import Link
from sottovoce.crypto.file_chunks import (
    ChunkOpener,
    ChunkSealer,
    FileIntegrityError,
    new_file_id,
    new_file_key,
)
from sottovoce.crypto.file_layout import CHUNK_SIZE, FILE_ID_SIZE, chunk_count, sealed_size
from sottovoce.errors import DecodeError, RemoteError, UsageError
from sottovoce.limits import (
    MAX_RATCHET_TREE_BYTES,
    MAX_ROOM_COMMIT_BYTES,
    MAX_ROOM_GROUP_INFO_BYTES,
    MAX_ROOM_WELCOME_BYTES,
)
from sottovoce.mls.common import Extension
from sottovoce.mls.messages import GroupInfo
from sottovoce.protocol import blobs as pb
from sottovoce.secret import Secret

#: The GroupInfo extension that says where a Welcome's out-of-band tree is (MLS
#: private-use range, RFC 9420 §17.3).
TREE_REF_EXTENSION = 0xF5A2
#: A Welcome larger than this sends its tree out of band (module level for tests).
INLINE_WELCOME_MAX = MAX_ROOM_WELCOME_BYTES
#: What the relay takes in one frame of a commit: the commit and the GroupInfo it
#: publishes (with the tree: the server checks commits against it). Module level for tests.
FRAME_COMMIT_MAX = MAX_ROOM_COMMIT_BYTES
FRAME_GROUP_INFO_MAX = MAX_ROOM_GROUP_INFO_BYTES
#: How long the server keeps an out-of-band tree for the joiners (a week, like a file a
#: device that was offline fetches later).
TREE_TTL_MS = 7 * 24 * 3600 * 1000
_KEY = 32
_SHA = 32
_REF_BYTES = FILE_ID_SIZE + _KEY + _SHA + 4
_CREATED = frozenset({pb.BLOB_CREATED})
_STORED = frozenset({pb.BLOB_STORED})
_CHUNK = frozenset({pb.BLOB_CHUNK})
_RELEASED = frozenset({pb.BLOB_RELEASED})


class BadWelcomeTree(RemoteError):
    """The out-of-band ratchet tree of a Welcome is missing, altered or not the one its
    reference names."""

    code = "bad_welcome_tree"


def welcome_fits(welcome: bytes | None) -> bool:
    """Whether a Welcome goes as it is (its tree inline); else its tree goes out of band."""
    return len(welcome or b"") <= INLINE_WELCOME_MAX


class RoomTooLarge(UsageError):
    """A commit, or the GroupInfo (with the ratchet tree) it publishes, is over what the
    relay takes in one frame: the room cannot grow (or change) that way."""

    code = "room_too_large"


def check_fits(room_id: str, commit: bytes, group_info: bytes | None) -> None:
    """Refuse, before anything is sent, a commit the relay would close the connection on."""
    info = len(group_info or b"")
    if len(commit) > FRAME_COMMIT_MAX or info > FRAME_GROUP_INFO_MAX:
        raise RoomTooLarge(
            f"room {room_id}: this change makes a commit of {len(commit) // 1024} KiB and a "
            f"GroupInfo of {info // 1024} KiB; the relay takes {FRAME_COMMIT_MAX // 1024} KiB "
            f"and {FRAME_GROUP_INFO_MAX // 1024} KiB (add fewer devices at once; a room in "
            "the hybrid suite holds about 60 to 110 members, see docs/protocol.md §Limits)"
        )


@dataclass(frozen=True, slots=True, repr=False)
class TreeRef:
    """Where a Welcome's tree is: blob id, the key its chunks are sealed under, the
    SHA-256 and size of the encoded tree. ``encode``: 84 bytes, in that order (the
    size a uint32)."""

    blob_id: bytes
    key: Secret
    sha256: bytes
    size: int

    def encode(self) -> bytes:
        return self.blob_id + self.key.expose() + self.sha256 + self.size.to_bytes(4, "big")

    @classmethod
    def decode(cls, data: bytes) -> TreeRef:
        if len(data) != _REF_BYTES:
            raise BadWelcomeTree("the Welcome's tree reference is not 84 bytes")
        a, b = FILE_ID_SIZE, FILE_ID_SIZE + _KEY
        size = int.from_bytes(data[b + _SHA:], "big")
        if not 0 < size <= MAX_RATCHET_TREE_BYTES:
            raise BadWelcomeTree("the Welcome's tree reference names an impossible size")
        return cls(data[:a], Secret(data[a:b]), data[b:b + _SHA], size)


@dataclass(eq=False, repr=False)
class TreeCarrier:
    """Group.welcome_tree for one commit: seals the tree it is given and keeps the
    chunks for :meth:`upload`."""

    ref: TreeRef | None = None
    sealed: list[bytes] = field(default_factory=list)

    def __call__(self, tree: bytes) -> Extension:
        key, blob_id = new_file_key(secrets.token_bytes), new_file_id(secrets.token_bytes)
        sealer = ChunkSealer(key, blob_id, len(tree))
        self.sealed = [sealer.seal(tree[i * CHUNK_SIZE:(i + 1) * CHUNK_SIZE])
                       for i in range(sealer.chunks)]
        self.ref = TreeRef(blob_id, key, sealer.digest(), len(tree))
        return Extension(extension_type=TREE_REF_EXTENSION, extension_data=self.ref.encode())

    async def upload(self, link: Link, devices: tuple[tuple[str, str], ...]) -> None:
        """The sealed tree to the server, for ``devices`` (the new members) to fetch."""
        if self.ref is None:
            raise RemoteError("no tree was sealed for the Welcome")
        blob_id = self.ref.blob_id.hex()
        await link.request(pb.BlobCreate(
            blobId=blob_id, size=sealed_size(self.ref.size), chunks=len(self.sealed),
            ttlMs=TREE_TTL_MS,
            recipients=tuple(pb.Recipient(userId=u, deviceId=d) for u, d in devices),
        ), _CREATED)
        for index, chunk in enumerate(self.sealed):
            await link.request(pb.BlobPut(blobId=blob_id, index=index, data=chunk), _STORED)


def tree_ref(info: GroupInfo) -> TreeRef | None:
    """The out-of-band tree reference of a Welcome's GroupInfo, if it has one."""
    found = [e for e in info.extensions if e.extension_type == TREE_REF_EXTENSION]
    if not found:
        return None
    if len(found) > 1:
        raise BadWelcomeTree("the Welcome names more than one tree")
    return TreeRef.decode(found[0].extension_data)


async def fetch_tree(link: Link, ref: TreeRef) -> bytes:
    """The encoded tree ``ref`` names, every chunk opened and the whole checked against
    its SHA-256 (:class:`BadWelcomeTree` otherwise); the server may then drop it."""
    blob_id = ref.blob_id.hex()
    opener = ChunkOpener(ref.key, ref.blob_id, ref.size, ref.sha256)
    parts: list[bytes] = []
    try:
        for index in range(chunk_count(ref.size)):
            _, data = await link.request(pb.BlobGet(blobId=blob_id, index=index), _CHUNK)
            chunk = data.get("data")
            if data.get("blobId") != blob_id or data.get("index") != index:
                raise BadWelcomeTree("the server answered with another chunk of the tree")
            if not isinstance(chunk, (bytes, memoryview)):  # a text reply's base64
                chunk = pb.CHUNK_DATA.parse(chunk, "data")
            parts.append(opener.open(chunk))
        opener.finish()
    except (FileIntegrityError, DecodeError) as exc:
        raise BadWelcomeTree(f"the Welcome's out-of-band tree is refused: {exc}") from None
    await link.request(pb.BlobFetched(blobId=blob_id), _RELEASED)
    return b"".join(parts)
