"""The hand-written KSMP v3 and room parsers that the declared events replaced.

Private and frozen: only ``tests/unit/test_protocol_differential.py`` imports it, to
check that the declared events (:mod:`sottovoce.protocol.events`,
:mod:`sottovoce.protocol.rooms`) accept and refuse exactly what these did. It goes
when that differential test is retired; nothing else may import it, and it is not
to be fixed or extended (a fix lands in the field kinds and the test's expectations).

Only the parse direction is kept: each ``parse_*`` returns the fields it read as a
plain dict (nested structs as dicts too) or raises the same :class:`ProtocolError`
the old ``from_data``/``from_wire`` raised, checks in the same order.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

from sottovoce.limits import (
    MAX_CIPHERTEXT_BYTES,
    MAX_ID_LEN,
    MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES,
    MAX_KEY_PACKAGE_BYTES,
    MAX_KEY_PACKAGES_PER_UPLOAD,
    MAX_PREKEYS_PER_UPLOAD,
    MAX_ROOM_AUDIT_ENTRY_BYTES,
    MAX_ROOM_COMMIT_BYTES,
    MAX_ROOM_GROUP_INFO_BYTES,
    MAX_ROOM_MEMBERS,
    MAX_ROOM_WELCOME_BYTES,
    MAX_SEND_DEVICES,
    ROOM_TOKEN_MAX_LEN,
    ROOM_TOKEN_MIN_LEN,
)
from sottovoce.protocol.fields import ProtocolError
from sottovoce.secret import Secret

Data = dict[str, Any]

_ID_RE = re.compile(r"[A-Za-z0-9_.:@/+=-]+")
_MAX_INT = (1 << 63) - 1
_ROOM_ID_RE = re.compile(r"room:[0-9a-f]{32}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.:@/+=-]+")
PROTOCOL = "ksmpv3"
CONTENT_TYPES = frozenset({"text", "image", "voice", "system"})
ROOM_KINDS = frozenset({"commit", "message", "welcome", "notice"})
CERT_MAX_BYTES = 4096
PREKEY_MAX_BYTES = 512
SIGNATURE_BYTES = 64

# --- the old field readers ------------------------------------------------------------


def bad(field: str, why: str) -> ProtocolError:
    return ProtocolError("bad_request", f"field '{field}' {why}")


def req_str(d: Data, name: str, *, max_len: int = MAX_ID_LEN) -> str:
    v = d.get(name)
    if not isinstance(v, str):
        raise bad(name, "must be a string")
    if not 0 < len(v) <= max_len:
        raise bad(name, f"must be 1-{max_len} characters")
    return v


def req_id(d: Data, name: str) -> str:
    v = req_str(d, name)
    if not _ID_RE.fullmatch(v):
        raise bad(name, "contains characters outside [A-Za-z0-9_.:@/+=-]")
    return v


def opt_id(d: Data, name: str) -> str | None:
    if d.get(name) in (None, ""):
        return None
    return req_id(d, name)


def req_int(d: Data, name: str, *, minimum: int = 0, maximum: int = _MAX_INT) -> int:
    v = d.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise bad(name, "must be an integer")
    if not minimum <= v <= maximum:
        raise bad(name, f"must be between {minimum} and {maximum}")
    return v


def opt_int(d: Data, name: str, default: int = 0, *, minimum: int = 0) -> int:
    if d.get(name) is None:
        return default
    return req_int(d, name, minimum=minimum)


def opt_bool(d: Data, name: str, default: bool = False) -> bool:
    v = d.get(name, default)
    if not isinstance(v, bool):
        raise bad(name, "must be true or false")
    return v


def req_b64(d: Data, name: str, *, max_bytes: int) -> bytes:
    v = d.get(name)
    if not isinstance(v, str):
        raise bad(name, "must be a base64 string")
    if len(v) > (max_bytes + 2) // 3 * 4:
        raise ProtocolError("payload_too_large", f"field '{name}' exceeds {max_bytes} bytes")
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise bad(name, "is not valid base64") from None
    if len(raw) > max_bytes:
        raise ProtocolError("payload_too_large", f"field '{name}' exceeds {max_bytes} bytes")
    return raw


def req_list(d: Data, name: str, *, max_items: int) -> list[Any]:
    v = d.get(name)
    if not isinstance(v, list):
        raise bad(name, "must be a list")
    if len(v) > max_items:
        raise ProtocolError("payload_too_large", f"field '{name}' has more than {max_items} items")
    return v


def req_obj(d: Data, name: str) -> Data:
    v = d.get(name)
    if not isinstance(v, dict):
        raise bad(name, "must be an object")
    return v


def req_room_id(d: Data, name: str = "roomId") -> str:
    v = d.get(name)
    if not isinstance(v, str) or not _ROOM_ID_RE.fullmatch(v):
        raise bad(name, "must be 'room:' followed by 32 lowercase hex characters")
    return v


def req_token(d: Data, name: str = "token") -> Secret:
    v = d.get(name)
    if not isinstance(v, str):
        raise bad(name, "must be a string")
    if not ROOM_TOKEN_MIN_LEN <= len(v) <= ROOM_TOKEN_MAX_LEN or not _TOKEN_RE.fullmatch(v):
        raise bad(name, f"must be {ROOM_TOKEN_MIN_LEN}-{ROOM_TOKEN_MAX_LEN} id characters")
    return Secret(v.encode("ascii"))


def opt_token(d: Data, name: str = "token") -> Secret | None:
    return None if d.get(name) is None else req_token(d, name)


def exact_b64(d: Data, name: str, *, max_bytes: int) -> bytes:
    v = req_b64(d, name, max_bytes=max_bytes)
    if len(v) > max_bytes:
        raise ProtocolError("payload_too_large", f"field '{name}' exceeds {max_bytes} bytes")
    return v


def opt_b64(d: Data, name: str, *, max_bytes: int) -> bytes | None:
    return None if d.get(name) is None else exact_b64(d, name, max_bytes=max_bytes)


def _nonempty_b64(d: Data, name: str, *, max_bytes: int) -> bytes:
    v = exact_b64(d, name, max_bytes=max_bytes)
    if not v:
        raise bad(name, "must not be empty")
    return v


def _signature(d: Data) -> bytes:
    sig = req_b64(d, "signature", max_bytes=SIGNATURE_BYTES)
    if len(sig) != SIGNATURE_BYTES:
        raise bad("signature", f"must be {SIGNATURE_BYTES} bytes")
    return sig


# --- nested structs ---------------------------------------------------------------------


def parse_envelope(d: Data) -> Data:
    if d.get("protocol") != PROTOCOL:
        raise bad("protocol", f"must be '{PROTOCOL}'")
    content_type = req_str(d, "contentType")
    if content_type not in CONTENT_TYPES:
        raise bad("contentType", f"must be one of {sorted(CONTENT_TYPES)}")
    recipient = d.get("recipientUserId", "")
    ephemeral = opt_bool(d, "ephemeral")
    server_seq = eph_seq = 0
    if ephemeral:
        if "serverSeq" in d:
            raise bad("serverSeq", "an ephemeral message has ephemeralSeq, not serverSeq")
        eph_seq = req_int(d, "ephemeralSeq", minimum=1)
    else:
        if "ephemeralSeq" in d:
            raise bad("ephemeralSeq", "only an ephemeral message has one")
        server_seq = req_int(d, "serverSeq", minimum=1)
    return dict(
        conversationId=req_id(d, "conversationId"),
        messageId=req_id(d, "messageId"),
        senderUserId=req_id(d, "senderUserId"),
        senderDeviceId=req_id(d, "senderDeviceId"),
        recipientUserId=recipient if isinstance(recipient, str) else "",
        ciphertext=req_b64(d, "ciphertext", max_bytes=MAX_CIPHERTEXT_BYTES),
        contentType=content_type,
        clientCreatedAtMs=opt_int(d, "clientCreatedAtMs"),
        serverReceivedAtMs=req_int(d, "serverReceivedAtMs"),
        idempotencyKey=req_id(d, "idempotencyKey"),
        serverSeq=server_seq,
        ephemeralSeq=eph_seq,
        ephemeral=ephemeral,
    )


def _device_ciphertext(d: Any) -> Data:
    if not isinstance(d, dict):
        raise bad("ciphertexts", "items must be objects")
    return dict(
        userId=req_id(d, "userId"),
        deviceId=req_id(d, "deviceId"),
        ciphertext=req_b64(d, "ciphertext", max_bytes=MAX_CIPHERTEXT_BYTES),
    )


def _member(d: Any, name: str) -> Data:
    if not isinstance(d, dict):
        raise bad(name, "items must be objects")
    return dict(userId=req_id(d, "userId"), deviceId=req_id(d, "deviceId"))


def _members(d: Data, name: str) -> tuple[Data, ...]:
    items = tuple(_member(x, name) for x in req_list(d, name, max_items=MAX_ROOM_MEMBERS))
    if len({(m["userId"], m["deviceId"]) for m in items}) != len(items):
        raise bad(name, "names a device twice")
    return items


def _keys(ms: tuple[Data, ...]) -> set[tuple[str, str]]:
    return {(m["userId"], m["deviceId"]) for m in ms}


# --- KSMP v3 core events ----------------------------------------------------------------


def _username(d: Data) -> Data:
    return dict(username=req_id(d, "username"))


def _register(d: Data) -> Data:
    return dict(
        certificate=req_b64(d, "certificate", max_bytes=CERT_MAX_BYTES), signature=_signature(d)
    )


def _auth(d: Data) -> Data:
    return dict(
        username=req_id(d, "username"), deviceId=req_id(d, "deviceId"), signature=_signature(d)
    )


def _prekeys_upload(d: Data) -> Data:
    raw = req_list(d, "oneTimeKeys", max_items=MAX_PREKEYS_PER_UPLOAD)
    keys = tuple(
        req_b64({"oneTimeKeys": k}, "oneTimeKeys", max_bytes=PREKEY_MAX_BYTES) for k in raw
    )
    fallback = (
        None
        if d.get("fallbackKey") is None
        else req_b64(d, "fallbackKey", max_bytes=PREKEY_MAX_BYTES)
    )
    return dict(oneTimeKeys=keys, fallbackKey=fallback)


def _send(d: Data) -> Data:
    if d.get("protocol", PROTOCOL) != PROTOCOL:
        raise bad("protocol", f"must be '{PROTOCOL}'")
    content_type = req_str(d, "contentType")
    if content_type not in CONTENT_TYPES:
        raise bad("contentType", f"must be one of {sorted(CONTENT_TYPES)}")
    items = req_list(d, "ciphertexts", max_items=MAX_SEND_DEVICES)
    if not items:
        raise bad("ciphertexts", "must not be empty")
    ciphertexts = tuple(_device_ciphertext(c) for c in items)
    targets = {(c["userId"], c["deviceId"]) for c in ciphertexts}
    if len(targets) != len(ciphertexts):
        raise bad("ciphertexts", "names a device twice")
    return dict(
        conversationId=req_id(d, "conversationId"),
        messageId=req_id(d, "messageId"),
        idempotencyKey=req_id(d, "idempotencyKey"),
        recipientUserId=req_id(d, "recipientUserId"),
        contentType=content_type,
        clientCreatedAtMs=opt_int(d, "clientCreatedAtMs"),
        ciphertexts=ciphertexts,
        senderUserId=opt_id(d, "senderUserId"),
        ephemeral=opt_bool(d, "ephemeral"),
        expiresAtMs=opt_int(d, "expiresAtMs"),
    )


def _push_register(d: Data) -> Data:
    endpoint = req_str(d, "endpoint", max_len=2048)
    if not endpoint.startswith(("https://", "http://")):
        raise bad("endpoint", "must be an http(s) URL")
    return dict(endpoint=endpoint)


# --- room events ------------------------------------------------------------------------


def _keypackages_upload(d: Data) -> Data:
    raw = req_list(d, "keyPackages", max_items=MAX_KEY_PACKAGES_PER_UPLOAD)
    kps = tuple(
        _nonempty_b64({"keyPackages": k}, "keyPackages", max_bytes=MAX_KEY_PACKAGE_BYTES)
        for k in raw
    )
    last = (
        None if d.get("lastResort") is None
        else _nonempty_b64(d, "lastResort", max_bytes=MAX_KEY_PACKAGE_BYTES)
    )
    if not kps and last is None:
        raise bad("keyPackages", "must not be empty without a lastResort")
    return dict(keyPackages=kps, lastResort=last)


def _room_commit(d: Data) -> Data:
    adds = _members(d, "adds")
    removes = _members(d, "removes")
    if _keys(adds) & _keys(removes):
        raise bad("adds", "names a device that 'removes' also names")
    welcome = opt_b64(d, "welcome", max_bytes=MAX_ROOM_WELCOME_BYTES)
    if welcome is not None and not adds:
        raise bad("welcome", "needs at least one device in 'adds'")
    return dict(
        roomId=req_room_id(d),
        epoch=req_int(d, "epoch"),
        messageId=req_id(d, "messageId"),
        idempotencyKey=req_id(d, "idempotencyKey"),
        commit=_nonempty_b64(d, "commit", max_bytes=MAX_ROOM_COMMIT_BYTES),
        welcome=welcome,
        adds=adds,
        removes=removes,
        groupInfo=opt_b64(d, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES),
        audit=opt_b64(d, "audit", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES),
        token=opt_token(d),
    )


def _room_send(d: Data) -> Data:
    content_type = req_str(d, "contentType")
    if content_type not in CONTENT_TYPES:
        raise bad("contentType", f"must be one of {sorted(CONTENT_TYPES)}")
    return dict(
        roomId=req_room_id(d),
        epoch=req_int(d, "epoch"),
        messageId=req_id(d, "messageId"),
        idempotencyKey=req_id(d, "idempotencyKey"),
        contentType=content_type,
        clientCreatedAtMs=opt_int(d, "clientCreatedAtMs"),
        ciphertext=_nonempty_b64(d, "ciphertext", max_bytes=MAX_CIPHERTEXT_BYTES),
    )


def _groupinfo_get(d: Data) -> Data:
    token = opt_token(d)
    room_id = None if d.get("roomId") is None else req_room_id(d)
    if (token is None) == (room_id is None):
        raise bad("token", "give exactly one of 'token' and 'roomId'")
    return dict(token=token, roomId=room_id)


def _audit_get(d: Data) -> Data:
    after = -1 if d.get("afterIndex") is None else req_int(d, "afterIndex", minimum=-1)
    return dict(roomId=req_room_id(d), afterIndex=after)


def parse_room_envelope(d: Data) -> Data:
    env = parse_envelope(d)
    kind = req_str(d, "roomKind")
    if kind not in ROOM_KINDS:
        raise bad("roomKind", f"must be one of {sorted(ROOM_KINDS)}")
    join = d.get("joinRequest")
    remove = d.get("removeRequest")
    reason = None
    if remove is not None:
        reason = req_str(req_obj(d, "removeRequest"), "reason")
    return dict(
        envelope=env,
        roomEpoch=req_int(d, "roomEpoch"),
        roomKind=kind,
        adds=_members(d, "adds") if "adds" in d else (),
        removes=_members(d, "removes") if "removes" in d else (),
        joinRequest=None if join is None else _member(join, "joinRequest"),
        removeRequest=None if remove is None else _member(remove, "removeRequest"),
        removeReason=reason,
    )


def parse_wire_error(d: Data) -> Data:
    details = d.get("details", {})
    return dict(
        code=req_str(d, "code"),
        message=str(d.get("message", ""))[:500],
        retryable=opt_bool(d, "retryable"),
        retryAfterMs=opt_int(d, "retryAfterMs"),
        messageId=opt_id(d, "messageId"),
        details=details if isinstance(details, dict) else {},
    )


def parse_inbox_frame(data: Data) -> tuple[int, Data]:
    return opt_int(data, "globalInboxSeq"), parse_envelope(req_obj(data, "envelope"))


def parse_room_frame(data: Data) -> Data:
    return parse_room_envelope(req_obj(data, "envelope"))


#: Every client event the old server dispatched on, by wire name.
CLIENT_PARSERS: dict[str, Callable[[Data], Data]] = {
    "sottovoce.register": _register,
    "sottovoce.device.add": _register,
    "sottovoce.auth": _auth,
    "sottovoce.username.check": _username,
    "sottovoce.directory.lookup": _username,
    "sottovoce.prekeys.upload": _prekeys_upload,
    "sottovoce.prekeys.claim": _username,
    "ksmpv3.send": _send,
    "ksmpv3.ack.read": lambda d: dict(
        upToGlobalInboxSeq=req_int(d, "upToGlobalInboxSeq", minimum=1)
    ),
    "ksmpv3.resume": lambda d: dict(lastGlobalInboxSeq=opt_int(d, "lastGlobalInboxSeq")),
    "ping": lambda d: {},
    "sottovoce.push.register": _push_register,
    "sottovoce.device.revoke": lambda d: dict(
        revocation=req_b64(d, "revocation", max_bytes=CERT_MAX_BYTES)
    ),
    "sottovoce.account.delete": lambda d: dict(
        statement=req_b64(d, "statement", max_bytes=CERT_MAX_BYTES)
    ),
    "sottovoce.keypackages.upload": _keypackages_upload,
    "sottovoce.keypackages.claim": _username,
    "sottovoce.room.create": lambda d: dict(
        roomId=req_room_id(d),
        groupInfo=opt_b64(d, "groupInfo", max_bytes=MAX_ROOM_GROUP_INFO_BYTES),
    ),
    "sottovoce.room.commit": _room_commit,
    "sottovoce.room.send": _room_send,
    "sottovoce.room.ack": lambda d: dict(
        roomId=req_room_id(d), upToServerSeq=req_int(d, "upToServerSeq", minimum=1)
    ),
    "sottovoce.room.sync": lambda d: dict(
        roomId=req_room_id(d), afterServerSeq=opt_int(d, "afterServerSeq")
    ),
    "sottovoce.room.info": lambda d: dict(roomId=req_room_id(d)),
    "sottovoce.rooms.list": lambda d: {},
    "sottovoce.room.token.set": lambda d: dict(
        roomId=req_room_id(d),
        token=req_token(d),
        audit=opt_b64(d, "audit", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES),
    ),
    "sottovoce.room.token.revoke": lambda d: dict(
        roomId=req_room_id(d), audit=opt_b64(d, "audit", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES)
    ),
    "sottovoce.room.groupinfo.get": _groupinfo_get,
    "sottovoce.room.join.request": lambda d: dict(
        token=req_token(d),
        keyPackage=_nonempty_b64(d, "keyPackage", max_bytes=MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES),
    ),
    "sottovoce.room.audit.append": lambda d: dict(
        roomId=req_room_id(d),
        entry=_nonempty_b64(d, "entry", max_bytes=MAX_ROOM_AUDIT_ENTRY_BYTES),
    ),
    "sottovoce.room.audit.get": _audit_get,
}
