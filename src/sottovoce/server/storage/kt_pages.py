"""One page of an account's history for its owner's monitor: ``sottovoce.kt.history``
with ``start`` (docs/protocol.md §Key transparency).

    (user, checkpoint size, start) ──► the account's entry proof (as a lookup's)
                                   ──► versions [start, end): at most the page's
                                       count, and fewer if they would not fit a frame
                                   ──► the version tree's consistency proofs from
                                       start and from end (kt/prover.py history_page)

A whole history no longer has to fit one frame: a device reads its own account's
versions a page at a time, and each poll only the versions it has not checked. Read
in one reader round trip like the other answers (storage/kt.py), though not in their
batches: a page is asked for by an account's own devices, a few times an hour.
"""

from __future__ import annotations

from sottovoce.kt.prover import LogProof, entry_proof, history_page, history_page_nodes
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.server.storage import kt as kt_tables
from sottovoce.server.storage.txn import Txn

#: Bytes a version costs in a page besides its state: its opening and length prefixes.
_PER_VERSION = 32 + 8
#: Bytes of a page besides its versions and entry proof: two proofs and their prefixes.
_PAGE_EXTRA = 2 * (64 * 32 + 8) + 64


def page(
    vrf: VRFSecretKey, user: str, size: int, start: int, limit: int, part: LogProof,
    budget: int, cache: kt_tables.AppendCache | None,
) -> Txn[bytes]:
    """The encoded :class:`~sottovoce.kt.verify.HistoryPage` of ``user`` at tree size
    ``size`` from version ``start``: at most ``limit`` versions, at least one if there
    is one, and no more than fit ``budget`` bytes."""
    stores = yield from kt_tables.snapshot(vrf, user, size, 0, every_version=False,
                                           cache=cache, with_log=False)
    entry, key = entry_proof(part, stores, user)
    n = entry.versions
    start = min(start, n)
    records = yield from kt_tables._records(key, start, min(n, start + limit))
    used, end = len(entry.encode()) + _PAGE_EXTRA, start
    for version in range(start, min(n, start + limit)):
        used += len(records[(key, version)].state) + _PER_VERSION
        if used > budget and end > start:
            break
        end = version + 1
    nodes = yield from kt_tables._version_nodes(key, history_page_nodes(n, start, end))
    stores.records.update(records)
    stores.version_nodes.update(nodes)
    return history_page(entry, key, stores, start, end).encode()
