"""RFC 9420 §8.2 transcript hashes and §6.1 confirmation tag against transcript-hashes.json."""

from __future__ import annotations

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.common import ContentType
from sottovoce.mls.errors import InvalidConfirmationTag
from sottovoce.mls.framing import AuthenticatedContent
from sottovoce.mls.transcript import (
    confirmed_transcript_hash,
    interim_transcript_hash,
    next_transcript_hashes,
    verify_confirmation_tag,
)
from tests.vectors.loader import params


@pytest.mark.parametrize("vector", params("mls/transcript-hashes.json"))
def test_rfc9420_8_2_transcript_hashes(vector: dict[str, object]) -> None:
    h = {k: bytes.fromhex(v) for k, v in vector.items() if isinstance(v, str)}
    suite = cipher_suite(int(str(vector["cipher_suite"])))
    data = h["authenticated_content"]
    ac = AuthenticatedContent.decode(data)
    assert ac.encode() == data
    assert ac.content.content_type is ContentType.COMMIT
    tag = ac.auth.confirmation_tag
    assert tag is not None

    confirmed = confirmed_transcript_hash(suite, h["interim_transcript_hash_before"], ac)
    assert confirmed == h["confirmed_transcript_hash_after"]
    verify_confirmation_tag(suite, h["confirmation_key"], confirmed, tag)
    assert interim_transcript_hash(suite, confirmed, tag) == h["interim_transcript_hash_after"]
    assert next_transcript_hashes(suite, h["interim_transcript_hash_before"], ac) == (
        h["confirmed_transcript_hash_after"],
        h["interim_transcript_hash_after"],
    )
    # A tag under another key, or over another transcript, is rejected.
    with pytest.raises(InvalidConfirmationTag):
        verify_confirmation_tag(suite, bytes(suite.nh), confirmed, tag)
    with pytest.raises(InvalidConfirmationTag):
        other_transcript = h["interim_transcript_hash_before"]
        verify_confirmation_tag(suite, h["confirmation_key"], other_transcript, tag)
