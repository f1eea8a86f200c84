"""Account and device identity: keys, device certificates, revocation, account deletion,
safety numbers, account-key succession and recovery, and device linking (CPace)."""

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
from sottovoce.identity.succession import ChainHead, Genesis, Recovery, Succession, resolve

__all__ = [
    "AccountDeletion",
    "AccountKey",
    "ChainHead",
    "DeviceCertificate",
    "DevicePublicKeys",
    "DeviceSigningKey",
    "Genesis",
    "Recovery",
    "RevocationStatement",
    "SafetyNumber",
    "SignedPrekey",
    "Succession",
    "resolve",
    "safety_number",
    "validate_device_id",
    "validate_username",
]
