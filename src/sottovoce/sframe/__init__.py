"""SFrame (RFC 9605), sans-IO: header codec, cipher suites, a per-KID context
with send counters and replay windows, and per-track keys from MLS epochs.

Modules: ``header`` (§4.3), ``suites`` (§4.4.2 key derivation, §4.5 suites and
the AES-CTR-HMAC AEAD), ``context`` (§4.4 encrypt/decrypt with state),
``mls_keys`` (§5.2-style keys from the MLS exporter), ``errors``.
"""

from sottovoce.sframe.context import DecryptedFrame, ReplayWindow, SFrameContext, encrypt_frame
from sottovoce.sframe.errors import (
    CounterExhausted,
    FrameDecryptionError,
    HeaderDecodeError,
    KeyUsageError,
    ReplayError,
    SFrameError,
    UnknownKeyId,
)
from sottovoce.sframe.header import SFrameHeader, encode_header, parse_header
from sottovoce.sframe.mls_keys import (
    Exporter,
    KeyId,
    MediaFrame,
    MediaKeyManager,
    Track,
    base_key,
    keys_for_epoch,
    make_kid,
    parse_kid,
)
from sottovoce.sframe.suites import SUITES, CipherSuiteId, SFrameSuite, cipher_suite

__all__ = [
    "SUITES",
    "CipherSuiteId",
    "CounterExhausted",
    "DecryptedFrame",
    "Exporter",
    "FrameDecryptionError",
    "HeaderDecodeError",
    "KeyId",
    "KeyUsageError",
    "MediaFrame",
    "MediaKeyManager",
    "ReplayError",
    "ReplayWindow",
    "SFrameContext",
    "SFrameError",
    "SFrameHeader",
    "SFrameSuite",
    "Track",
    "UnknownKeyId",
    "base_key",
    "cipher_suite",
    "encode_header",
    "encrypt_frame",
    "keys_for_epoch",
    "make_kid",
    "parse_header",
    "parse_kid",
]
