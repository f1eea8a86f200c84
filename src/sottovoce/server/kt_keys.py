"""Key-transparency key files: the log's note key, the VRF key, a witness's key.

Each is one line in a file of mode 0600, made at first use when it is missing:

    PRIVATE+KEY+<name>+<key ID hex>+<base64(type || Ed25519 seed)>   a note key
    <base64(32-byte seed)>                                           the VRF key

The note key line is the private form of a C2SP verifier key (the format of
golang.org/x/mod/sumdb/note): its name is the log's origin, or the witness's name,
so the public key a client pins (``name+keyid+base64``) never depends on the host
the server happens to run on. Nothing here prints or logs a private key; errors
name the file only.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import UsageError
from sottovoce.kt.checkpoint import TYPE_COSIGNATURE_V1, TYPE_ED25519, NoteSigner
from sottovoce.kt.errors import MalformedProof
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.private_files import PRIVATE_FILE_MODE
from sottovoce.server.secret_file import read_secret_line

_PREFIX = "PRIVATE+KEY+"


def _write_new(path: Path, line: str) -> None:
    """Create ``path`` (0600) holding ``line``; never overwrite one that appeared meanwhile."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise UsageError(f"cannot create the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(line + "\n")


def note_key_line(signer_name: str, seed: bytes, *, cosigner: bool) -> str:
    sig_type = TYPE_COSIGNATURE_V1 if cosigner else TYPE_ED25519
    signer = NoteSigner(signer_name, SigningKey(SignatureScheme.ED25519, seed),
                        cosigner=cosigner)
    payload = base64.b64encode(bytes((sig_type,)) + seed).decode()
    return f"{_PREFIX}{signer_name}+{signer.public.key_id.hex()}+{payload}"


def read_note_key(path: Path, *, cosigner: bool, what: str) -> NoteSigner:
    """The note key in ``path``; a plain :class:`UsageError` naming the file otherwise."""
    line = read_secret_line(path, what, 40).expose().decode("ascii", "replace")
    bad = UsageError(f"the {what} {path} is not a note private key line "
                     f"({_PREFIX}name+keyid+key)")
    if not line.startswith(_PREFIX):
        raise bad
    parts = line[len(_PREFIX):].split("+", 2)  # the base64 key may hold "+"
    if len(parts) != 3:
        raise bad
    name, key_id, payload = parts
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    want = TYPE_COSIGNATURE_V1 if cosigner else TYPE_ED25519
    if len(raw) != 33 or raw[0] != want:
        raise UsageError(f"the {what} {path} holds a "
                         f"{'log' if raw[:1] == bytes((TYPE_ED25519,)) else 'different'} key "
                         f"where a {'witness' if cosigner else 'log'} key is needed")
    try:
        signer = NoteSigner(name, SigningKey(SignatureScheme.ED25519, raw[1:]), cosigner=cosigner)
    except (UsageError, MalformedProof):
        raise bad from None
    if signer.public.key_id.hex() != key_id:
        raise UsageError(f"the {what} {path}: its key ID does not match its name and key")
    return signer


def note_key(path: Path, name: str, *, cosigner: bool, what: str) -> NoteSigner:
    """The note key in ``path``, made (named ``name``) if the file does not exist."""
    if not path.exists():
        _write_new(path, note_key_line(name, secrets.token_bytes(32), cosigner=cosigner))
    return read_note_key(path, cosigner=cosigner, what=what)


def vrf_key(path: Path) -> VRFSecretKey:
    """The VRF key in ``path``, made if the file does not exist."""
    if not path.exists():
        _write_new(path, base64.b64encode(secrets.token_bytes(32)).decode())
    text = read_secret_line(path, "VRF key file", 44).expose()
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise UsageError(f"the VRF key file {path} must hold the base64 of a 32-byte key")
    return VRFSecretKey(seed)
