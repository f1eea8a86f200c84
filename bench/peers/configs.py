"""Configurations of the peer XMPP servers for the side-by-side benchmark.

Both servers are set up the same way: one virtual host ``localhost`` and a room
service ``conference.localhost``, client port on 127.0.0.1 only, no TLS, plain
SASL allowed, in-band registration open, rate limits/shapers off, no
server-to-server or HTTP listeners. Variant ``plain`` stores nothing per message;
variant ``mam`` archives every 1:1 message (XEP-0313) in SQLite.
"""

from __future__ import annotations

from pathlib import Path

VARIANTS = ("plain", "mam")


def _check(variant: str, port: int) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if not 1024 < port < 65536:
        raise ValueError(f"port {port} out of range")


def _lua(s: str | Path) -> str:
    text = str(s)
    if any(c in text for c in "\"\\\n"):
        raise ValueError(f"unsafe path for a Lua string: {text!r}")
    return f'"{text}"'


def prosody_config(workdir: Path, variant: str, port: int) -> str:
    """prosody.cfg.lua for Prosody 0.12; its files live in ``workdir``."""
    _check(variant, port)
    modules = ["roster", "saslauth", "disco", "ping", "register"]
    if variant == "mam":
        modules.append("mam")
    lines = [
        f"-- sottovoce side-by-side benchmark: Prosody, variant {variant}",
        f"pidfile = {_lua(workdir / 'prosody.pid')}",
        f"data_path = {_lua(workdir / 'data')}",
        "daemonize = false",
        "run_as_root = true",
        'interfaces = { "127.0.0.1" }',
        'local_interfaces = { "127.0.0.1" }',
        f"c2s_ports = {{ {port} }}",
        "s2s_ports = { }",
        "component_ports = { }",
        "http_ports = { }",
        "https_ports = { }",
        "c2s_require_encryption = false",
        "s2s_require_encryption = false",
        "allow_unencrypted_plain_auth = true",
        'authentication = "internal_plain"',
        "allow_registration = true",
        "min_seconds_between_registrations = 0",
        f"log = {{ warn = {_lua(workdir / 'prosody.log')} }}",
        "modules_enabled = { " + " ".join(f'"{m}";' for m in modules) + " }",
        'modules_disabled = { "s2s"; "limits"; "tls"; "offline"; "c2s_limits" }',
    ]
    if variant == "mam":
        lines += [
            'storage = { archive = "sql" }',
            f'sql = {{ driver = "SQLite3", database = {_lua(workdir / "archive.sqlite")} }}',
            "default_archive_policy = true",
            'archive_expires_after = "1d"',
        ]
    lines += [
        'VirtualHost "localhost"',
        'Component "conference.localhost" "muc"',
        "    restrict_room_creation = false",
        "",
    ]
    return "\n".join(lines)


def ejabberd_config(workdir: Path, variant: str, port: int) -> str:
    """ejabberd.yml for ejabberd 23.01; its files live in ``workdir``."""
    _check(variant, port)
    head = [
        f"# sottovoce side-by-side benchmark: ejabberd, variant {variant}",
        "hosts: [localhost]",
        "loglevel: warning",
        "registration_timeout: infinity",
        "max_fsm_queue: 1000000",
    ]
    if variant == "mam":
        head += ["sql_type: sqlite", f'sql_database: "{workdir / "archive.db"}"']
    body = f"""listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 1048576
    shaper: none
    access: c2s
    starttls: false
    starttls_required: false
access_rules:
  c2s: {{allow: all}}
  register: {{allow: all}}
  local: {{allow: all}}
shaper_rules:
  c2s_shaper: none
  max_user_sessions: 10000
  max_user_offline_messages: 100000
auth_method: internal
auth_password_format: plain
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_register:
    access: register
    ip_access: all
    welcome_message: {{}}
  mod_muc:
    host: "conference.localhost"
    access: all
    access_create: all
    access_persistent: all
    access_admin: none
    max_users: 1000
    max_user_conferences: 1000
    min_message_interval: 0
    min_presence_interval: 0
    max_users_presence: 1000
    default_room_options: {{mam: false}}
"""
    if variant == "mam":
        body += """  mod_mam:
    db_type: sql
    default: always
    assume_mam_usage: false
"""
    return "\n".join(head) + "\n" + body


def ejabberdctl_config(variant: str) -> str:
    """ejabberdctl.cfg: a node name of its own, Erlang distribution on loopback only."""
    _check(variant, 5222)
    return (f"ERLANG_NODE=svpeers_{variant}@localhost\n"
            "INET_DIST_INTERFACE=127.0.0.1\n"
            "ERL_EPMD_ADDRESS=127.0.0.1\n")
