"""Account and device identity: keys, device certificates, revocation, account deletion,
safety numbers."""

from sottovoce.identity.certificates import (
    AccountDeletion,
    DeviceCertificate,
    DevicePublicKeys,
    RevocationStatement,
    validate_device_id,
    validate_username,
)
from sottovoce.identity.keys import AccountKey, DeviceSigningKey
from sottovoce.identity.prekeys import SignedPrekey
from sottovoce.identity.safety import SafetyNumber, safety_number

__all__ = [
    "AccountDeletion",
    "AccountKey",
    "DeviceCertificate",
    "DevicePublicKeys",
    "DeviceSigningKey",
    "RevocationStatement",
    "SafetyNumber",
    "SignedPrekey",
    "safety_number",
    "validate_device_id",
    "validate_username",
]
