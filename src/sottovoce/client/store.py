"""The local store of one account on one device: SQLite, sealed at rest.

    passphrase ──Argon2id(salt, params in `meta`)──► wrapping key ──► storage key
        (32 random bytes, stored only wrapped: client/store_keys.py; a new passphrase
        re-wraps it and re-encrypts nothing)
    storage key ──seal_record──► every sensitive value (bodies, keys, Olm pickles, contacts)
    storage key ──HKDF──► index key ──HMAC──► peer tags (look-ups without plaintext names)

What stays in clear: random ids (messageId, idempotencyKey), sequence numbers,
delivery status, row order and the KDF salt/parameters. A sealed key-check
record turns a wrong passphrase into :class:`WrongPassphrase` before anything
is read or written.

Durability (docs/protocol.md §Delivery): ``lastGlobalInboxSeq`` is written in the same
transaction as the messages it covers and the session states they advanced, so
a crash can only replay frames the store does not hold yet (dedupe by
messageId makes the replay harmless). One process per store: an exclusive
lock file stops a second process from forking the ratchet state.
"""

from __future__ import annotations

import enum
import os
import secrets
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sottovoce.client.store_keys as store_keys
from sottovoce.client.errors import StoreError, WrongPassphrase
from sottovoce.client.store_keys import TEST_KDF as TEST_KDF
from sottovoce.client.store_keys import KdfParams as KdfParams
from sottovoce.client.store_keys import passphrase_bytes as _passphrase_bytes
from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.crypto.kdf import Hash, hkdf, hmac
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sealed import open_record, seal_record
from sottovoce.errors import DecodeError, DecryptionError
from sottovoce.file_lock import exclusive_lock
from sottovoce.identity import DeviceCertificate
from sottovoce.private_files import TooOpen, private_dir, private_file, sqlite_files
from sottovoce.secret import Secret

STORE_FILE = "store.sqlite3"
LOCK_FILE = "store.lock"
SCHEMA_VERSION = 1
_KEYCHECK = b"sottovoce local store v1"
_TAG_LEN = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS secrets(name TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contacts(tag BLOB PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions(
    tag BLOB PRIMARY KEY,
    device_tag BLOB NOT NULL,
    updated INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_device ON sessions(device_tag, updated);
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    peer_tag BLOB NOT NULL,
    outgoing INTEGER NOT NULL,
    status INTEGER NOT NULL,
    idempotency_key TEXT,
    server_seq INTEGER,
    inbox_seq INTEGER,
    sealed BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_peer ON messages(peer_tag, id);
CREATE TABLE IF NOT EXISTS outbox(
    oid INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL,
    sealed BLOB NOT NULL
);
"""

# Rooms, added after schema 1 shipped: created on open if missing.
#   rooms:        one row per MLS group this device belongs to (or was removed from);
#                 the local name is sealed, looked up by a keyed tag; the group state
#                 (when the MLS layer can serialize it) is sealed and written in the
#                 same transaction as the messages/epoch change that produced it.
#   key_packages: our unused KeyPackages with their private keys, sealed, by KeyPackageRef;
#     last_resort is 0 for a one-time one, else the last resort's suite.
#   room_epochs:  epoch authenticators this member has seen (audit verification offline).
_ROOM_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms(
    room_id TEXT PRIMARY KEY,
    label_tag BLOB NOT NULL,
    sealed_label BLOB NOT NULL,
    sealed_state BLOB,
    epoch INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rooms_label ON rooms(label_tag);
CREATE TABLE IF NOT EXISTS key_packages(
    ref BLOB PRIMARY KEY,
    last_resort INTEGER NOT NULL,
    created INTEGER NOT NULL,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS room_epochs(
    room_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY(room_id, epoch)
);
"""

# Sends queued before they could be encrypted (added after schema 1 shipped: created on
# open if missing). Offline, a message to someone whose devices or sessions we do not
# know yet cannot be encrypted; its row in ``messages`` (sealed text, status sending,
# messageId and idempotencyKey fixed) is written with a row here, and the next
# connection encrypts it and moves it to the outbox in one transaction.
_UNSENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS unsent(
    oid INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE
);
"""
# Key transparency (client/kt.py): pinned keys, the last verified checkpoint, the
# monitor's place, each a sealed record; alerts stay until acknowledged.
_KT_SCHEMA = """
CREATE TABLE IF NOT EXISTS kt_state(name TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS kt_alerts(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sealed BLOB NOT NULL,
    acknowledged INTEGER NOT NULL DEFAULT 0
);
"""


# =============================================================================
# Rows
# =============================================================================


class DeliveryStatus(enum.IntEnum):
    SENDING = 0  # in the outbox, no server ack yet
    SENT = 1  # ✓  the server acknowledged a durable write
    DELIVERED = 2  # ✓✓ a receipt said a device of a recipient has it
    FAILED = 3  # the server refused it for good, or it could not be decrypted
    READ = 4  # a read receipt came (client/conversation.py; shown only with them on)

    @property
    def tick(self) -> str:
        return {0: "…", 1: "✓", 2: "✓✓", 3: "✗", 4: "read"}[self.value]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """A message as the UI sees it (decrypted once, read back from the store)."""

    local_id: int
    message_id: str
    peer: str
    sender: str
    sender_device: str
    outgoing: bool
    status: DeliveryStatus
    text: str
    content_type: str = "text"
    client_created_ms: int = 0
    server_received_ms: int = 0
    local_at_ms: int = 0
    server_seq: int | None = None
    inbox_seq: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Body(WireStruct):
    peer: str
    sender: str
    sender_device: str
    content_type: str
    client_created_ms: int
    server_received_ms: int
    local_at_ms: int
    text: str

    def write(self, w: Writer) -> None:
        w.u8(1)
        for name in (self.peer, self.sender, self.sender_device, self.content_type):
            w.opaque8(name.encode("utf-8"))
        w.u64(self.client_created_ms)
        w.u64(self.server_received_ms)
        w.u64(self.local_at_ms)
        w.opaque_v(self.text.encode("utf-8"))

    @classmethod
    def read(cls, r: Reader) -> _Body:
        r.version(1, "message record")
        peer, sender, device, ctype = (r.opaque8().decode("utf-8") for _ in range(4))
        return cls(
            peer=peer,
            sender=sender,
            sender_device=device,
            content_type=ctype,
            client_created_ms=r.u64(),
            server_received_ms=r.u64(),
            local_at_ms=r.u64(),
            text=r.opaque_v().decode("utf-8"),
        )


def _write_cert(w: Writer, item: tuple[str, DeviceCertificate]) -> None:
    w.opaque8(item[0].encode("ascii"))
    w.opaque_v(item[1].encode())


@dataclass(slots=True, kw_only=True)
class Contact(WireStruct):
    """What we know about a user: the pinned account key (TOFU) and verified devices.

    ``genesis_key``/``recovery_key``: the keys the account was registered with, pinned with
    the first lookup that named them (empty: not known yet); a later account key is
    accepted only if it descends from them (identity/succession.py ``follow``)."""

    username: str
    account_key: bytes
    pinned_at_ms: int
    verified: bool = False
    certificates: dict[str, DeviceCertificate] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    genesis_key: bytes = b""
    recovery_key: bytes = b""

    def write(self, w: Writer) -> None:
        w.u8(2)
        w.opaque8(self.username.encode("ascii"))
        w.opaque8(self.account_key)
        w.u64(self.pinned_at_ms)
        w.boolean(self.verified)
        w.vector_v(sorted(self.certificates.items()), _write_cert)
        w.vector_v(sorted(self.revoked), lambda w2, d: w2.opaque8(d.encode("ascii")))
        w.opaque8(self.genesis_key)
        w.opaque8(self.recovery_key)

    @classmethod
    def read(cls, r: Reader) -> Contact:
        version = r.u8()
        if version not in (1, 2):
            raise DecodeError("unknown contact record version")
        username = r.opaque8().decode("ascii")
        account_key = r.opaque8()
        pinned = r.u64()
        verified = r.boolean()
        certs = r.vector_v(
            lambda r2: (r2.opaque8().decode("ascii"), DeviceCertificate.decode(r2.opaque_v()))
        )
        revoked = r.vector_v(lambda r2: r2.opaque8().decode("ascii"))
        genesis = (r.opaque8(), r.opaque8()) if version == 2 else (b"", b"")
        return cls(
            username=username,
            account_key=account_key,
            pinned_at_ms=pinned,
            verified=verified,
            certificates=dict(certs),
            revoked=set(revoked),
            genesis_key=genesis[0],
            recovery_key=genesis[1],
        )


@dataclass(frozen=True, slots=True)
class OutboxItem:
    oid: int
    message_id: str
    idempotency_key: str
    frame: str


# =============================================================================
# The store
# =============================================================================


def _warn(found: list[TooOpen]) -> None:
    """Tell the user, once per path, that others may read their keys and history."""
    for too_open in found:
        print(f"sottovoce: warning: {too_open}", file=sys.stderr, flush=True)


def _lock(path: Path) -> IO[bytes]:
    """The lock on the account, held for the store's lifetime."""
    handle = exclusive_lock(path)
    if handle is None:
        raise StoreError(
            "this account is open in another sottovoce process (one process per account)"
        )
    return handle


class Store:
    """One account's local store. Not thread-safe: use it from one event loop."""

    def __init__(
        self, data_dir: Path, db: sqlite3.Connection, key: Secret, lock: IO[bytes], rng: Random
    ) -> None:
        self.data_dir = data_dir
        self._db = db
        self._key = key
        self._index_key = hkdf(Hash.SHA256, key.expose(), b"", b"sottovoce store index v1", 32)
        self._lock = lock
        self._rng = rng
        self._txn_depth = 0

    # --- opening -------------------------------------------------------------------

    @staticmethod
    def exists(data_dir: str | os.PathLike[str]) -> bool:
        return (Path(data_dir) / STORE_FILE).exists()

    @staticmethod
    def make_dir(data_dir: str | os.PathLike[str]) -> list[TooOpen]:
        """Create the data directory (0700), or say plainly why it cannot be one."""
        root = Path(data_dir)
        for part in (root, *root.parents):
            if part.exists():
                if not part.is_dir():
                    raise StoreError(f"cannot use {root} as the account's data directory: "
                                     f"{part} is a file, not a directory")
                break
        try:
            return private_dir(root)
        except OSError as exc:
            raise StoreError(
                f"cannot use {root} as the account's data directory: {exc.strerror or exc}"
            ) from None

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a frame we ack to the server must survive a power cut, not just a crash.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        # A deleted row (an expired message) is overwritten, not left in a free page.
        db.execute("PRAGMA secure_delete=ON")
        return db

    @classmethod
    def create(
        cls,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        kdf: KdfParams | None = None,
        rng: Random = secrets.token_bytes,
    ) -> Store:
        root = Path(data_dir)
        raw = _passphrase_bytes(passphrase)
        if cls.exists(root):
            raise StoreError(f"an account already exists in {root}")
        _warn(cls.make_dir(root) + private_file(root / LOCK_FILE))
        lock = _lock(root / LOCK_FILE)
        params = kdf or KdfParams()
        key = Secret(rng(store_keys.DATA_KEY_BYTES))
        try:
            # Created 0600 first: SQLite gives its -wal and -shm files the same mode.
            _warn(private_file(root / STORE_FILE))
            db = cls._connect(root / STORE_FILE)
            db.executescript(_SCHEMA + _ROOM_SCHEMA + _UNSENT_SCHEMA + _KT_SCHEMA)
            check = seal_record(key, b"keycheck", b"store", _KEYCHECK, rng)
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("schema", str(SCHEMA_VERSION).encode()),
                    *store_keys.key_rows(raw, key, params, rng),
                    ("keycheck", check),
                    ("last_inbox_seq", b"0"),
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            lock.close()
            raise
        return cls(root, db, key, lock, rng)

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        rng: Random = secrets.token_bytes,
    ) -> Store:
        root = Path(data_dir)
        raw = _passphrase_bytes(passphrase)
        if not cls.exists(root):
            raise StoreError(f"no account in {root} (create one with 'sottovoce account create')")
        store_file = root / STORE_FILE
        _warn(private_dir(root) + private_file(store_file, *sqlite_files(store_file)))
        lock = _lock(root / LOCK_FILE)
        try:
            db = cls._connect(root / STORE_FILE)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if int(meta.get("schema", b"0")) != SCHEMA_VERSION:
                raise StoreError("the local store has an unknown schema version")
            db.executescript(_ROOM_SCHEMA + _UNSENT_SCHEMA + _KT_SCHEMA)
            key, unwrapped = store_keys.data_key(meta, raw)
            try:
                if open_record(key, b"keycheck", b"store", meta["keycheck"]) != _KEYCHECK:
                    raise WrongPassphrase("wrong passphrase for this account")
            except DecryptionError:
                raise WrongPassphrase("wrong passphrase for this account") from None
            if unwrapped:  # made before the data key was wrapped: wrap it, re-encrypt nothing
                params, _ = store_keys.read_kdf_record(meta.get(store_keys.KDF_ROW))
                db.execute("BEGIN IMMEDIATE")
                store_keys.write_rows(db, store_keys.key_rows(raw, key, params, rng))
                db.execute("COMMIT")
        except BaseException:
            lock.close()
            raise
        return cls(root, db, key, lock, rng)

    def change_passphrase(
        self, old: str | bytes, new: str | bytes, *, kdf: KdfParams | None = None
    ) -> None:
        """Re-wrap the data key under ``new`` (``old`` must open it): nothing else is
        re-encrypted, and a crash leaves either passphrase working, never neither."""
        store_keys.rewrap(self._db, self._key, _passphrase_bytes(old), _passphrase_bytes(new),
                          kdf or KdfParams(), self._rng)

    def check_passphrase(self, passphrase: str | bytes) -> bool:
        """Whether ``passphrase`` opens this store (e.g. to unlock an idle screen)."""
        return store_keys.opens(self._db, self._key, _passphrase_bytes(passphrase))

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._lock.close()

    # --- sealing -------------------------------------------------------------------

    @property
    def storage_key(self) -> Secret:
        return self._key

    @property
    def rng(self) -> Random:
        return self._rng

    @property
    def connection(self) -> sqlite3.Connection:
        """For modules that keep their own tables here (sealed with :meth:`seal`)."""
        return self._db

    def seal(self, kind: bytes, record_id: bytes, plaintext: bytes) -> bytes:
        return seal_record(self._key, kind, record_id, plaintext, self._rng)

    def unseal(self, kind: bytes, record_id: bytes, sealed: bytes) -> bytes:
        try:
            return open_record(self._key, kind, record_id, sealed)
        except DecryptionError:
            raise StoreError("a sealed record in the local store is damaged") from None

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the tables other modules keep (e.g. client/store_files.py)."""
        return self._db

    def tag(self, kind: str, value: str) -> bytes:
        """A keyed, deterministic tag so rows can be found without storing names in clear."""
        return hmac(Hash.SHA256, self._index_key, f"{kind}\x00{value}".encode())[:_TAG_LEN]

    def upsert(self, table: str, columns: tuple[str, str], key: object, value: object) -> None:
        """Insert the row (``key``, ``value``) into ``table``, whose ``columns`` are its key
        and value (names from the caller's code, never input), or replace the value of the
        row that has this key."""
        k, v = columns
        self._db.execute(
            f"INSERT INTO {table}({k}, {v}) VALUES (?, ?) "  # noqa: S608 -- names from code
            f"ON CONFLICT({k}) DO UPDATE SET {v} = excluded.{v}",
            (key, value),
        )

    # --- transactions ----------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable write; nested uses join the outer transaction."""
        if self._txn_depth:
            self._txn_depth += 1
            try:
                yield
            finally:
                self._txn_depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._txn_depth = 1
        try:
            yield
        except BaseException:
            self._txn_depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._txn_depth = 0
        self._db.execute("COMMIT")

    # --- meta and secrets --------------------------------------------------------------

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set_meta(self, key: str, value: bytes) -> None:
        self.upsert("meta", ("key", "value"), key, value)

    def flag(self, name: str) -> bool:
        return self._meta(f"flag:{name}") is not None

    def set_flag(self, name: str) -> None:
        self._set_meta(f"flag:{name}", b"1")

    @property
    def last_inbox_seq(self) -> int:
        return int(self._meta("last_inbox_seq") or b"0")

    def set_last_inbox_seq(self, seq: int) -> None:
        """Advance ``lastGlobalInboxSeq``; call inside the transaction storing those frames."""
        if seq > self.last_inbox_seq:
            self._set_meta("last_inbox_seq", str(seq).encode())

    def get_secret(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT sealed FROM secrets WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return self.unseal(b"secret", name.encode(), bytes(row[0]))

    def get_secret_sealed(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT sealed FROM secrets WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_secret(self, name: str, value: bytes) -> None:
        self.put_secret_sealed(name, self.seal(b"secret", name.encode(), value))

    def put_secret_sealed(self, name: str, sealed: bytes) -> None:
        """Store a record the caller sealed itself (Olm pickles seal their own binding)."""
        self.upsert("secrets", ("name", "sealed"), name, sealed)

    # --- key transparency -----------------------------------------------------------------

    def get_kt(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT sealed FROM kt_state WHERE name = ?", (name,)).fetchone()
        return None if row is None else self.unseal(b"kt", name.encode(), bytes(row[0]))

    def put_kt(self, name: str, value: bytes) -> None:
        self.upsert("kt_state", ("name", "sealed"), name, self.seal(b"kt", name.encode(), value))

    def add_kt_alert(self, record: bytes) -> int:
        cur = self._db.execute(
            "INSERT INTO kt_alerts(sealed) VALUES (?)", (self.seal(b"kt_alert", b"", record),)
        )
        return int(cur.lastrowid or 0)

    def kt_alerts(self, *, acknowledged: bool = False) -> list[tuple[int, bytes]]:
        """Alerts not yet acknowledged (``acknowledged``: every one), oldest first."""
        rows = self._db.execute(
            "SELECT id, sealed FROM kt_alerts WHERE acknowledged <= ? ORDER BY id",
            (int(acknowledged),),
        ).fetchall()
        return [(int(i), self.unseal(b"kt_alert", b"", bytes(s))) for i, s in rows]

    def acknowledge_kt_alerts(self) -> int:
        cur = self._db.execute("UPDATE kt_alerts SET acknowledged = 1 WHERE acknowledged = 0")
        return cur.rowcount

    def acknowledge_kt_alert(self, alert_id: int) -> None:
        self._db.execute("UPDATE kt_alerts SET acknowledged = 1 WHERE id = ?", (alert_id,))

    # --- contacts ------------------------------------------------------------------------

    def get_contact(self, username: str) -> Contact | None:
        row = self._db.execute(
            "SELECT sealed FROM contacts WHERE tag = ?", (self.tag("user", username),)
        ).fetchone()
        if row is None:
            return None
        try:
            return Contact.decode(self.unseal(b"contact", username.encode(), bytes(row[0])))
        except DecodeError:
            raise StoreError("a contact record in the local store is damaged") from None

    def put_contact(self, contact: Contact) -> None:
        sealed = self.seal(b"contact", contact.username.encode(), contact.encode())
        self.upsert("contacts", ("tag", "sealed"), self.tag("user", contact.username), sealed)

    # --- pairwise sessions (sealed by pairwise/ itself) ------------------------------------

    def device_tag(self, username: str, device_id: str) -> bytes:
        return self.tag("device", f"{username}/{device_id}")

    def load_sessions(self, username: str, device_id: str) -> list[bytes]:
        """Sealed sessions with one peer device, most recently used first."""
        rows = self._db.execute(
            "SELECT sealed FROM sessions WHERE device_tag = ? ORDER BY updated DESC",
            (self.device_tag(username, device_id),),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def delete_sessions(self, username: str, device_id: str) -> None:
        """Forget every session with one peer device (it was revoked)."""
        self._db.execute(
            "DELETE FROM sessions WHERE device_tag = ?", (self.device_tag(username, device_id),)
        )

    def put_session(
        self, username: str, device_id: str, session_id: str, sealed: bytes, updated: int
    ) -> None:
        self._db.execute(
            "INSERT INTO sessions(tag, device_tag, updated, sealed) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(tag) DO UPDATE SET sealed = excluded.sealed, updated = excluded.updated",
            (
                self.tag("session", f"{username}/{device_id}/{session_id}"),
                self.device_tag(username, device_id),
                updated,
                sealed,
            ),
        )

    # --- messages --------------------------------------------------------------------------

    def has_message(self, message_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM messages WHERE message_id = ?", (message_id,)
        ).fetchone()
        return row is not None

    def add_message(
        self,
        *,
        message_id: str,
        peer: str,
        sender: str,
        sender_device: str,
        outgoing: bool,
        status: DeliveryStatus,
        text: str,
        content_type: str = "text",
        client_created_ms: int = 0,
        server_received_ms: int = 0,
        local_at_ms: int = 0,
        server_seq: int | None = None,
        inbox_seq: int | None = None,
        idempotency_key: str | None = None,
    ) -> int | None:
        """Insert a message; ``None`` if its messageId is already stored (dedupe)."""
        body = _Body(
            peer=peer,
            sender=sender,
            sender_device=sender_device,
            content_type=content_type,
            client_created_ms=client_created_ms,
            server_received_ms=server_received_ms,
            local_at_ms=local_at_ms,
            text=text,
        )
        cur = self._db.execute(
            "INSERT INTO messages(message_id, peer_tag, outgoing, status, idempotency_key, "
            "server_seq, inbox_seq, sealed) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(message_id) DO NOTHING",
            (
                message_id,
                self.tag("user", peer),
                int(outgoing),
                int(status),
                idempotency_key,
                server_seq,
                inbox_seq,
                self.seal(b"message", message_id.encode(), body.encode()),
            ),
        )
        return cur.lastrowid if cur.rowcount == 1 else None

    def add_outgoing(
        self, message_id: str, *, peer: str, sender: str, sender_device: str, text: str,
        created_ms: int, idempotency_key: str, content_type: str = "text",
    ) -> None:
        """A message this device is sending (status "sending" until the server's ack)."""
        self.add_message(
            message_id=message_id, peer=peer, sender=sender, sender_device=sender_device,
            outgoing=True, status=DeliveryStatus.SENDING, text=text, content_type=content_type,
            client_created_ms=created_ms, local_at_ms=created_ms,
            idempotency_key=idempotency_key,
        )

    def mark_sent(self, message_id: str, server_seq: int) -> bool:
        """Record the server's ack; returns whether the message was still unacked."""
        cur = self._db.execute(
            "UPDATE messages SET status = ?, server_seq = ? WHERE message_id = ? AND status = ?",
            (int(DeliveryStatus.SENT), server_seq, message_id, int(DeliveryStatus.SENDING)),
        )
        return cur.rowcount == 1

    def set_status(self, message_id: str, status: DeliveryStatus) -> None:
        self._db.execute(
            "UPDATE messages SET status = ? WHERE message_id = ?", (int(status), message_id)
        )

    def rewrite_text(self, message_id: str, text: str) -> None:
        """Replace a stored message's sealed text (a delete wipes it; the row stays)."""
        m = self.get_message(message_id)
        if m is not None:
            body = _Body(peer=m.peer, sender=m.sender, sender_device=m.sender_device,
                         content_type=m.content_type, client_created_ms=m.client_created_ms,
                         server_received_ms=m.server_received_ms, local_at_ms=m.local_at_ms,
                         text=text)
            self._db.execute("UPDATE messages SET sealed = ? WHERE message_id = ?", (
                self.seal(b"message", message_id.encode(), body.encode()), message_id))

    def _row(self, row: tuple[Any, ...]) -> StoredMessage:
        local_id, message_id, outgoing, status, idem, server_seq, inbox_seq, sealed = row
        try:
            body = _Body.decode(self.unseal(b"message", message_id.encode(), bytes(sealed)))
        except DecodeError:
            raise StoreError("a message record in the local store is damaged") from None
        return StoredMessage(
            local_id=local_id,
            message_id=message_id,
            peer=body.peer,
            sender=body.sender,
            sender_device=body.sender_device,
            outgoing=bool(outgoing),
            status=DeliveryStatus(status),
            text=body.text,
            content_type=body.content_type,
            client_created_ms=body.client_created_ms,
            server_received_ms=body.server_received_ms,
            local_at_ms=body.local_at_ms,
            server_seq=server_seq,
            inbox_seq=inbox_seq,
            idempotency_key=idem,
        )

    _COLUMNS = "id, message_id, outgoing, status, idempotency_key, server_seq, inbox_seq, sealed"

    def get_message(self, message_id: str) -> StoredMessage | None:
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM messages WHERE message_id = ?",  # noqa: S608
            (message_id,),
        ).fetchone()
        return None if row is None else self._row(row)

    def history(
        self, peer: str, *, limit: int = 50, before: int | None = None
    ) -> list[StoredMessage]:
        """The last ``limit`` messages with ``peer`` (oldest first), older than ``before``."""
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM messages "  # noqa: S608
            "WHERE peer_tag = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (self.tag("user", peer), before if before is not None else 1 << 62, limit),
        ).fetchall()
        return [self._row(r) for r in reversed(rows)]

    def messages_after(self, local_id: int, *, limit: int = 1000) -> list[StoredMessage]:
        """Every message (all peers) stored after ``local_id``, oldest first."""
        rows = self._db.execute(
            f"SELECT {self._COLUMNS} FROM messages WHERE id > ? "  # noqa: S608
            "ORDER BY id LIMIT ?",
            (local_id, limit),
        ).fetchall()
        return [self._row(r) for r in rows]

    def last_local_id(self) -> int:
        row = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()
        return int(row[0])

    # --- outbox ------------------------------------------------------------------------------

    def add_outbox(self, message_id: str, idempotency_key: str, frame: str) -> None:
        self._db.execute(
            "INSERT INTO outbox(message_id, idempotency_key, sealed) VALUES (?, ?, ?)",
            (message_id, idempotency_key, self._seal_frame(message_id, frame)),
        )

    def replace_outbox(self, message_id: str, frame: str) -> None:
        """A re-encrypted send (after ``device_mismatch``) keeps its place and its key."""
        self._db.execute(
            "UPDATE outbox SET sealed = ? WHERE message_id = ?",
            (self._seal_frame(message_id, frame), message_id),
        )

    def _seal_frame(self, message_id: str, frame: str) -> bytes:
        return self.seal(b"outbox", message_id.encode(), frame.encode("utf-8"))

    def remove_outbox(self, message_id: str) -> bool:
        cur = self._db.execute("DELETE FROM outbox WHERE message_id = ?", (message_id,))
        return cur.rowcount == 1

    def outbox(self, *, after_oid: int = 0, limit: int = 500) -> list[OutboxItem]:
        rows = self._db.execute(
            "SELECT oid, message_id, idempotency_key, sealed FROM outbox "
            "WHERE oid > ? ORDER BY oid LIMIT ?",
            (after_oid, limit),
        ).fetchall()
        return [
            OutboxItem(
                oid,
                mid,
                idem,
                self.unseal(b"outbox", mid.encode(), bytes(sealed)).decode("utf-8"),
            )
            for oid, mid, idem, sealed in rows
        ]

    def get_outbox(self, message_id: str) -> OutboxItem | None:
        row = self._db.execute(
            "SELECT oid, message_id, idempotency_key, sealed FROM outbox WHERE message_id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        oid, mid, idem, sealed = row
        frame = self.unseal(b"outbox", mid.encode(), bytes(sealed)).decode("utf-8")
        return OutboxItem(oid, mid, idem, frame)

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    # --- sends not encrypted yet ---------------------------------------------------------

    def add_unsent(self, message_id: str) -> None:
        """Queue a stored outgoing message for encryption on the next connection."""
        self._db.execute("INSERT INTO unsent(message_id) VALUES (?)", (message_id,))

    def unsent(self, *, limit: int = 500) -> list[str]:
        """messageIds waiting for encryption, oldest first."""
        rows = self._db.execute(
            "SELECT message_id FROM unsent ORDER BY oid LIMIT ?", (limit,)
        ).fetchall()
        return [str(r[0]) for r in rows]

    def remove_unsent(self, message_id: str) -> bool:
        cur = self._db.execute("DELETE FROM unsent WHERE message_id = ?", (message_id,))
        return cur.rowcount == 1

    def unsent_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM unsent").fetchone()[0])

    # --- rooms ---------------------------------------------------------------------------------

    def add_room(self, room_id: str, label: str) -> bool:
        """A room row; ``False`` if this room is already known (its label is kept)."""
        cur = self._db.execute(
            "INSERT INTO rooms(room_id, label_tag, sealed_label) VALUES (?, ?, ?) "
            "ON CONFLICT(room_id) DO NOTHING",
            (room_id, self.tag("room", label), self._seal_label(room_id, label)),
        )
        return cur.rowcount == 1

    def _seal_label(self, room_id: str, label: str) -> bytes:
        return self.seal(b"room-label", room_id.encode(), label.encode("utf-8"))

    def set_room_label(self, room_id: str, label: str) -> None:
        self._db.execute(
            "UPDATE rooms SET label_tag = ?, sealed_label = ? WHERE room_id = ?",
            (self.tag("room", label), self._seal_label(room_id, label), room_id),
        )

    def rooms(self) -> list[RoomRow]:
        rows = self._db.execute(
            "SELECT room_id, sealed_label, sealed_state, epoch, last_seq, removed FROM rooms "
            "ORDER BY rowid"
        ).fetchall()
        return [self._room_row(r) for r in rows]

    def get_room(self, room_id: str) -> RoomRow | None:
        row = self._db.execute(
            "SELECT room_id, sealed_label, sealed_state, epoch, last_seq, removed FROM rooms "
            "WHERE room_id = ?",
            (room_id,),
        ).fetchone()
        return None if row is None else self._room_row(row)

    def rooms_by_label(self, label: str) -> list[str]:
        rows = self._db.execute(
            "SELECT room_id FROM rooms WHERE label_tag = ? ORDER BY rowid",
            (self.tag("room", label),),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _room_row(self, row: tuple[Any, ...]) -> RoomRow:
        room_id, sealed_label, sealed_state, epoch, last_seq, removed = row
        label = self.unseal(b"room-label", room_id.encode(), bytes(sealed_label)).decode("utf-8")
        state = (
            None
            if sealed_state is None
            else self.unseal(b"room-state", room_id.encode(), bytes(sealed_state))
        )
        return RoomRow(
            room_id=room_id,
            label=label,
            state=state,
            epoch=int(epoch),
            last_seq=int(last_seq),
            removed=bool(removed),
        )

    def update_room(
        self,
        room_id: str,
        *,
        epoch: int | None = None,
        last_seq: int | None = None,
        state: bytes | None = None,
        removed: bool | None = None,
    ) -> None:
        """Advance a room's position; call inside the transaction that stores what it covers."""
        if epoch is not None:
            self._db.execute("UPDATE rooms SET epoch = ? WHERE room_id = ?", (epoch, room_id))
        if last_seq is not None:
            self._db.execute(
                "UPDATE rooms SET last_seq = MAX(last_seq, ?) WHERE room_id = ?",
                (last_seq, room_id),
            )
        if state is not None:
            self._db.execute(
                "UPDATE rooms SET sealed_state = ? WHERE room_id = ?",
                (self.seal(b"room-state", room_id.encode(), state), room_id),
            )
        if removed is not None:
            self._db.execute(
                "UPDATE rooms SET removed = ? WHERE room_id = ?", (int(removed), room_id)
            )

    def put_epoch_authenticator(self, room_id: str, epoch: int, value: bytes) -> None:
        record = f"{room_id}/{epoch}".encode()
        self._db.execute(
            "INSERT INTO room_epochs(room_id, epoch, sealed) VALUES (?, ?, ?) "
            "ON CONFLICT(room_id, epoch) DO NOTHING",
            (room_id, epoch, self.seal(b"epoch-auth", record, value)),
        )

    def epoch_authenticators(self, room_id: str) -> dict[int, bytes]:
        rows = self._db.execute(
            "SELECT epoch, sealed FROM room_epochs WHERE room_id = ?", (room_id,)
        ).fetchall()
        return {
            int(e): self.unseal(b"epoch-auth", f"{room_id}/{e}".encode(), bytes(sealed))
            for e, sealed in rows
        }

    # --- MLS KeyPackages (private halves, sealed) -------------------------------------------

    def add_key_package(
        self, ref: bytes, record: bytes, *, last_resort: bool, now: int, suite: int = 1
    ) -> None:
        """``last_resort`` is stored as the KeyPackage's suite (0: one-time; 1, as before
        suites, suite 1): a new last resort replaces only the one of its own suite."""
        if last_resort:
            self._db.execute("DELETE FROM key_packages WHERE last_resort = ?", (suite,))
        self._db.execute(
            "INSERT INTO key_packages(ref, last_resort, created, sealed) VALUES (?, ?, ?, ?)",
            (ref, suite if last_resort else 0, now, self.seal(b"key-package", ref, record)),
        )

    def get_key_package(self, ref: bytes) -> tuple[bytes, bool] | None:
        row = self._db.execute(
            "SELECT sealed, last_resort FROM key_packages WHERE ref = ?", (ref,)
        ).fetchone()
        if row is None:
            return None
        return self.unseal(b"key-package", ref, bytes(row[0])), bool(row[1])

    def key_package_records(self) -> list[tuple[bytes, bytes, bool]]:
        """Every KeyPackage of ours still held: (ref, record, last_resort)."""
        found = self._db.execute("SELECT ref, sealed, last_resort FROM key_packages").fetchall()
        return [
            (bytes(ref), self.unseal(b"key-package", bytes(ref), bytes(sealed)), bool(lr))
            for ref, sealed, lr in found
        ]

    def delete_key_package(self, ref: bytes) -> None:
        self._db.execute("DELETE FROM key_packages WHERE ref = ? AND last_resort = 0", (ref,))

    def key_package_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM key_packages WHERE last_resort = 0")
        return int(row.fetchone()[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomRow:
    room_id: str
    label: str
    state: bytes | None
    epoch: int
    last_seq: int
    removed: bool
