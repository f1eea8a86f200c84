"""Every use of aiortc's and aioice's private internals, in one place.

aiortc 1.16.0 and aioice 0.13.0 are pinned exactly (pyproject.toml) because
the call media layer needs seven things their public API does not offer:

1. **Loopback host candidates.** ``aioice.ice.get_host_addresses`` drops
   127.0.0.1, so two peers on one machine find no path. :func:`loopback_only`
   makes gathering inside its ``with`` block offer 127.0.0.1 and nothing else
   (never the machine's other addresses); outside it, nothing changes.
2. **One DTLS certificate per call.** aiortc makes a new certificate per
   ``RTCPeerConnection``; an ICE restart here is a new peer connection, and
   its fingerprint must stay the one bound into the call's E2EE signalling.
   :func:`use_certificate` installs the call's certificate.
3. **Constant-bitrate Opus.** aiortc creates its Opus encoder lazily with VBR;
   :func:`use_encoder` gives a sender ours before it encodes anything.
4. **The certificate the peer actually presented** in the DTLS handshake
   (:func:`peer_certificate_fingerprints`), checked against the signalled
   fingerprints independently of aiortc's own check against the SDP.
5. **The nominated candidate pair** (:func:`selected_pair`), for stats and for
   checking that a relay-only call really runs through the relay; and a TURN
   allocation probe (:func:`probe_turn`) that says *why* no relay candidate
   was gathered, which aiortc swallows.
6. **The whole encoded frame before packetization** (SFrame, RFC 9605 §4.2):
   :class:`FrameSealingVp8Encoder` gets each VP8 frame where aiortc's
   ``Vp8Encoder`` hands it to ``_packetize``; Opus frames come out of
   ``OpusEncoder.encode`` whole, one per RTP payload (``media`` wraps that).
7. **The whole encoded frame after depacketization, before the decoder**:
   :func:`filter_frames` replaces the queue an ``RTCRtpReceiver`` feeds its
   decoder thread with, so each reassembled frame passes a check (SFrame) that
   may rewrite it or drop it before it is decoded; :func:`request_keyframe`
   makes the receiver ask the sender for a keyframe (PLI, RFC 4585 §6.3.1)
   after a dropped frame, as it does after a decoder error.

``tests/unit/test_calls_hooks.py`` checks every hook point and fails loudly
when an upgrade moves one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import queue
from collections.abc import Callable, Iterator
from typing import Any

import aioice.ice
import aioice.stun
import aioice.turn
from aioice import Candidate
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.base import Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcdtlstransport import X509_DIGEST_ALGORITHMS, RTCCertificate, RTCDtlsTransport
from cryptography import x509

from sottovoce.calls.signals import Fingerprint, HashAlgorithm
from sottovoce.client.calls.errors import TurnRefused, TurnUnreachable

LOOPBACK = "127.0.0.1"

_loopback: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sottovoce_loopback", default=False
)
_original_get_host_addresses: Callable[..., list[str]] = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _loopback.get():
        return [LOOPBACK] if use_ipv4 else []
    return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)


def _install() -> None:
    # Idempotent; outside loopback_only() the wrapper returns what aioice would.
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


_install()


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Candidates gathered inside the block (this task and tasks it starts) are 127.0.0.1 only.

    aiortc gathers inside ``setLocalDescription``; wrap that call.
    """
    token = _loopback.set(True)
    try:
        yield
    finally:
        _loopback.reset(token)


def use_certificate(pc: RTCPeerConnection, certificate: RTCCertificate) -> None:
    """Make ``pc`` present ``certificate``; call before adding any transceiver."""
    if pc.getTransceivers():
        raise RuntimeError("install the certificate before adding transceivers")
    pc._RTCPeerConnection__certificates = [certificate]  # type: ignore[attr-defined]


def use_encoder(sender: RTCRtpSender, encoder: Encoder) -> None:
    """Give ``sender`` its encoder before its first frame (aiortc would make its own)."""
    sender._RTCRtpSender__encoder = encoder  # type: ignore[attr-defined]


class FrameSealingVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder, with ``seal`` applied to each whole encoded frame just
    before RTP packetization (``encode`` and ``pack`` both packetize through here)."""

    def __init__(self, seal: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self._seal = seal

    def _packetize(self, buffer: bytes, picture_id: int) -> list[bytes]:  # type: ignore[override]
        return super()._packetize(self._seal(buffer), picture_id)


#: What a frame filter returns: the frame to decode, or None to drop it.
FrameFilter = Callable[[str, JitterFrame], JitterFrame | None]


class _FilteredQueue(queue.Queue):  # type: ignore[type-arg]
    """The decoder queue of one receiver: every frame passes ``check`` on its way in.

    ``put`` runs on the event loop (``RTCRtpReceiver._handle_rtp_packet``); the
    decoder thread only ever sees what ``check`` let through. ``None`` (the stop
    marker) passes untouched.
    """

    def __init__(self, check: FrameFilter) -> None:
        super().__init__()
        self._check = check

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            checked = self._check(codec.name, frame)
            if checked is None:
                return
            item = (codec, checked)
        super().put(item, block, timeout)


def filter_frames(receiver: RTCRtpReceiver, check: FrameFilter) -> None:
    """Pass every encoded frame ``receiver`` reassembles through ``check`` before its
    decoder sees it. Call before the receiver starts (before the descriptions are
    applied); ``check`` runs on the event loop and must not raise."""
    if receiver._RTCRtpReceiver__decoder_thread is not None:  # type: ignore[attr-defined]
        raise RuntimeError("install the frame filter before the receiver starts")
    receiver._RTCRtpReceiver__decoder_queue = _FilteredQueue(check)  # type: ignore[attr-defined]


def request_keyframe(receiver: RTCRtpReceiver) -> None:
    """Make ``receiver`` send a PLI with its next packet (video), as after a decode error."""
    receiver._RTCRtpReceiver__decoder_error.set()  # type: ignore[attr-defined]


def fingerprints_of(certificate: x509.Certificate) -> frozenset[Fingerprint]:
    """RFC 8122 §5 fingerprints of a certificate, for every hash aiortc signals."""
    out = set()
    for name, digest in X509_DIGEST_ALGORITHMS.items():
        algorithm = HashAlgorithm.from_sdp_name(name)
        out.add(Fingerprint(algorithm=algorithm, digest=certificate.fingerprint(digest)))
    return frozenset(out)


def local_fingerprints(certificate: RTCCertificate) -> frozenset[Fingerprint]:
    return fingerprints_of(certificate._cert)


def dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    seen: dict[int, RTCDtlsTransport] = {}
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        seen[id(transport)] = transport
    return list(seen.values())


def peer_certificate_fingerprints(transport: RTCDtlsTransport) -> frozenset[Fingerprint] | None:
    """Fingerprints of the certificate the peer presented in this transport's DTLS
    handshake (also when aiortc then failed it), or None before there was one."""
    ssl = transport._ssl
    if ssl is None:
        return None
    certificate = ssl.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return None
    return fingerprints_of(certificate)


def selected_pair(pc: RTCPeerConnection) -> tuple[Candidate, Candidate] | None:
    """(local, remote) candidates of the nominated pair of the first transport."""
    for transport in dtls_transports(pc):
        connection = transport.transport._connection
        nominated = getattr(connection, "_nominated", {})
        pair = nominated.get(1)
        if pair is not None:
            return pair.local_candidate, pair.remote_candidate
    return None


async def probe_turn(
    *, host: str, port: int, transport: str, username: str, password: str, timeout_s: float
) -> None:
    """Try one TURN allocation (RFC 8656 §7.2) and release it; raise why it fails.

    aioice gathers relay candidates with exceptions swallowed, so a refused
    credential just means "no relay candidate"; this asks the TURN server again
    and turns its answer into :class:`TurnRefused` (an error response such as
    401) or :class:`TurnUnreachable` (no answer).
    """

    async def allocate() -> None:
        relayed, _ = await aioice.turn.create_turn_endpoint(
            _NullProtocol,
            server_addr=(host, port),
            username=username,
            password=password,
            ssl=False,
            transport=transport,
        )
        relayed.close()

    try:
        await asyncio.wait_for(allocate(), timeout_s)
    except aioice.stun.TransactionFailed as exc:
        code = exc.response.attributes.get("ERROR-CODE", (0, ""))[0]
        raise TurnRefused(f"the TURN server refused the credentials (error {code})") from None
    except (TimeoutError, aioice.stun.TransactionTimeout, OSError):
        raise TurnUnreachable("the TURN server did not answer") from None


class _NullProtocol(asyncio.DatagramProtocol):
    """The probe's relayed endpoint: it only needs to exist."""


def hook_points() -> dict[str, bool]:
    """Whether each private name this module relies on is where it expects it."""
    gather_source = inspect.getsource(aioice.ice.Connection.gather_candidates)
    create_dtls = inspect.getsource(RTCPeerConnection._RTCPeerConnection__createDtlsTransport)  # type: ignore[attr-defined]
    next_frame = inspect.getsource(RTCRtpSender._next_encoded_frame)
    receiver_init = inspect.getsource(RTCRtpReceiver.__init__)
    receive = inspect.getsource(RTCRtpReceiver.receive)
    handle_rtp = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    return {
        "aioice.ice.get_host_addresses": callable(_original_get_host_addresses)
        and list(inspect.signature(_original_get_host_addresses).parameters)
        == ["use_ipv4", "use_ipv6"],
        "Connection.gather_candidates uses get_host_addresses": "get_host_addresses("
        in gather_source,
        "RTCPeerConnection.__certificates": "self.__certificates" in create_dtls,
        "RTCRtpSender.__encoder": "if self.__encoder is None:" in next_frame,
        "RTCDtlsTransport._ssl": "_ssl" in inspect.getsource(RTCDtlsTransport.__init__),
        "Connection._nominated": "self._nominated"
        in inspect.getsource(aioice.ice.Connection.__init__),
        "aioice.turn.create_turn_endpoint": "server_addr"
        in inspect.signature(aioice.turn.create_turn_endpoint).parameters,
        "Vp8Encoder.encode packetizes through self._packetize": "self._packetize("
        in inspect.getsource(Vp8Encoder.encode)
        and "self._packetize(" in inspect.getsource(Vp8Encoder.pack),
        "RTCRtpReceiver.__decoder_queue feeds the decoder thread": "self.__decoder_queue"
        in receiver_init
        and "self.__decoder_queue," in receive
        and "self.__decoder_queue.put((codec, encoded_frame))" in handle_rtp,
        "RTCRtpReceiver.__decoder_thread starts in receive()": "self.__decoder_thread: Optional"
        in receiver_init
        and "self.__decoder_thread = threading.Thread(" in receive,
        "RTCRtpReceiver.__decoder_error asks for a PLI": "self.__decoder_error.is_set()"
        in handle_rtp
        and "pli_flag = True" in handle_rtp,
    }
