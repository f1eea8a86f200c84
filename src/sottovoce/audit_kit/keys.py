"""The private keys of the canary devices, as labelled secrets to search for.

The SDK hands them over through ``Client.audit_only_private_material()``:
the account key, the device signing key, the local store key, and the Olm
account and sessions as vodozemac pickles. The pickles are encrypted under the
fixed formality key of ``sottovoce.pairwise.account.PICKLE_KEY``; this module
opens them and keeps only the *private* fields (public keys are the server's
to know, and session pickles also hold the peer's public keys)::

    pickle = base64( AES-256-CBC(JSON) ‖ HMAC-SHA256[:8] )
    aes_key ‖ mac_key ‖ iv = HKDF-SHA256(ikm=pickle key, salt=none, info="Pickle", 80)

    account JSON:  signing_key.Normal, diffie_hellman_key,
                   one_time_keys.private_keys.*, fallback_keys.*.key
    session JSON:  active_ratchet.{root_key, ratchet_key},
                   symmetric_key_ratchet.key, receiving_chains[].hkdf_ratchet.key,
                   skipped message keys

vodozemac's pickle layout is not a stable API: if it changes, opening fails
and the report says which keys could not be checked, rather than passing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sottovoce.pairwise.account import PICKLE_KEY
from sottovoce.secret import Secret

_MAC_LEN = 8
#: Field names (last path element) whose byte arrays are private in vodozemac pickles.
_PRIVATE_FIELDS = frozenset({"Normal", "Expanded", "diffie_hellman_key", "root_key", "key"})
#: Subtrees that only hold public keys.
_PUBLIC_SUBTREES = frozenset({"public_keys", "session_keys", "parent_ratchet_key"})


@dataclass(frozen=True, slots=True)
class KeySecret:
    label: str  # e.g. "canary-ab12/dev1 olm identity key" (never the key)
    value: Secret


class PickleError(Exception):
    """A vodozemac pickle did not open (wrong format or version)."""


def open_pickle(pickle: bytes, key: bytes = PICKLE_KEY) -> Any:
    """Decrypt a vodozemac pickle (base64 text) to its JSON document."""
    try:
        text = pickle.decode("ascii")
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        raise PickleError("pickle is not base64") from None
    if len(raw) < 16 + _MAC_LEN or (len(raw) - _MAC_LEN) % 16:
        raise PickleError("pickle has the wrong length")
    okm = HKDF(hashes.SHA256(), 80, None, b"Pickle").derive(key)
    aes_key, mac_key, iv = okm[:32], okm[32:64], okm[64:]
    body, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    if not hmac.compare_digest(hmac.new(mac_key, body, sha256).digest()[:_MAC_LEN], mac):
        raise PickleError("pickle MAC does not verify")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return json.loads(plain)
    except ValueError:
        raise PickleError("pickle content is not JSON") from None


def _as_bytes(value: Any) -> bytes | None:
    if (
        isinstance(value, list)
        and len(value) >= 16
        and all(isinstance(x, int) and 0 <= x < 256 for x in value)
    ):
        return bytes(value)
    return None


def private_fields(doc: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, bytes]]:
    """Every private byte array of a vodozemac pickle document, with its JSON path."""
    if isinstance(doc, dict):
        for name, value in doc.items():
            if name in _PUBLIC_SUBTREES:
                continue
            yield from private_fields(value, (*path, str(name)))
        return
    raw = _as_bytes(doc)
    if raw is not None:
        last = path[-1] if path else ""
        parent = path[-2] if len(path) > 1 else ""
        # "ratchet_key" is our private ratchet key only under active_ratchet; in a
        # receiving chain or a skipped key it is the peer's public key.
        private = (
            last in _PRIVATE_FIELDS
            or parent == "private_keys"
            or (last == "ratchet_key" and parent == "active_ratchet")
        )
        if private:
            yield ".".join(path), raw
        return
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from private_fields(item, (*path, str(i)))


_FRIENDLY = {
    "signing_key.Normal": "olm ed25519 signing key",
    "diffie_hellman_key": "olm curve25519 identity key",
}


def key_secrets(owner: str, material: Sequence[tuple[str, Secret]]) -> tuple[
    list[KeySecret], list[str]
]:
    """Turn the SDK's labelled material into searchable keys; also the labels that failed."""
    keys: list[KeySecret] = []
    failed: list[str] = []
    for label, secret in material:
        if not label.startswith("olm "):
            keys.append(KeySecret(f"{owner} {label}", secret))
            continue
        try:
            doc = open_pickle(secret.expose())
        except PickleError as exc:
            failed.append(f"{owner} {label}: {exc}")
            continue
        found = list(private_fields(doc))
        if not found:
            failed.append(f"{owner} {label}: no private field found in the pickle")
        for path, raw in found:
            name = _FRIENDLY.get(path, path)
            keys.append(KeySecret(f"{owner} {label} {name}", Secret(raw)))
    return keys, failed
