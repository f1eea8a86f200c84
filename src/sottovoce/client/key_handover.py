"""Handing the new account key to every surviving device after ``device revoke``
(docs/protocol.md §Succession, docs/threat-model.md §A stolen or seized device).

Under the account-key model every device of an account holds the account key. A
revocation replaces it; the device that revoked hands the new key to each surviving
device of its own account as an ordinary Olm message to its own devices (durable: a
device that was offline finds it in its inbox on its next connect)::

    revoking device                              each surviving device
    revoke_device ─► succession + revocation
    send {"v":1,"key":AK,"chain":[succession]} ─► (accept, in the batch transaction)
        to our own devices (the revoked one        sender is us? else dropped
        is no longer one of them)                  kept sealed in the store, then:
                                                   look our account up again (verified,
                                                   and checked against the log)
                                                   sender device still active?
                                                   chain from the key held here to AK?
                                                   AK is the verified head?
                                                   install AK and our new certificate

A key is installed only if all of that holds; anything else is dropped and the device
keeps the key it has (and refuses to certify or revoke, as before). The body never
reaches the message table: only an empty row beside the chat dedupes a replay.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from sottovoce.client.account_keys import Rotation
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.payload import json_body, read_json_body
from sottovoce.client.store import Contact, Store
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError, IdentityError, SottovoceError
from sottovoce.identity import AccountKey, DeviceCertificate
from sottovoce.identity.succession import Succession

#: The inner content type (the relay sees ``text`` as for any message).
ACCOUNT_KEY_CONTENT_TYPE = "account_key"
#: Kept in the sender's message table instead of the body (which holds the key).
SENT_TEXT = "account key handed over"
#: Offers kept at most while they wait (a revocation makes one each).
MAX_OFFERS = 8
#: Successions carried in one offer at most.
MAX_CHAIN = 8
_RECORD = "account_key_offers"
_VERSION = 1


@dataclass(frozen=True, slots=True, repr=False)
class Offer:
    """A new account key from another device of ours, not installed yet."""

    sender_device: str
    key: bytes  # the private half (sealed in the store, never shown)
    chain: tuple[Succession, ...]

    def __repr__(self) -> str:
        return f"Offer(from={self.sender_device})"

    @classmethod
    def from_body(cls, sender_device: str, body: bytes) -> Offer:
        data = read_json_body(body, ("key", "chain"), "an account key handover")
        chain = data["chain"]
        if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_CHAIN:
            raise DecodeError("an account key handover names no succession, or too many")
        try:
            key = _b64(data["key"])
            links = tuple(Succession.decode(_b64(item)) for item in chain)
        except (DecodeError, IdentityError, ValueError):
            raise DecodeError("an account key handover is malformed") from None
        if len(key) != 32:
            raise DecodeError("an account key handover holds no key")
        return cls(sender_device, key, links)

    def write(self, w: Writer) -> None:
        w.opaque8(self.sender_device.encode("ascii"))
        w.opaque8(self.key)
        w.vector_v(list(self.chain), lambda w2, s: w2.opaque_v(s.encode()))

    @classmethod
    def read(cls, r: Reader) -> Offer:
        device = r.opaque8().decode("ascii")
        key = r.opaque8()
        chain = tuple(r.vector_v(lambda r2: Succession.decode(r2.opaque_v())))
        return cls(device, key, chain)


def offer_body(key: AccountKey, chain: tuple[Succession, ...]) -> bytes:
    """What the revoking device sends its other devices (UTF-8 JSON, holds the key)."""
    return json_body(
        key=base64.b64encode(key.private_bytes().expose()).decode("ascii"),
        chain=[base64.b64encode(s.encode()).decode("ascii") for s in chain],
    ).encode("utf-8")


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise DecodeError("an account key handover is malformed")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("an account key handover is malformed") from None


def descends(held: bytes, head: bytes, links: list[Succession], username: str) -> bool:
    """Whether valid successions of ``username`` lead from ``held`` to ``head``."""
    reached, frontier = {held}, [held]
    by_old: dict[bytes, list[bytes]] = {}
    for s in links:
        if s.username == username and s.valid():
            by_old.setdefault(s.old_key, []).append(s.new_key)
    while frontier:
        for new in by_old.get(frontier.pop(), []):
            if new not in reached:
                reached.add(new)
                frontier.append(new)
    return head in reached


def choose(offers: list[Offer], identity: LocalIdentity, own: Contact) -> Offer | None:
    """The offer to install, checked against ``own`` (our account as a fresh, verified
    lookup gave it): its key is the account's head, it came from a device of ours that
    is still active, and valid successions lead to it from the key this device holds."""
    held = identity.account_key.public
    if own.account_key == held:
        return None  # nothing to install: this device holds the head already
    links = [s for o in offers for s in o.chain]
    for offer in offers:
        active = offer.sender_device in own.certificates and (
            offer.sender_device not in own.revoked and offer.sender_device != identity.device_id)
        try:
            public = AccountKey(offer.key).public
        except (ValueError, TypeError):
            continue
        if active and public == own.account_key and descends(
                held, public, links, identity.username):
            return offer
    return None


def new_certificate(identity: LocalIdentity, own: Contact) -> DeviceCertificate | None:
    """This device's certificate under the head key (issued by the revoking device):
    the same device keys, verified by the lookup."""
    cert = own.certificates.get(identity.device_id)
    if cert is None or cert.account_key != own.account_key:
        return None
    return cert if cert.keys == identity.certificate.keys else None


class KeyHandover:
    """Both sides of the handover, for one device (owned by the Client)."""

    def __init__(
        self, store: Store, *, username: str,
        send_own: Callable[[str, bytes, str], Awaitable[str]],
        refresh_own: Callable[[], Awaitable[None]],
        own: Callable[[], Contact | None],
        identity: Callable[[], LocalIdentity],
        adopt: Callable[[Rotation], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._store, self._username = store, username
        self._send_own, self._refresh_own, self._own = send_own, refresh_own, own
        self._identity, self._adopt, self._spawn = identity, adopt, spawn

    async def send(self, rotation: Rotation) -> str:
        """After a revocation: its new key to every other active device of ours (an Olm
        message each; the revoked device is no longer among them), with the succession
        that names it. The sender keeps only :data:`SENT_TEXT`, never the key. Returns
        the message id, or "" when there was nobody to send to or the send failed."""
        own, me = self._own(), self._identity().device_id
        if own is None or not set(own.certificates) - own.revoked - {me}:
            return ""  # no other device: nobody to tell
        chain = tuple(s for s in rotation.statements if isinstance(s, Succession))
        body = offer_body(rotation.account_key, chain)
        try:
            return await self._send_own(ACCOUNT_KEY_CONTENT_TYPE, body, SENT_TEXT)
        except SottovoceError:
            # The revocation stands; a device that did not get the key is linked again.
            return ""

    def incoming(self, sender: str, sender_device: str, body: bytes) -> None:
        """An offer arrived (inside the batch transaction, no awaits): keep it sealed if it
        is from our own account, then check and install it after the batch."""
        if sender != self._username:
            return  # only a device of our own account may hand us an account key
        try:
            offer = Offer.from_body(sender_device, body)
        except DecodeError:
            return
        offers = [*self._offers(), offer][-MAX_OFFERS:]
        self._save(offers)
        self._spawn(self.settle())

    async def settle(self) -> None:
        """Check the waiting offers against a fresh, verified lookup of our account and
        install the one that names its head (also run on each connect)."""
        offers = self._offers()
        if not offers:
            return
        try:
            await self._refresh_own()
        except SottovoceError:
            return  # offline, or the lookup failed: the next connect tries again
        own = self._own()
        if own is None:
            return
        identity = self._identity()
        chosen = choose(offers, identity, own)
        if chosen is not None:
            cert = new_certificate(identity, own)
            if cert is None:
                return  # our new certificate is not there yet: the next settle tries
            try:
                await self._adopt(Rotation(account_key=AccountKey(chosen.key), statements=(),
                                           certificate=cert))
            except SottovoceError:
                return  # kept, but the lookup after it failed (e.g. closing): next settle
        if chosen is not None or own.account_key == identity.account_key.public:
            self._save([])  # installed, or nothing left to install

    def _offers(self) -> list[Offer]:
        raw = self._store.get_secret(_RECORD)
        if not raw:
            return []
        try:
            return decode(_read_offers, raw)
        except (DecodeError, IdentityError, UnicodeDecodeError, ValueError):
            return []

    def _save(self, offers: list[Offer]) -> None:
        w = Writer()
        w.u8(_VERSION)
        w.vector_v(offers, lambda w2, o: o.write(w2))
        with self._store.transaction():
            self._store.put_secret(_RECORD, w.getvalue() if offers else b"")


def _read_offers(r: Reader) -> list[Offer]:
    if r.u8() != _VERSION:
        raise DecodeError("unknown account key offer record")
    return r.vector_v(Offer.read)
