"""The few things the call engine reads from, or removes from, an SDP (RFC 8866).

This is not an SDP parser: the media library parses SDP. These helpers read
exactly what the engine must check itself -- the DTLS fingerprints (RFC 8122 §5)
bound into the encrypted signalling, the candidates (RFC 8839 §5.1) a device is
about to reveal, the negotiated codecs -- and drop header extensions that must
not travel in the clear (the RFC 6464 audio level).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sottovoce.calls.errors import BindingError
from sottovoce.calls.signals import Fingerprint, HashAlgorithm
from sottovoce.errors import DecodeError, UsageError

#: RFC 6464: the client-to-mixer audio level. SRTP leaves RTP header extensions in
#: the clear (RFC 3711 §3.1), so it would tell the network who speaks when.
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

_FINGERPRINT_RE = re.compile(r"a=fingerprint:(\S+) ((?:[0-9A-Fa-f]{2}:)*[0-9A-Fa-f]{2})")
_EXTMAP_RE = re.compile(r"a=extmap:(\d+)(?:/\w+)? (\S+)")
_RTPMAP_RE = re.compile(r"a=rtpmap:(\d+) ([^/\s]+)/")


@dataclass(frozen=True, slots=True, kw_only=True)
class SdpCandidate:
    """The parts of an ``a=candidate`` line a privacy check needs."""

    type: str  # host | srflx | prflx | relay (RFC 8445 §5.1.1)
    address: str
    port: int
    related_address: str | None


def _lines(sdp: str) -> list[str]:
    return sdp.replace("\r\n", "\n").split("\n")


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """Session-level lines, then the lines of each m-section (``m=`` line first)."""
    session: list[str] = []
    media: list[list[str]] = []
    for line in _lines(sdp):
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def _fingerprints_in(lines: list[str]) -> frozenset[Fingerprint]:
    found = set()
    for line in lines:
        if not line.startswith("a=fingerprint:"):
            continue
        m = _FINGERPRINT_RE.fullmatch(line.strip())
        if m is None:
            raise DecodeError("malformed a=fingerprint line")
        try:
            algorithm = HashAlgorithm.from_sdp_name(m.group(1))
            found.add(
                Fingerprint(algorithm=algorithm, digest=bytes.fromhex(m.group(2).replace(":", "")))
            )
        except UsageError as exc:
            raise DecodeError(str(exc)) from None
    return frozenset(found)


def fingerprints(sdp: str) -> frozenset[Fingerprint]:
    """The one fingerprint set every m-section of ``sdp`` uses.

    RFC 8122 §5: a session-level fingerprint applies to every m-section that has
    none of its own. With BUNDLE one DTLS association carries every section, and
    a section with a different set could make a library check the wrong one, so
    differing sets are refused.
    """
    session, media = _sections(sdp)
    if not media:
        raise DecodeError("an SDP without m-sections")
    default = _fingerprints_in(session)
    sets = {(_fingerprints_in(section) or default) for section in media}
    if len(sets) != 1:
        raise BindingError("m-sections carry different DTLS fingerprints")
    (only,) = sets
    if not only:
        raise BindingError("the SDP carries no DTLS fingerprint")
    return only


def check_fingerprints(sdp: str, bound: tuple[Fingerprint, ...]) -> None:
    """Raise :class:`BindingError` unless ``sdp`` uses exactly the ``bound`` fingerprints."""
    if fingerprints(sdp) != frozenset(bound):
        raise BindingError("the SDP's DTLS fingerprints are not the ones signalled")


def header_extensions(sdp: str) -> frozenset[str]:
    """Every RTP header extension URI the SDP negotiates (RFC 8285 §8)."""
    out = set()
    for line in _lines(sdp):
        m = _EXTMAP_RE.match(line)
        if m:
            out.add(m.group(2))
    return frozenset(out)


def drop_header_extension(sdp: str, uri: str) -> str:
    """``sdp`` without any ``a=extmap`` line for ``uri`` (line endings kept)."""
    kept = []
    for line in sdp.splitlines(keepends=True):
        m = _EXTMAP_RE.match(line)
        if m and m.group(2) == uri:
            continue
        kept.append(line)
    return "".join(kept)


def candidates(sdp: str) -> list[SdpCandidate]:
    """Every ``a=candidate`` of the SDP (RFC 8839 §5.1)."""
    out = []
    for line in _lines(sdp):
        if line.startswith("a=candidate:"):
            out.append(parse_candidate(line[2:]))
    return out


def section_candidates(sdp: str) -> list[tuple[str, tuple[str, ...], bool]]:
    """Per m-section: its mid, its ``candidate:...`` values and whether it says
    ``a=end-of-candidates`` (RFC 8839 §5.1, §5.2), in the description's order."""
    out = []
    for lines in _sections(sdp)[1]:
        mid = next((line[6:] for line in lines if line.startswith("a=mid:")), "")
        found = tuple(line[2:] for line in lines if line.startswith("a=candidate:"))
        out.append((mid, found, "a=end-of-candidates" in lines))
    return out


def parse_candidate(value: str) -> SdpCandidate:
    """One ``candidate:...`` attribute value (RFC 8839 §5.1)."""
    parts = value.strip().split()
    try:
        if len(parts) < 8 or not parts[0].startswith("candidate:") or parts[6] != "typ":
            raise ValueError
        int(parts[1]), int(parts[3])  # component and priority are integers
        related = parts[parts.index("raddr") + 1] if "raddr" in parts else None
        return SdpCandidate(
            type=parts[7], address=parts[4], port=int(parts[5]), related_address=related
        )
    except (ValueError, IndexError):
        raise DecodeError("malformed candidate") from None


def connection_addresses(sdp: str) -> list[str]:
    """The addresses of every ``c=`` line (RFC 8866 §5.7); they name a default candidate."""
    out = []
    for line in _lines(sdp):
        if line.startswith("c="):
            parts = line.split()
            if len(parts) >= 3:
                out.append(parts[2])
    return out


def codecs(sdp: str) -> dict[str, str]:
    """kind of each m-section with a payload → its preferred codec (first payload type)."""
    out: dict[str, str] = {}
    _, media = _sections(sdp)
    for i, section in enumerate(media):
        head = section[0].split()
        if len(head) < 4 or head[1] == "0":
            continue  # a rejected or payload-less section
        names = {}
        for line in section:
            m = _RTPMAP_RE.match(line)
            if m:
                names[m.group(1)] = m.group(2)
        name = names.get(head[3])
        if name is not None:
            out[f"{head[0][2:]}:{i}"] = name
    return out
