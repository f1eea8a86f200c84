"""Errors of the MLS layer (RFC 9420), each on the remote side of the split.

Every class here but :class:`GroupInactive` (our caller's misuse) is a
:class:`~sottovoce.errors.RemoteError`: a peer handed us an MLS object that does
not authenticate or does not follow the rules. Where a broader category exists
(signature, decryption, decoding) the MLS error also derives from it, so callers
may catch either. The group layer's rejections (:class:`GroupError` and below) are
raised by the state machine and by the public view alike.
"""

from __future__ import annotations

from sottovoce.errors import (
    CryptoError,
    DecodeError,
    DecryptionError,
    RemoteError,
    SignatureError,
    UnsupportedError,
    UsageError,
)


class MlsError(RemoteError):
    """Root of the MLS errors caused by remote input."""

    code = "mls_error"


class ValidationError(MlsError):
    """An MLS object decodes but breaks a rule of RFC 9420 (wrong sender, epoch, ...)."""

    code = "mls_invalid"


class InvalidSignature(MlsError, SignatureError):
    """A SignWithLabel signature (RFC 9420 §5.1.2) did not verify; empty ones never do."""

    code = "bad_signature"


class InvalidMembershipTag(MlsError, CryptoError):
    """RFC 9420 §6.2: a PublicMessage's membership_tag is wrong or missing."""

    code = "mls_bad_membership_tag"


class InvalidConfirmationTag(MlsError, CryptoError):
    """RFC 9420 §8.2: a confirmation_tag does not match the confirmed transcript."""

    code = "mls_bad_confirmation_tag"


class MlsDecryptionError(MlsError, DecryptionError):
    """RFC 9420 §6.3: a PrivateMessage (sender data or content) did not open."""

    code = "decryption_failed"


class MlsDecodeError(MlsError, DecodeError):
    """MLS bytes are malformed in an MLS-specific way (bad select value, padding, ...)."""

    code = "decode_error"


class InvalidPadding(MlsDecodeError):
    """RFC 9420 §6.3.1: PrivateMessageContent padding holds a non-zero byte."""


class UnknownWireFormat(MlsDecodeError):
    """RFC 9420 §6: an MLSMessage carries a wire format this version does not define."""


# --- errors of the group layer (RFC 9420 §10-§12) ------------------------------------


class GroupError(ValidationError):
    """Root of the group-layer rejections of remote input (RFC 9420 §12)."""

    code = "mls_group_error"


class InvalidKeyPackage(GroupError):
    """RFC 9420 §10.1: a KeyPackage fails validation."""

    code = "mls_invalid_key_package"


class UnsupportedCipherSuite(InvalidKeyPackage, UnsupportedError):
    """A KeyPackage (or Welcome) names a cipher suite we or the group do not use (§10.1)."""

    code = "mls_unsupported_cipher_suite"


class InvalidProposal(GroupError):
    """RFC 9420 §12.1: one proposal is invalid on its own."""

    code = "mls_invalid_proposal"


class InvalidProposalList(GroupError):
    """RFC 9420 §12.2: the list of committed proposals breaks a list rule."""

    code = "mls_invalid_proposal_list"


class InvalidCommit(GroupError):
    """RFC 9420 §12.4: a Commit is malformed for this group (path rules, sender, ...)."""

    code = "mls_invalid_commit"


class UnknownProposal(InvalidCommit):
    """A Commit references a proposal this member has not cached in this epoch (§12.4)."""

    code = "mls_unknown_proposal"


class MissingPsk(GroupError):
    """RFC 9420 §8.4, §12.4.2: a referenced pre-shared key is not available."""

    code = "mls_missing_psk"


class WrongGroup(GroupError):
    """The message names another group id."""

    code = "mls_wrong_group"


class WrongEpoch(GroupError):
    """RFC 9420 §12.4.2: the message's epoch is not one we can process."""

    code = "mls_wrong_epoch"
    retryable = False


class UnknownSender(GroupError):
    """RFC 9420 §6: the sender is not a member (blank leaf), or no such external sender."""

    code = "mls_unknown_sender"


class OwnMessage(GroupError):
    """The delivery service echoed one of our own messages back to us.

    Our own handshake messages take effect through ``merge_pending_commit`` or
    the proposal cache; our own application messages are already known.
    """

    code = "mls_own_message"


class InvalidWelcome(GroupError):
    """RFC 9420 §12.4.3.1: a Welcome (or the GroupInfo inside it) does not check out."""

    code = "mls_invalid_welcome"


class NoMatchingKeyPackage(InvalidWelcome):
    """The Welcome holds no secrets for our KeyPackage (§12.4.3.1)."""

    code = "mls_no_matching_key_package"


class GroupInactive(UsageError):
    """The group cannot be used to send: we were removed, or a ReInit was committed."""

    code = "mls_group_inactive"


# --- errors of the ratchet tree (RFC 9420 §7) --------------------------------------------


class TreeError(ValidationError):
    """A ratchet tree (or a change to it) from a peer breaks a rule of RFC 9420 §7."""

    code = "mls_invalid_tree"


class InvalidParentHash(TreeError):
    """RFC 9420 §7.9.2: a parent node is not parent-hash valid, or a path's hash is wrong."""

    code = "mls_bad_parent_hash"


class DuplicateKey(TreeError):
    """RFC 9420 §7.3, §16.8: an encryption or signature key appears twice in the tree."""

    code = "mls_duplicate_key"


class InvalidLeafNode(TreeError):
    """RFC 9420 §7.3: a leaf's credential, capabilities, extensions or lifetime are unacceptable."""

    code = "mls_invalid_leaf_node"


class InvalidUnmergedLeaves(TreeError):
    """RFC 9420 §7.1, §4.2: a parent's unmerged_leaves list is unsorted or inconsistent."""

    code = "mls_invalid_unmerged_leaves"


class TreeHashMismatch(TreeError):
    """RFC 9420 §12.4.3.3: the tree's root hash differs from the GroupContext tree_hash."""

    code = "mls_tree_hash_mismatch"


class InvalidLeafIndex(TreeError):
    """A leaf index from a peer (Remove, Update sender) is outside the tree or blank."""

    code = "mls_invalid_leaf_index"
