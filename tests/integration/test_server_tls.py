"""WSS: the server serves TLS from --tls-cert/--tls-key (a self-signed cert made here)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conformance.rawclient import Device, RawClient
from tests.integration.serverproc import ServerProcess


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


async def test_wss_with_a_self_signed_certificate(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    cert, key = self_signed(tmp_path)
    srv = server_factory("--tls-cert", str(cert), "--tls-key", str(key))
    assert srv.ws_url.startswith("wss://")
    assert srv.health()["status"] == "ok"  # /healthz over https
    ctx = ssl.create_default_context(cafile=str(cert))
    c = await RawClient.open(srv.ws_url, ssl=ctx)
    reply = await c.register(Device.new())
    assert reply["event"] == "sottovoce.registered"
    assert (await c.request("ping", {}))["event"] == "pong"
    # A client that does not trust the certificate cannot connect.
    try:
        await RawClient.open(srv.ws_url, ssl=ssl.create_default_context())
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise AssertionError("untrusted certificate was accepted")
