"""Key-transparency events (docs/protocol.md §Key transparency).

Authenticated requests; each reply carries the request's ``requestId``::

    sottovoce.kt.head    {since?}            -> sottovoce.kt.head.result
        {checkpoint, consistency: [b64 32-byte hashes], log_key, vrf_key, witnesses: [vkey]}
    sottovoce.kt.lookup  {username, since?}  -> sottovoce.kt.lookup.result {response}
    sottovoce.kt.history {since?, start?}    -> sottovoce.kt.history.result {response}

``since`` is the tree size of the last checkpoint the client verified (0: none):
the consistency proof runs from it to the checkpoint served. ``response`` is the
base64 of a ``kt.verify.LookupResponse`` / ``HistoryResponse`` encoding, or with
``start`` (a version number) a ``HistoryPage`` of the versions from ``start`` on, as
many as the server's page holds (``--kt-history-page``) and one frame fits. The
checkpoint is the signed note text with every cosignature line the server holds.
Errors are ``ksmpv3.error`` frames; ``kt_unavailable`` (retryable) while the log
has no checkpoint yet.
"""

from __future__ import annotations

from sottovoce.limits import KT_MAX_LOG_SIZE, KT_MAX_NOTE_BYTES, KT_MAX_VERSIONS, MAX_FRAME_BYTES
from sottovoce.protocol.fields import B64, ID, Int, ListOf, Str
from sottovoce.protocol.pow import PROOF_BYTES as POW_PROOF_BYTES
from sottovoce.protocol.spec import ClientEvent, WireStruct, event, registry, struct, wire

#: A tree size a client may name: 0 (none) up to the largest log there can be.
SINCE = Int(minimum=0, maximum=KT_MAX_LOG_SIZE)
HASH = B64(max_bytes=32, size=32)
POW = B64(max_bytes=POW_PROOF_BYTES, size=POW_PROOF_BYTES)
#: A C2SP verifier key ("name+keyid+base64"): a key name (256 bytes at most) and 54 more.
VKEY = Str(max_len=320)
#: The most proof hashes a consistency proof can have for a log of KT_MAX_LOG_SIZE leaves.
MAX_PROOF_HASHES = 2 * 48 + 2
MAX_WITNESSES = 32

KT_HEAD_RESULT = "sottovoce.kt.head.result"
KT_LOOKUP_RESULT = "sottovoce.kt.lookup.result"
KT_HISTORY_RESULT = "sottovoce.kt.history.result"


@event("sottovoce.kt.head")
class KTHead(ClientEvent):
    """The log's current checkpoint and its keys, with a consistency proof from ``since``."""

    since: int = wire(SINCE, default=0)


@event("sottovoce.kt.lookup")
class KTLookup(ClientEvent):
    """One account's latest version with every proof that ties it to the checkpoint."""

    username: str = wire(ID)
    since: int = wire(SINCE, default=0)
    #: About another account: a proof of work, as for a directory lookup (events.POW).
    pow: bytes | None = wire(POW, default=None, omit_default=True)
    cap: bytes | None = wire(B64(max_bytes=32, size=32), default=None, omit_default=True)


@event("sottovoce.kt.history")
class KTHistory(ClientEvent):
    """Every version of the caller's own account (for its devices' monitor), or with
    ``start`` one page of them from that version on."""

    since: int = wire(SINCE, default=0)
    start: int | None = wire(Int(minimum=0, maximum=KT_MAX_VERSIONS), default=None,
                             omit_default=True)


@struct
class KTHeadResult(WireStruct):
    checkpoint: str = wire(Str(max_len=KT_MAX_NOTE_BYTES))
    consistency: tuple[bytes, ...] = wire(ListOf(HASH, max_items=MAX_PROOF_HASHES))
    log_key: str = wire(VKEY)
    vrf_key: bytes = wire(B64(max_bytes=32, size=32))
    witnesses: tuple[str, ...] = wire(ListOf(VKEY, max_items=MAX_WITNESSES))


@struct
class KTResponse(WireStruct):
    """``sottovoce.kt.lookup.result`` and ``sottovoce.kt.history.result``: one encoded
    response of kt/verify.py."""

    response: bytes = wire(B64(max_bytes=MAX_FRAME_BYTES, nonempty=True))


KT_CLIENT_EVENTS = registry(KTHead, KTLookup, KTHistory)
