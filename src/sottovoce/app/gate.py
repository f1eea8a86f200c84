"""Who may talk to the app, and the headers every response carries (docs/app.md §Security model).

Anything on the machine can reach a port on 127.0.0.1, and any web page the user
visits can make the browser send requests to it. So:

* the URL the command prints carries a **launch token**, good once: the first
  request with it gets a session cookie (HttpOnly, SameSite=Strict) and a page that
  moves on to a URL without it, so the token left in the history or on the screen opens nothing;
* every request needs that cookie and an exact ``Host`` (``127.0.0.1:PORT`` or
  ``localhost:PORT``): a DNS-rebinding page has another Host;
* the WebSocket also needs an ``Origin`` of the app itself: a page elsewhere that
  carries no cookie (SameSite) is refused for Origin too.

Tokens and cookies are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

#: The cookie's name; its value is 32 random bytes, base64url.
COOKIE = "sv_session"
#: The trusted-types policy the page creates (the only one the CSP allows).
TRUSTED_TYPES_POLICY = "sottovoce"
#: The policy that makes the call worker's URL, and only that (static/call.js).
WORKER_POLICY = "sottovoce-worker"
_TOKEN_BYTES = 32


def content_security_policy(port: int) -> str:
    """The page's CSP: only its own scripts, styles and WebSocket; no inline code, no
    framing, no plugins, and DOM sinks that parse HTML need a trusted type no code makes."""
    sockets = f"ws://127.0.0.1:{port} ws://localhost:{port}"
    return "; ".join((
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "worker-src 'self'",
        f"connect-src 'self' {sockets}",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        f"trusted-types {TRUSTED_TYPES_POLICY} {WORKER_POLICY}",
    ))


#: A received file is served as a download only, and sandboxed if a browser shows it anyway.
ATTACHMENT_CSP = "sandbox; default-src 'none'"


def common_headers(port: int) -> list[tuple[str, str]]:
    """Headers on every response, refusals included."""
    return [
        ("Content-Security-Policy", content_security_policy(port)),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
        ("Connection", "close"),
    ]


def cookie_header(value: str) -> str:
    return f"{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/"


def read_cookie(header: str | None) -> str | None:
    """The session cookie's value in a ``Cookie`` header, if there is one."""
    if not header:
        return None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


@dataclass
class Gate:
    """The launch token and the sessions of one run of the app, for one port."""

    port: int
    launch_token: str = field(default_factory=lambda: secrets.token_urlsafe(_TOKEN_BYTES))
    _launched: bool = False
    _sessions: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"Gate(port={self.port}, sessions={len(self._sessions)})"

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}"})

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(f"http://{h}" for h in self.hosts)

    def launch_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/launch?t={self.launch_token}"

    def host_ok(self, host: str | None) -> bool:
        return host is not None and host in self.hosts

    def origin_ok(self, origin: str | None) -> bool:
        return origin is not None and origin in self.origins

    def launch(self, token: str) -> str | None:
        """A new session's cookie value for the launch token, once; ``None`` after."""
        if self._launched or not hmac.compare_digest(token.encode(), self.launch_token.encode()):
            return None
        self._launched = True
        session = secrets.token_urlsafe(_TOKEN_BYTES)
        self._sessions.add(session)
        return session

    def session_ok(self, value: str | None) -> bool:
        if not value:
            return False
        given = value.encode()
        return any(hmac.compare_digest(given, s.encode()) for s in self._sessions)
