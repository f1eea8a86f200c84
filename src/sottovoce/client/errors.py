"""Errors of the client SDK (the split of ``sottovoce.errors``: misuse / remote / bug)."""

from __future__ import annotations

from sottovoce.errors import IdentityError, RemoteError, UsageError, WireError
from sottovoce.secret import Secret


class WrongPassphrase(UsageError):
    """The passphrase does not open this account's local store (nothing was changed)."""

    code = "wrong_passphrase"


class StoreError(UsageError):
    """The local store is missing, already exists, or is in use by another process."""

    code = "store_error"


class IdentityChanged(IdentityError):
    """A contact's account key differs from the one pinned on first contact (TOFU).

    Either the contact re-created their account or someone is in the middle;
    compare safety numbers before trusting the new key.
    """

    code = "identity_changed"

    def __init__(self, username: str) -> None:
        super().__init__(
            f"the account key of '{username}' changed since first contact; "
            "compare safety numbers (sottovoce verify) before trusting it"
        )
        self.username = username


class NotConnected(RemoteError):
    """The server is unreachable (or the connection dropped) and the operation needs it."""

    code = "not_connected"
    retryable = True


class ServerError(WireError):
    """The server answered a request with ``ksmpv3.error``."""

    def __str__(self) -> str:
        return f"server error {self.code}: {self.message}"


class KeyNotInLog(RemoteError):
    """The directory showed keys of ``username`` that the verified transparency log does
    not hold: the server answers lookups with keys it did not publish."""

    code = "kt_key_not_in_log"

    def __init__(self, username: str, why: str) -> None:
        super().__init__(
            f"the keys the server gave for '{username}' are not in its transparency log "
            f"({why}); not using them"
        )
        self.username = username


class KTAlertRaised(RemoteError):
    """Key transparency caught the server misbehaving; the alert is stored and shown by
    every command until acknowledged (``sottovoce kt ack``)."""

    code = "kt_alert"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"key-transparency alert ({kind}): {message}")
        self.kind = kind
        #: Set when the alert ended ``Client.create_account`` after the account was
        #: registered: the recovery code that account was created with (shown once).
        self.recovery_code: Secret | None = None
