"""RFC 9420 wire structs against mlswg messages.json: decode, then re-encode byte-exactly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sottovoce.mls.common import ContentType, WireFormat
from sottovoce.mls.framing import MLSMessage, PrivateMessage, PublicMessage
from sottovoce.mls.messages import (
    Add,
    Commit,
    ExternalInit,
    GroupContextExtensions,
    GroupInfo,
    GroupSecrets,
    KeyPackage,
    LeafNode,
    ParentNode,
    PreSharedKey,
    ReInit,
    Remove,
    Update,
    Welcome,
    decode_ratchet_tree,
    encode_ratchet_tree,
)
from tests.vectors.loader import params

FILE = "mls/messages.json"

_FORMATS: dict[type, WireFormat] = {
    PublicMessage: WireFormat.PUBLIC_MESSAGE,
    PrivateMessage: WireFormat.PRIVATE_MESSAGE,
    Welcome: WireFormat.WELCOME,
    GroupInfo: WireFormat.GROUP_INFO,
    KeyPackage: WireFormat.KEY_PACKAGE,
}


def _mls_message(
    body_type: type, content_type: ContentType | None = None
) -> Callable[[bytes], bytes]:
    def check(data: bytes) -> bytes:
        msg = MLSMessage.decode(data)
        assert isinstance(msg.body, body_type)
        assert msg.wire_format is _FORMATS[body_type]
        if content_type is not None:
            assert isinstance(msg.body, PublicMessage)
            assert msg.body.content.content_type == content_type
        return msg.encode()

    return check


def _struct(cls: Any) -> Callable[[bytes], bytes]:
    def check(data: bytes) -> bytes:
        value = cls.decode(data)
        assert isinstance(value, cls)
        return bytes(value.encode())

    return check


def _ratchet_tree(data: bytes) -> bytes:
    nodes = decode_ratchet_tree(data)
    assert all(n is None or isinstance(n, LeafNode | ParentNode) for n in nodes)
    return encode_ratchet_tree(nodes)


# One checker per vector field: each decodes as its RFC 9420 type and re-encodes.
CHECKS: dict[str, Callable[[bytes], bytes]] = {
    "mls_welcome": _mls_message(Welcome),
    "mls_group_info": _mls_message(GroupInfo),
    "mls_key_package": _mls_message(KeyPackage),
    "ratchet_tree": _ratchet_tree,
    "group_secrets": _struct(GroupSecrets),
    "add_proposal": _struct(Add),
    "update_proposal": _struct(Update),
    "remove_proposal": _struct(Remove),
    "pre_shared_key_proposal": _struct(PreSharedKey),
    "re_init_proposal": _struct(ReInit),
    "external_init_proposal": _struct(ExternalInit),
    "group_context_extensions_proposal": _struct(GroupContextExtensions),
    "commit": _struct(Commit),
    "public_message_application": _mls_message(PublicMessage, ContentType.APPLICATION),
    "public_message_proposal": _mls_message(PublicMessage, ContentType.PROPOSAL),
    "public_message_commit": _mls_message(PublicMessage, ContentType.COMMIT),
    "private_message": _mls_message(PrivateMessage),
}


@pytest.mark.parametrize("vector", params(FILE))
def test_rfc9420_messages_decode_and_reencode_exactly(vector: dict[str, str]) -> None:
    assert set(vector) == set(CHECKS), "messages.json has a field this test does not check"
    for field, check in CHECKS.items():
        data = bytes.fromhex(vector[field])
        assert check(data) == data, field

