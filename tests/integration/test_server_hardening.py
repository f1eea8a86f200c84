"""Attacks on a default server on 127.0.0.1, each reproduced, then refused (the abuse
controls of docs/threat-model.md): data file modes, lock-out before login, resume
amplification, inbox flooding, prekey and KeyPackage exhaustion.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import io
import json
import secrets
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from sottovoce.pairwise import PrekeyBundle
from sottovoce.server.config import ServerConfig
from sottovoce.server.logs import JsonLogger
from sottovoce.server.push import WebhookTickleSender, check_endpoint
from tests.conformance.conftest import online_pair
from tests.conformance.rawclient import Device, RawClient, b64, logged_in, registered, unb64
from tests.conformance.test_directory import olm_device
from tests.integration.client_helpers import make_account
from tests.integration.serverproc import ServerProcess


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _metric(text: str, name: str) -> float:
    """One sample of the Prometheus text (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# --- data directory permissions ---------------------------------------------------------


async def test_data_dir_is_0700_and_database_wal_shm_are_0600(
    tmp_path: Path, open_umask: None
) -> None:
    data = tmp_path / "fresh" / "data"  # does not exist: the server creates it
    # (the last --data-dir wins: the harness keeps its logs in its own directory)
    with ServerProcess(tmp_path / "srv", extra_args=["--data-dir", str(data)]) as srv:
        a, b = await online_pair(srv.ws_url)
        bob = b.device.username  # type: ignore[union-attr]
        assert (await a.send_message(bob, [(bob, "d1", b"x")]))["event"] == "ksmpv3.send.ack"
        db = data / "sottovoce.sqlite3"
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(f.exists() for f in files)
        assert _mode(data) == 0o700
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert "warning" not in srv.output()


async def test_a_wider_existing_data_dir_is_reported_at_start(tmp_path: Path) -> None:
    data = tmp_path / "server"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with ServerProcess(data) as srv:
        pass
    assert f"{data} has mode 0755" in srv.output()  # standard error
    warned = [line for line in srv.log_lines() if line["event"] == "storage.permissions"]
    assert warned and warned[0]["level"] == "warning" and warned[0]["path"] == str(data)
    assert _mode(data) == 0o755, "reported, not changed behind the operator's back"


# --- push and DNS rebinding ---------------------------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.hosts.append(self.headers.get("Host"))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def _webhook(tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, list[str]]]:
    """A webhook on 127.0.0.1; yields its port and the Host header of every POST."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    srv.hosts = []  # type: ignore[attr-defined]
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_address[1], srv.hosts  # type: ignore[attr-defined]
    finally:
        srv.shutdown()
        srv.server_close()


def _rebinding_dns(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> list[str]:
    """The event loop's resolver (the server's and httpx's) answers ``answers`` in turn,
    the last one for good: an attacker's DNS with a short TTL."""
    asked: list[str] = []

    async def getaddrinfo(host: str, port: object, *args: object, **kw: object) -> list[Any]:
        asked.append(host)
        ip = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return asked


async def test_push_does_not_follow_a_name_rebound_to_a_private_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _webhook() as (port, hosts):
        endpoint = f"http://push.test:{port}/p"
        _rebinding_dns(monkeypatch, ["93.184.216.34", "127.0.0.1"])
        await check_endpoint(endpoint, allow_private=False)  # registration: a public address
        log = io.StringIO()
        sender = WebhookTickleSender(timeout_ms=2000, logger=JsonLogger(log))
        await sender.tickle(endpoint, {"type": "ksmpv3_tickle"})  # now it says 127.0.0.1
        await sender.close()
    assert hosts == [], "the tickle reached the server's own network"
    assert '"event":"push.refused"' in log.getvalue()


async def test_push_resolves_once_per_delivery_and_keeps_the_endpoint_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _webhook() as (port, hosts):
        # The second answer is an address nothing listens on: connecting there would fail.
        asked = _rebinding_dns(monkeypatch, ["127.0.0.1", "127.0.0.9"])
        sender = WebhookTickleSender(timeout_ms=2000, logger=JsonLogger(io.StringIO()),
                                     allow_private=True)
        await sender.tickle(f"http://push.test:{port}/p", {"type": "ksmpv3_tickle"})
        await sender.close()
    assert asked == ["push.test"]
    assert hosts == [f"push.test:{port}"]


async def test_push_over_tls_sends_the_name_in_sni_and_checks_the_certificate_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = _certificate(tmp_path, "push.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,return-value]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    with _webhook(server_ctx) as (port, hosts):
        _rebinding_dns(monkeypatch, ["127.0.0.1"])
        sender = WebhookTickleSender(timeout_ms=2000, logger=JsonLogger(io.StringIO()),
                                     allow_private=True, verify=client_ctx)
        await sender.tickle(f"https://push.test:{port}/p", {"type": "ksmpv3_tickle"})
        await sender.close()
    assert names == ["push.test"]
    assert hosts == [f"push.test:{port}"], "the certificate names push.test, not 127.0.0.1"


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "push.pem", directory / "push.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_path, key_path


# --- resume amplification -----------------------------------------------------------------


async def _unacked_inbox(url: str, messages: int, size: int) -> Device:
    """A recipient whose inbox holds ``messages`` unacked frames of ``size`` bytes each."""
    a, b = await online_pair(url)
    bob = b.device
    assert bob is not None
    await b.close()
    blob = secrets.token_bytes(size)
    for _ in range(messages):
        ack = await a.send_message(bob.username, [(bob.username, "d1", blob)])
        assert ack["event"] == "ksmpv3.send.ack", ack
    await a.close()
    return bob


async def _count_bytes(ws: Any, stop: asyncio.Event) -> int:
    total = 0
    while not stop.is_set():
        try:
            msg = await asyncio.wait_for(ws.recv(), 0.1)
        except TimeoutError:
            continue
        except ConnectionClosed:
            break
        total += len(msg)
    return total


async def _one_replay(url: str, device: Device) -> int:
    c = await logged_in(url, device)
    frames = await c.resume(0)
    await c.close()
    return sum(len(json.dumps(f)) for f in frames)


async def test_repeated_resumes_on_one_connection_send_one_replay(server: ServerProcess) -> None:
    """400 resume{0} frames over a big inbox once made the server send 95,000x their size;
    now a resume supersedes the running replay and never resends what the connection
    already carried."""
    bob = await _unacked_inbox(server.ws_url, 150, 4096)
    replay = await _one_replay(server.ws_url, bob)
    c = await logged_in(server.ws_url, bob)
    stop = asyncio.Event()
    counter = asyncio.create_task(_count_bytes(c.ws, stop))
    for _ in range(60):
        await c.ws.send(json.dumps({"event": "ksmpv3.resume", "data": {"lastGlobalInboxSeq": 0}}))
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)
    stop.set()
    received = await counter
    assert replay > 500_000
    assert received < 1.5 * replay, (received, replay)


async def test_reconnecting_to_resume_again_and_again_is_rate_limited(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Each connection needs a replay, so reconnecting is the other way to ask for many:
    a device's resumes past a small burst (default 4) wait their turn (one per 5 s).
    The test servers wait 50 ms unless told: this one is told the server's default."""
    server = server_factory("--resume-interval-ms", str(ServerConfig().resume_interval_ms))
    bob = await _unacked_inbox(server.ws_url, 150, 4096)
    replay = await _one_replay(server.ws_url, bob)  # the first of the burst
    stop = asyncio.Event()
    counters = []
    for _ in range(10):
        c = await logged_in(server.ws_url, bob)  # replaces the previous connection
        counters.append(asyncio.create_task(_count_bytes(c.ws, stop)))
        await c.ws.send(json.dumps({"event": "ksmpv3.resume", "data": {"lastGlobalInboxSeq": 0}}))
        await asyncio.sleep(0.15)
    await asyncio.sleep(1.0)
    stop.set()
    received = sum(await asyncio.gather(*counters))
    assert received < 3.5 * replay, (received, replay)  # the rest of the burst, then waits


# --- lock-out before login ----------------------------------------------------------------

#: Attackers' source addresses (Linux answers on all of 127.0.0.0/8 on lo).
FLOOD_SOURCES = [f"127.0.0.{i}" for i in range(2, 8)]


async def _flood(url: str, stop: asyncio.Event, held: list[Any], attempts: list[int]) -> None:
    """Open unauthenticated WebSockets from FLOOD_SOURCES, round robin, and hold them (a
    bounded number of attempts); refused ones are retried, as an attacker would."""
    i = 0
    while not stop.is_set() and attempts[0] < 3000:
        attempts[0] += 1
        source = FLOOD_SOURCES[i % len(FLOOD_SOURCES)]
        i += 1
        try:
            ws = await connect(url, open_timeout=5, ping_interval=None, compression=None,
                               local_addr=(source, 0))
        except (OSError, InvalidHandshake, TimeoutError):
            await asyncio.sleep(0.005)
            continue
        held.append(ws)


async def test_a_flood_of_unauthenticated_connections_cannot_lock_out_logins(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Unauthenticated sessions once counted against the global connection limit: a few
    hundred from six addresses (scaled down from the 10,000 of the attack with
    --max-connections) filled the server and every honest login got HTTP 503. Now they
    have their own budget (scaled down too): 16 per address, 64 in all, the oldest
    closed for a newer one; an honest device gets in."""
    srv = server_factory("--max-connections", "300", "--max-preauth-per-ip", "16",
                         "--max-preauth", "64")
    honest = Device.new()
    await (await registered(srv.ws_url, honest)).close()
    stop = asyncio.Event()
    held: list[Any] = []
    attempts = [0]
    flood = asyncio.create_task(_flood(srv.ws_url, stop, held, attempts))
    try:
        while attempts[0] < 400:  # more than --max-connections: the old server was full
            await asyncio.sleep(0.05)
        before, t0 = attempts[0], time.monotonic()
        c = await logged_in(srv.ws_url, honest)  # during the flood
        elapsed = time.monotonic() - t0
        during = attempts[0] - before
        await c.close()
        # One address alone gets 16 at a time: the 17th is refused.
        for _ in range(16):
            held.append(await connect(srv.ws_url, local_addr=("127.0.0.8", 0)))
        with pytest.raises(InvalidHandshake, match="429"):
            await connect(srv.ws_url, local_addr=("127.0.0.8", 0))
    finally:
        stop.set()
        await flood
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
    assert elapsed < 1.0, elapsed
    assert during > 0, "the flood went on during the login"
    text = srv.metrics()
    assert _metric(text, 'sottovoce_handshakes_refused_total{reason="preauth_address"}') > 0
    assert _metric(text, "sottovoce_preauth_evicted_total") > 0


# --- prekey and KeyPackage exhaustion -----------------------------------------------------


async def _claim_prekeys(c: RawClient, target: str, times: int) -> list[bool]:
    """Claim ``times``; per claim, whether the key served was a one-time key."""
    out = []
    for _ in range(times):
        reply = await c.request("sottovoce.prekeys.claim", {"username": target})
        (raw,) = reply["data"]["bundles"]
        out.append(not PrekeyBundle.decode(unb64(raw)).prekey.fallback)
    return out


async def test_strangers_cannot_strip_a_user_of_one_time_prekeys(server: ServerProcess) -> None:
    """A stranger once claimed all 50 one-time prekeys of a user in under a second. Now
    one gets 5 an hour of a target and all strangers together 20; past that they get
    the fallback key, which consumes nothing."""
    url = server.ws_url
    alice, olm = olm_device()
    a = await registered(url, alice)
    keys = olm.new_one_time_keys(alice.device_key, 50)
    reply = await a.request("sottovoce.prekeys.upload", {
        "oneTimeKeys": [b64(k.encode()) for k in keys],
        "fallbackKey": b64(olm.new_fallback_key(alice.device_key).encode()),
    })
    assert reply["data"]["oneTimeKeys"] == 50
    stranger = await registered(url)
    first = await _claim_prekeys(stranger, alice.username, 60)
    assert sum(first) == 5 and first[:5] == [True] * 5
    sybils = [await registered(url) for _ in range(6)]
    more = [await _claim_prekeys(s, alice.username, 5) for s in sybils]
    assert sum(first) + sum(map(sum, more)) == 20, "all strangers together: 20 an hour"
    # The owner's own other device is no stranger.
    a2 = await RawClient.open(url)
    await a2.add_device(alice.sibling("d2"))
    assert await _claim_prekeys(a2, alice.username, 3) == [True] * 3
    text = server.metrics()
    assert _metric(text, 'sottovoce_key_claims_total{kind="prekey",result="limited"}') == 55 + 15
    assert _metric(text, 'sottovoce_key_claims_total{kind="prekey",result="one_time"}') == 23


async def test_strangers_cannot_strip_a_user_of_one_time_keypackages(
    server: ServerProcess,
) -> None:
    url = server.ws_url
    owner = await registered(url)
    kps = [secrets.token_bytes(200) for _ in range(50)]
    last = secrets.token_bytes(200)
    reply = await owner.request("sottovoce.keypackages.upload", {
        "keyPackages": [b64(k) for k in kps], "lastResort": b64(last)})
    assert reply["data"] == {"count": 50}
    name = owner.device.username  # type: ignore[union-attr]
    stranger = await registered(url)
    got = []
    for _ in range(60):
        r = await stranger.request("sottovoce.keypackages.claim", {"username": name})
        (bundle,) = r["data"]["keyPackages"]
        got.append(unb64(bundle["keyPackage"]))
    assert got[:5] == kps[:5] and got[5:] == [last] * 55
    metric = 'sottovoce_key_claims_total{kind="keypackage",result="limited"}'
    assert _metric(server.metrics(), metric) == 55


async def _poll(claim: Callable[[], Any], until: Callable[[Any], bool], timeout: float) -> float:
    """Claim every 0.1 s until ``until(result)``; returns how long it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if until(await claim()):
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise TimeoutError("the stock was not replenished")


async def test_the_owner_replenishes_at_once_when_its_stock_runs_low(
    server_factory: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    """A drain right after an upload used to be ignored for 5 s (the client took every
    low notice that soon for the one sent at login); now the device tops up at once,
    prekeys and KeyPackages alike."""
    srv = server_factory("--key-claims-per-requester", "1000", "--key-claims-per-target", "1000")
    alice = await make_account(srv, "alice", tmp_path)
    try:
        stranger = await registered(srv.ws_url)

        async def prekey() -> bool | None:
            r = await stranger.request("sottovoce.prekeys.claim", {"username": "alice"})
            bundles = r["data"]["bundles"]
            return not PrekeyBundle.decode(unb64(bundles[0])).prekey.fallback if bundles else None

        async def keypackage() -> bytes | None:
            r = await stranger.request("sottovoce.keypackages.claim", {"username": "alice"})
            kps = r["data"]["keyPackages"]
            return unb64(kps[0]["keyPackage"]) if kps else None

        async def drain(event: str, reply: str, n: int) -> None:
            for _ in range(n):  # pipelined: the whole stock at once
                await stranger.send(event, {"username": "alice"})
            for _ in range(n):
                await stranger.wait_for(reply)

        # Right after the first upload (well within the old 5 s), the whole stock goes.
        await _poll(prekey, lambda one_time: one_time is True, 10)
        await drain("sottovoce.prekeys.claim", "sottovoce.prekeys.bundles", 60)
        assert await _poll(prekey, lambda one_time: one_time is True, 2) < 2

        async def two_differ() -> bool:  # the last-resort KeyPackage is the same every time
            return await keypackage() != await keypackage()

        await _poll(keypackage, lambda kp: kp is not None, 10)
        await drain("sottovoce.keypackages.claim", "sottovoce.keypackages.bundles", 60)
        assert await _poll(two_differ, lambda differ: differ, 2) < 2
    finally:
        await alice.close()
