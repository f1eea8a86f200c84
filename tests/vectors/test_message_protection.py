"""RFC 9420 §6.2–6.3 message protection against mlswg message-protection.json.

For proposal, commit and application content: unprotect the vector's
PublicMessage and PrivateMessage forms and compare with the plain content;
then protect the plain content ourselves and unprotect it again.
"""

from __future__ import annotations

import random

import pytest

from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import UsageError
from sottovoce.mls.common import GroupContext, WireFormat
from sottovoce.mls.framing import (
    AuthenticatedContent,
    Content,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    authenticate,
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
    verify_content_signature,
)
from sottovoce.mls.messages import Commit, decode_proposal
from sottovoce.mls.secret_tree import SecretTree
from tests.vectors.loader import params

SENDER = 1  # README: the member with LeafIndex 1 sends every message
N_LEAVES = 2
# ECDSA scalar sizes (P-256, P-521, P-384). The suite-5 vector's private key is
# 65 bytes, a big-endian integer with its leading zero octet dropped; restore it.
_ECDSA_SCALAR = {2: 32, 5: 66, 7: 48}


def _plain(kind: str, data: bytes) -> Content:
    if kind == "proposal":
        return decode_proposal(data)
    if kind == "commit":
        return Commit.decode(data)
    return data


def _sign(
    suite: CipherSuite, v: dict[str, bytes], ctx: GroupContext, wf: WireFormat, content: Content
) -> AuthenticatedContent:
    key = suite.signing_key(v["signature_priv"].rjust(_ECDSA_SCALAR.get(suite.id, 0), b"\0"))
    fc = FramedContent(
        group_id=ctx.group_id, epoch=ctx.epoch, sender=Sender.member(SENDER), content=content
    )
    if isinstance(content, Commit):
        # Any MAC-sized tag: the vector gives no confirmation key to make a real one.
        sig = sign_content(key, wf, fc, ctx)
        auth = FramedContentAuthData(signature=sig, confirmation_tag=bytes(suite.nh))
        return AuthenticatedContent(wire_format=wf, content=fc, auth=auth)
    return authenticate(key, wf, fc, ctx)


@pytest.mark.parametrize("vector", params("mls/message-protection.json"))
def test_rfc9420_6_message_protection(vector: dict[str, object]) -> None:
    suite = cipher_suite(int(str(vector["cipher_suite"])))
    v = {k: bytes.fromhex(x) for k, x in vector.items() if isinstance(x, str)}
    ctx = GroupContext(
        cipher_suite=suite.id,
        group_id=v["group_id"],
        epoch=int(str(vector["epoch"])),
        tree_hash=v["tree_hash"],
        confirmed_transcript_hash=v["confirmed_transcript_hash"],
    )
    verify_key = suite.verify_key(v["signature_pub"])
    rng = random.Random(suite.id).randbytes

    for kind in ("proposal", "commit", "application"):
        plain = _plain(kind, v[kind])

        # --- PublicMessage form (handshake content only) ---
        if kind != "application":
            msg = MLSMessage.decode(v[f"{kind}_pub"])
            assert msg.encode() == v[f"{kind}_pub"]
            assert isinstance(msg.body, PublicMessage)
            ac = unprotect_public(suite, msg.body, v["membership_key"], ctx)
            verify_content_signature(verify_key, ac, ctx)
            assert ac.content.content == plain
            assert ac.content.sender == Sender.member(SENDER)

            mine = _sign(suite, v, ctx, WireFormat.PUBLIC_MESSAGE, plain)
            wire = MLSMessage(body=protect_public(suite, mine, v["membership_key"], ctx)).encode()
            back = MLSMessage.decode(wire).body
            assert isinstance(back, PublicMessage)
            ac2 = unprotect_public(suite, back, v["membership_key"], ctx)
            verify_content_signature(verify_key, ac2, ctx)
            assert ac2 == mine
        else:
            mine = _sign(suite, v, ctx, WireFormat.PUBLIC_MESSAGE, plain)
            with pytest.raises(UsageError):
                protect_public(suite, mine, v["membership_key"], ctx)

        # --- PrivateMessage form ---
        msg = MLSMessage.decode(v[f"{kind}_priv"])
        assert msg.encode() == v[f"{kind}_priv"]
        assert isinstance(msg.body, PrivateMessage)
        tree = SecretTree(suite, v["encryption_secret"], N_LEAVES)
        ac = unprotect_private(suite, msg.body, tree, v["sender_data_secret"])
        verify_content_signature(verify_key, ac, ctx)
        assert ac.content.content == plain
        assert ac.content.sender == Sender.member(SENDER)

        mine = _sign(suite, v, ctx, WireFormat.PRIVATE_MESSAGE, plain)
        sender_tree = SecretTree(suite, v["encryption_secret"], N_LEAVES)
        pm = protect_private(suite, mine, sender_tree, v["sender_data_secret"], rng, padding=7)
        wire = MLSMessage(body=pm).encode()
        back = MLSMessage.decode(wire).body
        assert isinstance(back, PrivateMessage)
        receiver_tree = SecretTree(suite, v["encryption_secret"], N_LEAVES)
        ac2 = unprotect_private(suite, back, receiver_tree, v["sender_data_secret"])
        verify_content_signature(verify_key, ac2, ctx)
        assert ac2 == mine
