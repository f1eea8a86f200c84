"""The client SDK: the only client-side I/O (docs/architecture.md §Rules).

Start with :class:`Client`.
"""

from sottovoce.client.client import Client
from sottovoce.client.errors import (
    IdentityChanged,
    NotConnected,
    ServerError,
    StoreError,
    WrongPassphrase,
)
from sottovoce.client.events import (
    ClientEvent,
    ConnectionChanged,
    DeliveryStateChanged,
    EphemeralReceived,
    ErrorEvent,
    EventStream,
    MessageReceived,
    MessageSent,
    MessagesExpired,
)
from sottovoce.client.registration import register_device, username_available
from sottovoce.client.store import DeliveryStatus, KdfParams, StoredMessage

__all__ = [
    "Client",
    "ClientEvent",
    "ConnectionChanged",
    "DeliveryStateChanged",
    "DeliveryStatus",
    "EphemeralReceived",
    "ErrorEvent",
    "EventStream",
    "IdentityChanged",
    "KdfParams",
    "MessageReceived",
    "MessageSent",
    "MessagesExpired",
    "NotConnected",
    "ServerError",
    "StoreError",
    "StoredMessage",
    "WrongPassphrase",
    "register_device",
    "username_available",
]
