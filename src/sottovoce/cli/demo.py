"""`sottovoce demo`: two users, one device each, talking through a relay that sees only ciphertext.

Everything runs in one process with no network: the point is to show what
each party holds. The relay in the middle records every frame it forwards;
the demo prints that record (ciphertext sizes and a prefix, nothing else is
available to it) and both sides' safety numbers.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sottovoce.cli.options import no_options, subcommand

if TYPE_CHECKING:
    from sottovoce.identity import AccountKey, DeviceCertificate, DeviceSigningKey
    from sottovoce.pairwise import OlmAccount, PairwiseSession, PrekeyBundle, SignedPrekey


@dataclass
class _Device:
    username: str
    account_key: AccountKey
    device_key: DeviceSigningKey
    olm: OlmAccount
    certificate: DeviceCertificate
    sessions: dict[str, PairwiseSession] = field(default_factory=dict)


@dataclass
class _Relay:
    """Stands in for the server: it stores and forwards opaque bytes."""

    directory: dict[str, tuple[DeviceCertificate, list[SignedPrekey]]] = field(
        default_factory=dict
    )
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)

    def publish(self, cert: DeviceCertificate, prekeys: list[SignedPrekey]) -> None:
        self.directory[cert.username] = (cert, list(prekeys))

    def fetch_bundle(self, username: str) -> PrekeyBundle:
        from sottovoce.pairwise import PrekeyBundle

        cert, prekeys = self.directory[username]
        return PrekeyBundle(certificate=cert, prekey=prekeys.pop(0))

    def forward(self, sender: str, recipient: str, ciphertext: bytes) -> bytes:
        self.seen.append((sender, recipient, ciphertext))
        return ciphertext


def _make_device(username: str, now_ms: int) -> _Device:
    from sottovoce.identity import AccountKey, DeviceCertificate, DevicePublicKeys, DeviceSigningKey
    from sottovoce.pairwise import OlmAccount

    rng = secrets.token_bytes
    account_key = AccountKey.generate(rng)
    device_key = DeviceSigningKey.generate(rng)
    olm = OlmAccount.create(username=username, device_id="laptop")
    cert = DeviceCertificate.issue(
        account_key,
        username=username,
        device_id="laptop",
        keys=DevicePublicKeys(
            signing_key=device_key.public,
            olm_identity_key=olm.identity_key,
            olm_signing_key=olm.signing_key,
        ),
        now_ms=now_ms,
    )
    return _Device(username, account_key, device_key, olm, cert)


def run_demo(out: Callable[[str], None] = print) -> int:
    from sottovoce.identity import safety_number
    from sottovoce.pairwise import PairwiseSession

    now_ms = int(time.time() * 1000)
    relay = _Relay()
    out("sottovoce demo — two users, one device each, one relay in the middle\n")

    alice, bob = _make_device("alice", now_ms), _make_device("bob", now_ms)
    for dev in (alice, bob):
        prekeys = dev.olm.new_one_time_keys(dev.device_key, 5)
        relay.publish(dev.certificate, prekeys)
        out(
            f"  {dev.username:<5} created an account key, a device certificate and "
            f"{len(prekeys)} signed one-time prekeys"
        )

    # Alice fetches Bob's bundle; it is verified before the session opens.
    bundle = relay.fetch_bundle("bob")
    alice.sessions["bob"] = PairwiseSession.outbound(
        alice.olm, bundle, now_ms=now_ms, account_key=bob.certificate.account_key
    )
    out("  alice verified bob's device certificate and prekey signature, opened an Olm session\n")

    conversation = [
        ("alice", "bob", "Hi Bob! Nobody but you can read this."),
        ("bob", "alice", "Hi Alice. The relay only sees padded ciphertext."),
        ("alice", "bob", "Shall we compare safety numbers?"),
        ("bob", "alice", "Yes - read me yours and I'll check mine."),
    ]
    devices = {"alice": alice, "bob": bob}
    for sender_name, recipient_name, text in conversation:
        sender, recipient = devices[sender_name], devices[recipient_name]
        ciphertext = sender.sessions[recipient_name].encrypt(text.encode())
        wire = relay.forward(sender_name, recipient_name, ciphertext)
        if sender_name in recipient.sessions:
            plaintext = recipient.sessions[sender_name].decrypt(wire)
        else:
            session, plaintext = PairwiseSession.inbound(
                recipient.olm, sender.certificate, wire, now_ms=now_ms
            )
            recipient.sessions[sender_name] = session
        out(f"  {sender_name:>5} -> {recipient_name:<5} {plaintext.decode()}")

    out("\nWhat the relay saw (all it ever holds):")
    for sender_name, recipient_name, wire in relay.seen:
        prefix = base64.b64encode(wire[:24]).decode()
        out(f"  {sender_name:>5} -> {recipient_name:<5} {len(wire):4d} bytes  {prefix}…")
    sizes = sorted({len(w) for _, _, w in relay.seen})
    out(
        f"  ciphertext sizes seen: {sizes} bytes — every plaintext is padded to a size bucket; "
        "the first message is larger because it carries the Olm session set-up"
    )

    a_view = safety_number(alice.certificate.account_key, bob.certificate.account_key)
    b_view = safety_number(bob.certificate.account_key, alice.certificate.account_key)
    out("\nSafety number on alice's screen:")
    out("  " + a_view.grouped().replace("\n", "\n  "))
    out("Safety number on bob's screen:")
    out("  " + b_view.grouped().replace("\n", "\n  "))
    equal = a_view.digits == b_view.digits
    out(f"\nEqual on both sides: {'yes' if equal else 'NO'}")
    return 0 if equal else 1


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subcommand(
        sub,
        "demo",
        help="two users exchange messages through an in-memory relay that sees only ciphertext",
        description=(
            "Create two users (alice and bob) with one device each, publish signed prekeys, "
            "open an Olm session, exchange messages both ways, then print what the relay in "
            "the middle saw and both users' safety numbers. Runs offline, in one process."
        ),
        example="  sottovoce demo",
        func=lambda args: run_demo(),
        options=no_options,
    )
