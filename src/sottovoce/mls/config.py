"""Per-group policy and where pre-shared keys come from (RFC 9420 §8.4).

A :class:`GroupConfig` travels with a member's state (and is saved with it,
except the ``psk_lookup`` callable); :data:`PskLookup` is how a member finds the
value behind a PreSharedKeyID it is asked to inject or to accept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import UsageError
from sottovoce.limits import MLS_PAST_EPOCHS, MLS_RESUMPTION_PSK_EPOCHS
from sottovoce.mls.common import WireFormat
from sottovoce.mls.errors import GroupError, MissingPsk
from sottovoce.mls.key_schedule import PreSharedKeyID, PSKType, psk_secret
from sottovoce.secret import Secret

__all__ = ["GroupConfig", "PskLookup", "PskStore", "resolve_psks"]

#: Looks up a pre-shared key by its id (external PSKs by ``psk_id``, or resumption
#: PSKs of other groups); ``None`` if unknown.
PskLookup = Callable[[PreSharedKeyID], bytes | Secret | None]


class PskStore:
    """A small in-memory :data:`PskLookup` for external PSKs, keyed by ``psk_id``."""

    __slots__ = ("_psks",)

    def __init__(self, psks: Mapping[bytes, bytes | Secret] | None = None) -> None:
        self._psks: dict[bytes, Secret] = {}
        for psk_id, value in (psks or {}).items():
            self.add(psk_id, value)

    def add(self, psk_id: bytes, value: bytes | Secret) -> None:
        self._psks[bytes(psk_id)] = value if isinstance(value, Secret) else Secret(value)

    def __call__(self, psk: PreSharedKeyID) -> Secret | None:
        if psk.psktype != PSKType.EXTERNAL:
            return None
        return self._psks.get(psk.psk_id)

    def __repr__(self) -> str:
        return f"PskStore({len(self._psks)} keys)"


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    """Per-group policy; everything has a safe default."""

    #: Wire format of our proposals and commits. PrivateMessage hides them from
    #: the delivery service (§6); PublicMessage lets it inspect them.
    handshake_wire_format: WireFormat = WireFormat.PRIVATE_MESSAGE
    #: Put the ratchet tree into the Welcome's GroupInfo (§12.4.3.3); without it
    #: joiners need the tree from elsewhere (``ratchet_tree=`` when joining).
    ratchet_tree_in_welcome: bool = True
    #: Past epochs whose application keys are kept for late messages.
    max_past_epochs: int = MLS_PAST_EPOCHS
    #: Epochs whose resumption_psk is kept (§8.6).
    max_resumption_psks: int = MLS_RESUMPTION_PSK_EPOCHS
    #: Zero octets appended to every PrivateMessage content (§6.3.1 padding).
    padding: int = 0
    #: External PSKs and resumption PSKs of other groups.
    psk_lookup: PskLookup | None = None

    def __post_init__(self) -> None:
        if self.handshake_wire_format not in (
            WireFormat.PUBLIC_MESSAGE,
            WireFormat.PRIVATE_MESSAGE,
        ):
            raise UsageError("handshake wire format must be public or private message")
        if self.max_past_epochs < 0 or self.max_resumption_psks < 1 or self.padding < 0:
            raise UsageError("invalid group configuration")


def resolve_psks(
    suite: CipherSuite,
    psk_ids: Sequence[PreSharedKeyID],
    lookups: Sequence[PskLookup | None],
    *,
    missing: str,
    bad_nonce: type[GroupError] | None = None,
) -> Secret:
    """psk_secret (§8.4) over ``psk_ids``, each value from the first of ``lookups`` that
    knows it; :class:`MissingPsk` (saying ``missing``) when none does.

    ``bad_nonce``, when given, is raised for a ``psk_nonce`` that is not ``Nh``
    bytes, checked id by id before its lookup (a Welcome's PSK list was never
    checked as a proposal, §12.4.3.1).
    """
    values: list[tuple[PreSharedKeyID, Secret | bytes]] = []
    for psk_id in psk_ids:
        if bad_nonce is not None and len(psk_id.psk_nonce) != suite.nh:
            raise bad_nonce("psk_nonce is not Nh bytes")
        value: Secret | bytes | None = None
        for lookup in lookups:
            if lookup is not None:
                value = lookup(psk_id)
                if value is not None:
                    break
        if value is None:
            raise MissingPsk(missing)
        values.append((psk_id, value))
    return psk_secret(suite, values)
