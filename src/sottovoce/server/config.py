"""Server configuration: defaults < TOML file < ``SOTTOVOCE_*`` environment < command-line flags.

Every option is declared once in :data:`OPTIONS` (name, type, default, help);
the CLI flags, the environment variable names and the config-file keys are all
derived from it, so ``sottovoce server --help`` documents every option.

    # sottovoce.toml
    port = 8765
    data_dir = "/var/lib/sottovoce"
    retention_ms = 2592000000

    SOTTOVOCE_PORT=9000 sottovoce server --config sottovoce.toml --retention-days 7
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from sottovoce.errors import UsageError
from sottovoce.limits import (
    AUTH_CHALLENGE_TTL_MS,
    DEFAULT_RETENTION_MS,
    FILE_QUOTA,
    FILE_TTL_MS,
    INBOX_CONTACT_BYTES,
    INBOX_CONTACT_MESSAGES,
    INBOX_MAX_BYTES,
    INBOX_MAX_MESSAGES,
    INBOX_STRANGER_BYTES,
    INBOX_STRANGER_MESSAGES,
    KEEPALIVE_INTERVAL_MS,
    KT_COSIGN_INTERVAL_MS,
    KT_HISTORY_PAGE,
    LINK_CODE_TTL_MS,
    MAX_FILE_SIZE,
    ONE_TIME_KEYS_LOW_WATERMARK,
)
from sottovoce.protocol.pow import BASE_BITS as POW_BASE_BITS
from sottovoce.protocol.pow import MAX_BITS as POW_MAX_BITS
from sottovoce.server.storage.quota import InboxLimits
from sottovoce.server.turn import parse_turn_urls

if TYPE_CHECKING:
    from sottovoce.server.kt_witness import RemoteWitness
    from sottovoce.server.sfu import SfuEndpoint

DEFAULT_PORT = 8765
ENV_PREFIX = "SOTTOVOCE_"
CONFIG_ENV = "SOTTOVOCE_CONFIG"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("sottovoce")) / "server"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    retention_ms: int = DEFAULT_RETENTION_MS
    expiry_interval_ms: int = 60_000
    heartbeat_ms: int = KEEPALIVE_INTERVAL_MS
    challenge_ttl_ms: int = AUTH_CHALLENGE_TTL_MS
    preauth_timeout_ms: int = 5_000
    #: A device-linking mailbox closes this long after it opened (and sooner when done).
    link_ttl_ms: int = LINK_CODE_TTL_MS
    commit_window_ms: float = 0.0
    max_batch: int = 2048
    device_rate: float = 2000.0
    device_burst: int = 4000
    ip_rate: float = 100.0
    ip_burst: int = 400
    abuse_strikes: int = 50
    max_connections: int = 10_000
    max_preauth: int = 1024
    max_preauth_per_ip: int = 64
    key_claims_per_requester: int = 5
    key_claims_per_target: int = 20
    #: Proof of work for probes and first contact (server/pow_gate.py): the difficulty in
    #: leading zero bits while quiet, and the half-life of the counts that raise it.
    pow_bits: int = POW_BASE_BITS
    pow_half_life_ms: int = 60_000
    inbox_max_messages: int = INBOX_MAX_MESSAGES
    inbox_max_bytes: int = INBOX_MAX_BYTES
    max_file_size: int = MAX_FILE_SIZE
    file_quota: int = FILE_QUOTA
    file_ttl_ms: int = FILE_TTL_MS
    #: Where the sealed chunks of uploaded files live (default ``<data dir>/blobs``);
    #: nodes that share a database share this directory too.
    blob_dir: Path | None = None
    inbox_contact_messages: int = INBOX_CONTACT_MESSAGES
    inbox_contact_bytes: int = INBOX_CONTACT_BYTES
    inbox_stranger_messages: int = INBOX_STRANGER_MESSAGES
    inbox_stranger_bytes: int = INBOX_STRANGER_BYTES
    resume_burst: int = 4
    resume_interval_ms: int = 5_000
    write_buffer_limit: int = 8 * 1024 * 1024
    prekey_low_watermark: int = ONE_TIME_KEYS_LOW_WATERMARK
    push_hints: bool = False
    push_min_interval_ms: int = 1000
    push_timeout_ms: int = 5000
    push_allow_private: bool = False
    log_file: Path | None = None
    log_level: str = "info"
    log_ips: bool = False
    #: postgresql://… DSN (production storage); None: embedded SQLite in data_dir.
    database: str | None = field(default=None, repr=False)  # may hold a password
    #: Data-residency label of this deployment (e.g. "eu-west"), shown by /healthz.
    residency: str | None = None
    #: NATS URL for cross-node fan-out (several nodes on one PostgreSQL); None: one node.
    nats: str | None = field(default=None, repr=False)  # may hold credentials
    #: This node's name in logs and /healthz (default: hostname-pid).
    node_id: str | None = None
    #: Subject namespace: deployments sharing one NATS must each use their own.
    nats_namespace: str = "sottovoce"
    #: TURN servers handed to devices (``--turn-url``, several separated by commas).
    turn_url: tuple[str, ...] = ()
    #: The secret shared with coturn (``static-auth-secret``), one line in this file.
    turn_secret_file: Path | None = None
    #: Janus SFUs for room calls (``--sfu [REGION=]URL[,...]``); none: rooms call as a mesh.
    sfu: tuple[SfuEndpoint, ...] = ()
    #: The key shared with them (the VideoRoom ``admin_key``), one line in this file.
    sfu_key_file: Path | None = None
    #: Key transparency: the log's note key and the VRF key (default: made at first start
    #: in data_dir), the name a new log key gets, the witnesses to push checkpoints to,
    #: whether to run the co-located witness, and how often an unchanged log is cosigned.
    kt_log_key_file: Path | None = None
    kt_vrf_key_file: Path | None = None
    kt_origin: str | None = None
    kt_witness: tuple[RemoteWitness, ...] = ()
    no_local_witness: bool = False
    kt_cosign_interval_ms: int = KT_COSIGN_INTERVAL_MS
    #: Versions one page of an account's history carries at most (kt.history with start).
    kt_history_page: int = KT_HISTORY_PAGE

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise UsageError("--tls-cert and --tls-key must be given together")
        if not 0 <= self.port <= 65535:
            raise UsageError("port must be 0-65535")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise UsageError("log level must be debug, info, warning or error")
        for name in ("retention_ms", "expiry_interval_ms", "heartbeat_ms", "challenge_ttl_ms",
                     "max_batch", "device_burst", "ip_burst", "abuse_strikes", "resume_burst",
                     "resume_interval_ms", "preauth_timeout_ms", "link_ttl_ms", "max_connections",
                     "max_preauth", "max_preauth_per_ip", "key_claims_per_requester",
                     "key_claims_per_target", "pow_half_life_ms", "kt_cosign_interval_ms",
                     "kt_history_page",
                     "max_file_size", "file_quota", "file_ttl_ms", *_INBOX_OPTIONS):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name.replace('_', '-')} must be positive")
        if not 0 <= self.pow_bits <= POW_MAX_BITS:
            raise UsageError(f"pow-bits must be 0-{POW_MAX_BITS}")
        if self.device_rate <= 0 or self.ip_rate <= 0:
            raise UsageError("rates must be positive")
        limits = self.inbox_limits
        if not (limits.stranger_messages <= limits.contact_messages <= limits.device_messages
                and limits.stranger_bytes <= limits.contact_bytes <= limits.device_bytes):
            raise UsageError("inbox quotas must grow: stranger <= contact <= inbox-max")
        if self.database is not None and not self.database.startswith(
            ("postgresql://", "postgres://")
        ):
            # Not echoed: a DSN may carry a password.
            raise UsageError("--database must be a postgresql:// URL (omit it for SQLite)")
        if self.residency is not None and not _RESIDENCY.fullmatch(self.residency):
            raise UsageError("residency: 1-64 letters, digits, spaces or '.', '_', ':', '/', '-'")
        if self.nats is not None and not all(
            u.strip().startswith(("nats://", "tls://")) for u in self.nats.split(",")
        ):
            raise UsageError("--nats must be nats:// or tls:// URLs, separated by commas")
        if self.node_id is not None and not _NODE_ID.fullmatch(self.node_id):
            raise UsageError("node id: 1-64 letters, digits, '.', '_' or '-'")
        if not _NODE_ID.fullmatch(self.nats_namespace) or "." in self.nats_namespace:
            raise UsageError("NATS namespace: 1-64 letters, digits, '_' or '-'")
        if bool(self.turn_url) != (self.turn_secret_file is not None):
            raise UsageError("--turn-url and --turn-secret-file must be given together")
        if bool(self.sfu) != (self.sfu_key_file is not None):
            raise UsageError("--sfu and --sfu-key-file must be given together")

    @property
    def inbox_limits(self) -> InboxLimits:
        return InboxLimits(**{limit: getattr(self, name) for name, limit in _INBOX_OPTIONS.items()})

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def scheme(self) -> str:
        return "wss" if self.tls else "ws"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "sottovoce.sqlite3"

    @property
    def blob_path(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"


#: The inbox quota options, each with the field of InboxLimits it sets.
_INBOX_OPTIONS = {
    "inbox_max_messages": "device_messages", "inbox_max_bytes": "device_bytes",
    "inbox_contact_messages": "contact_messages", "inbox_contact_bytes": "contact_bytes",
    "inbox_stranger_messages": "stranger_messages", "inbox_stranger_bytes": "stranger_bytes",
}
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_RESIDENCY = re.compile(r"[A-Za-z0-9 ._:/-]{1,64}")


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


# The SFU's and the witnesses' modules are loaded when their option is given: the help
# and the options table need neither.
def _parse_sfu(value: str) -> tuple[SfuEndpoint, ...]:
    """``--sfu``: :func:`sottovoce.server.sfu.parse_sfu_option`."""
    from sottovoce.server.sfu import parse_sfu_option

    return parse_sfu_option(value)


def _parse_kt_witnesses(text: str) -> tuple[RemoteWitness, ...]:
    """``--kt-witness``: :func:`sottovoce.server.kt_witness.parse_kt_witnesses`."""
    from sottovoce.server.kt_witness import parse_kt_witnesses

    return parse_kt_witnesses(text)


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""
    flag_only: bool = False
    #: A flag that takes no value (``--no-local-witness``); env and file take a boolean.
    switch: bool = False
    #: A flag that may be given several times; env and file separate values by spaces.
    repeat: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "address to listen on (default 127.0.0.1; 0.0.0.0 for all)", "ADDR"),
    Option("port", int, f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)", "PORT"),
    Option("data_dir", Path, "directory for the SQLite database (default: user data dir)", "DIR"),
    Option("tls_cert", Path, "PEM certificate chain: serve wss:// (needs --tls-key)", "PEM"),
    Option("tls_key", Path, "PEM private key of --tls-cert", "PEM"),
    Option("retention_ms", int, "keep unacknowledged inbox frames this long (default 30 days)",
           "MS"),
    Option("expiry_interval_ms", int, "how often expired frames are deleted (default 60000)",
           "MS"),
    Option("heartbeat_ms", int, "keepalive interval; silent peers are dropped after two",
           "MS"),
    Option("challenge_ttl_ms", int, "an auth challenge must be answered within this (30000)",
           "MS"),
    Option("preauth_timeout_ms", int, "close connections not authenticated within this (5000)",
           "MS"),
    Option("link_ttl_ms", int,
           "a device-linking mailbox (its code) expires this long after it opened (300000)",
           "MS"),
    Option("commit_window_ms", float,
           "extra wait to gather more sends into one commit (default 0: take what queued "
           "during the previous fsync)", "MS"),
    Option("max_batch", int, "most requests in one storage transaction (default 2048)", "N"),
    Option("device_rate", float, "requests per second per device, sustained (default 2000)",
           "N"),
    Option("device_burst", int, "requests per device allowed in a burst (default 4000)", "N"),
    Option("ip_rate", float, "connections + pre-auth requests per second per IP (default 100)",
           "N"),
    Option("ip_burst", int, "burst of the per-IP limit (default 400)", "N"),
    Option("abuse_strikes", int,
           "rate-limited or malformed requests in a row before the socket is closed with 1008 "
           "(default 50)", "N"),
    Option("max_connections", int,
           "concurrent authenticated WebSocket connections (default 10000)", "N"),
    Option("max_preauth", int,
           "concurrent connections not yet authenticated, in total (default 1024; past it a "
           "new one closes the oldest); they never take the room of authenticated ones", "N"),
    Option("max_preauth_per_ip", int,
           "concurrent connections not yet authenticated from one IPv4 address or IPv6 /64 "
           "(default 64)", "N"),
    Option("key_claims_per_requester", int,
           "one-time prekeys / KeyPackages one account may take of another per hour (5); "
           "past it, claims get the fallback / last-resort key", "N"),
    Option("key_claims_per_target", int,
           "one-time prekeys / KeyPackages all other accounts together may take of one "
           "account per hour (20)", "N"),
    Option("pow_bits", int,
           f"proof of work asked of username checks, lookups, prekey claims and searches "
           f"about another account: leading zero bits of SHA-256 while quiet (default "
           f"{POW_BASE_BITS}, about 0.2 s of one core; it rises under abuse)", "BITS"),
    Option("pow_half_life_ms", int,
           "how fast the proof-of-work difficulty falls back once requests stop: the "
           "half-life of the request counts that raise it (default 60000)", "MS"),
    Option("inbox_max_messages", int,
           "frames that may wait unread in one device's inbox (default 20000); past it sends "
           "to the device are refused with inbox_full", "N"),
    Option("inbox_max_bytes", int, "bytes that may wait in one device's inbox (256 MiB)",
           "BYTES"),
    Option("max_file_size", int,
           "largest file a client may upload, in bytes (default 104857600, 100 MiB); a larger "
           "one is refused with file_too_large before any of it is sent", "BYTES"),
    Option("file_quota", int,
           "bytes of files one account may have stored at once, until fetched or expired "
           "(default 1073741824, 1 GiB); past it uploads are refused with quota_exceeded",
           "BYTES"),
    Option("file_ttl_ms", int,
           "an uploaded file is deleted this long after its upload at the latest, fetched or "
           "not (default 7 days)", "MS"),
    Option("blob_dir", Path,
           "directory of uploaded files' sealed chunks (default: <data dir>/blobs); nodes "
           "that share a database must share it", "DIR"),
    Option("inbox_contact_messages", int,
           "frames one account may have waiting in a device's inbox once that device's "
           "account has written to it (default 10000)", "N"),
    Option("inbox_contact_bytes", int, "bytes of the same (128 MiB)", "BYTES"),
    Option("inbox_stranger_messages", int,
           "frames one account may have waiting in a device's inbox before that device's "
           "account has written to it (default 5000)", "N"),
    Option("inbox_stranger_bytes", int, "bytes of the same (16 MiB)", "BYTES"),
    Option("resume_burst", int,
           "replays (ksmpv3.resume) a device may start at once, over all its connections "
           "(default 4); later ones wait their turn", "N"),
    Option("resume_interval_ms", int,
           "past the burst, a device's next replay starts this long after the last (5000)",
           "MS"),
    Option("write_buffer_limit", int,
           "bytes queued to one slow client before it is closed with 1013 (default 8 MiB)",
           "BYTES"),
    Option("prekey_low_watermark", int, "tell a device when its one-time keys fall below this",
           "N"),
    Option("push_hints", _bool, "add conversationId/serverSeq hints to push tickles (off)",
           "BOOL"),
    Option("push_min_interval_ms", int, "at most one tickle per device per interval (1000)",
           "MS"),
    Option("push_timeout_ms", int, "HTTP timeout of a push webhook POST (5000)", "MS"),
    Option("push_allow_private", _bool,
           "allow push endpoints on loopback/private addresses (off; for tests and LANs)",
           "BOOL"),
    Option("log_file", Path, "write JSON-lines logs here (default: standard error)", "FILE"),
    Option("log_level", str, "debug, info, warning or error (default info)", "LEVEL"),
    Option("log_ips", _bool, "include client IP addresses in logs (off)", "BOOL"),
    Option("database", str,
           "PostgreSQL URL (postgresql://user@host:5432/db) for production storage "
           "(default: embedded SQLite in --data-dir)", "URL"),
    Option("residency", str, "data-residency label of this deployment, shown by /healthz "
           "(e.g. eu-west)", "LABEL"),
    Option("nats", str,
           "NATS URL (nats://host:4222; tls://… for TLS; several separated by commas) for "
           "fan-out across nodes sharing one PostgreSQL database (default: none, one node)",
           "URL"),
    Option("node_id", str, "this node's name in logs and /healthz (default: hostname-pid)",
           "NAME"),
    Option("turn_url", parse_turn_urls,
           "TURN server(s) for calls: turn:HOST:PORT (?transport=udp|tcp, turns: for TLS; "
           "several separated by commas); devices get short-lived credentials for them "
           "(needs --turn-secret-file)", "URL"),
    Option("turn_secret_file", Path,
           "file holding the secret shared with coturn (its static-auth-secret), one line",
           "FILE"),
    Option("sfu", _parse_sfu,
           "Janus SFU(s) for room calls: their WebSocket API URL (ws:// or wss://), several "
           "separated by commas, each optionally REGION=URL (needs --sfu-key-file); without "
           "it rooms of up to 4 call as a mesh", "[REGION=]URL"),
    Option("sfu_key_file", Path,
           "file holding the key shared with the SFUs (the VideoRoom admin_key), one line",
           "FILE"),
    Option("kt_log_key_file", Path,
           "key-transparency log key, one line (default: made at first start in --data-dir "
           "as kt-log.key)", "FILE"),
    Option("kt_vrf_key_file", Path,
           "key-transparency VRF key, one line (default: made at first start in --data-dir "
           "as kt-vrf.key)", "FILE"),
    Option("kt_origin", str,
           "name (checkpoint origin) a newly made log key gets (default HOSTNAME/sottovoce-kt)",
           "NAME"),
    Option("kt_witness", _parse_kt_witnesses,
           "an independent witness to push each checkpoint to and take its cosignature "
           "from: its URL and verifier key (repeatable)", "URL=VKEY", repeat=True),
    Option("no_local_witness", _bool,
           "do not run the co-located witness (on by default, so clients that require one "
           "cosignature work out of the box; it is no independent witness)", switch=True),
    Option("kt_cosign_interval_ms", int,
           "with no directory change, have the same checkpoint cosigned again this often "
           "(default 3600000)", "MS"),
    Option("kt_history_page", int,
           "versions of an account's history one kt.history page carries at most, fewer "
           f"if they would not fit a frame (default {KT_HISTORY_PAGE})", "N"),
    Option("nats_namespace", str,
           "NATS subject namespace; deployments sharing one NATS need distinct ones "
           "(default sottovoce)", "NAME"),
)
_BY_NAME = {o.name: o for o in OPTIONS}


def _coerce(opt: Option, value: Any, origin: str) -> Any:
    try:
        if opt.repeat and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = " ".join(value)
        if isinstance(value, str):
            return opt.parse(value)
        if opt.parse is Path:
            return Path(str(value))
        if opt.parse is _bool:
            if not isinstance(value, bool):
                raise ValueError("expected true/false")
            return value
        if opt.parse is float and isinstance(value, int):
            return float(value)
        expected = {int: int, float: float, str: str}.get(opt.parse)  # type: ignore[call-overload]
        if expected is None or isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError("wrong type")
        return value
    except (TypeError, ValueError) as exc:
        reason = str(exc)
        if reason.startswith(("invalid literal for int()", "could not convert string")):
            # Python's wording ("invalid literal for int() with base 10") helps no operator.
            kind = "a whole number" if opt.parse is int else "a number"
            reason = f"{value!r} is not {kind}"
        raise UsageError(f"{origin}: bad value for {opt.name}: {reason}") from None


def load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    table = raw.get("server", raw)
    if not isinstance(table, dict):
        raise UsageError(f"config file {path}: [server] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            continue  # another component's [section] (e.g. [client]) in a shared file
        name = key.replace("-", "_")
        opt = _BY_NAME.get(name)
        if opt is None:
            raise UsageError(f"config file {path}: unknown option {key!r}")
        out[name] = _coerce(opt, value, str(path))
    return out


def load_config(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Merge the four layers; ``flags`` holds only options given on the command line."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is not None:
        values.update(load_file(path))
    for opt in OPTIONS:
        if opt.env in env:
            values[opt.name] = _coerce(opt, env[opt.env], opt.env)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(_BY_NAME[name], value, _BY_NAME[name].flag)
    return ServerConfig(**values)


def replace(config: ServerConfig, **changes: Any) -> ServerConfig:
    return dataclasses.replace(config, **changes)


def option_names() -> Sequence[str]:
    return [o.name for o in OPTIONS]
