"""The blindness kit's search (audit_kit/needles.py, keys.py, sources.py, report.py).

The search must find a secret however it was encoded and wherever it sits in
a larger blob (base64 at all three alignments, hex in both cases), across
chunk boundaries of large files, in SQLite rows and gzip'd logs; it must not
match random data; and the key extraction must return the real private keys.
"""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import sqlite3
from pathlib import Path

import pytest
import vodozemac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sottovoce.audit_kit.keys import PickleError, key_secrets, open_pickle, private_fields
from sottovoce.audit_kit.needles import Scanner, base64_needles, dedupe, needles_for
from sottovoce.audit_kit.report import FAIL, INCOMPLETE, PASS, Report
from sottovoce.audit_kit.sources import (
    Finding,
    Results,
    dsn_schemas,
    expand_paths,
    redact_dsn,
    scan_file,
    scan_sqlite_tables,
)
from sottovoce.pairwise.account import PICKLE_KEY
from sottovoce.secret import Secret

CANARY = b"sottovoce-canary unit " + secrets.token_hex(16).encode()


def _scanner(secret: bytes = CANARY, kind: str = "canary") -> Scanner:
    return Scanner(needles_for(secret, label="unit canary", kind=kind))


def _encodings(blob: bytes) -> dict[str, bytes]:
    return {
        "raw": blob,
        "hex": blob.hex().encode(),
        "HEX": blob.hex().upper().encode(),
        "base64": base64.b64encode(blob),
        "base64url": base64.urlsafe_b64encode(blob),
        "base64 in JSON": json.dumps({"x": base64.b64encode(blob).decode()}).encode(),
        "base64 without padding": base64.b64encode(blob).rstrip(b"="),
    }


@pytest.mark.parametrize("prefix", [0, 1, 2, 3, 4, 5, 7, 100])
@pytest.mark.parametrize("suffix", [0, 1, 2, 5])
def test_every_encoding_is_found_at_every_alignment(prefix: int, suffix: int) -> None:
    blob = secrets.token_bytes(prefix) + CANARY + secrets.token_bytes(suffix)
    scanner = _scanner()
    for name, encoded in _encodings(blob).items():
        assert scanner.scan(encoded), f"{name} with {prefix} bytes before was missed"


@pytest.mark.parametrize("length", [12, 16, 22, 23, 24, 40, 200])
def test_indexed_and_plain_search_agree_with_a_naive_search(length: int) -> None:
    """Short needles use bytes.find, long ones the block index: both find everything."""
    secrets_ = [secrets.token_bytes(length) for _ in range(3)]
    needles = [n for i, x in enumerate(secrets_) for n in needles_for(x, label=str(i), kind="key")]
    parts = [secrets.token_bytes(secrets.randbelow(40))]
    for needle in needles:
        parts += [needle.pattern, secrets.token_bytes(secrets.randbelow(40))]
    blob = b"".join(parts) + needles[0].pattern  # one needle twice
    naive = sorted(
        (blob.find(n.pattern, i), n.label, n.encoding)
        for n in needles
        for i in range(len(blob))
        if blob.startswith(n.pattern, i) and blob.find(n.pattern, i) == i
    )
    got = sorted((h.offset, h.needle.label, h.needle.encoding) for h in Scanner(needles).scan(blob))
    assert got == naive


def test_urlsafe_alphabet_is_searched_when_it_differs() -> None:
    # A secret whose base64 contains '+' or '/' at every alignment.
    secret = bytes([0xFB, 0xFF, 0xBF]) * 8
    scanner = _scanner(secret, "key")
    for prefix in range(3):
        blob = bytes(prefix) + secret + b"tail"
        hits = scanner.scan(base64.urlsafe_b64encode(blob))
        assert {h.needle.encoding for h in hits} == {f"base64url+{prefix}"}
        hits = scanner.scan(base64.b64encode(blob))
        assert {h.needle.encoding for h in hits} == {f"base64+{prefix}"}


def test_base64_runs_are_exact() -> None:
    """The run for alignment s is the largest substring independent of the neighbours."""
    secret = secrets.token_bytes(20)
    for name, run in base64_needles(secret):
        shift = int(name.rsplit("+", 1)[1])
        encode = base64.urlsafe_b64encode if name.startswith("base64url") else base64.b64encode
        for _ in range(20):
            blob = secrets.token_bytes(3 * secrets.randbelow(4) + shift) + secret
            blob += secrets.token_bytes(secrets.randbelow(4))
            assert run in encode(blob)
        # Not over-trimmed: 20 bytes carry 160 bits; at most 2 characters are lost.
        assert len(run) >= 160 // 6 - 2


def test_offsets_point_at_the_secret() -> None:
    for prefix in (0, 1, 17, 4096):
        blob = secrets.token_bytes(prefix) + CANARY + b"\n"
        hits = _scanner().scan(blob)
        assert [(h.needle.encoding, h.offset) for h in hits] == [("raw", prefix)]
        hits = _scanner().scan(blob.hex().encode())
        assert [(h.needle.encoding, h.offset) for h in hits] == [("hex", 2 * prefix)]


def test_every_occurrence_is_reported() -> None:
    blob = CANARY + b"...." + CANARY + b"." + CANARY
    assert [h.offset for h in _scanner().scan(blob)] == [0, len(CANARY) + 4, 2 * len(CANARY) + 5]


@pytest.mark.parametrize("chunk", [1, 7, 31, 64, 1000])
def test_a_needle_across_chunk_boundaries_is_found_once(chunk: int) -> None:
    blob = secrets.token_bytes(333) + CANARY + secrets.token_bytes(50) + CANARY.hex().encode()
    chunks = [blob[i : i + chunk] for i in range(0, len(blob), chunk)]
    hits = list(_scanner().scan_chunks(chunks))
    assert [(h.needle.encoding, h.offset) for h in hits] == [
        ("raw", 333),
        ("hex", 333 + len(CANARY) + 50),
    ]


def test_no_false_positive_on_random_data() -> None:
    needles = []
    for i in range(50):
        needles += needles_for(secrets.token_bytes(32), label=f"key {i}", kind="key")
        needles += needles_for(secrets.token_hex(24).encode(), label=f"canary {i}", kind="canary")
    scanner = Scanner(needles)
    noise = secrets.token_bytes(1 << 20)
    for encoded in (noise, noise.hex().encode(), base64.b64encode(noise)):
        assert scanner.scan(encoded) == []


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError):
        needles_for(b"short", label="x", kind="canary")


def test_needles_never_repr_the_secret() -> None:
    for needle in needles_for(CANARY, label="unit canary", kind="canary"):
        assert CANARY.decode() not in repr(needle)
        assert CANARY.decode() not in needle.preview
    key = secrets.token_bytes(32)
    for needle in needles_for(key, label="k", kind="key"):
        assert needle.preview == key[:2].hex() + "…"


def test_dedupe_keeps_one_hit_per_secret_and_offset() -> None:
    text = b"plain ascii with no plus or slash"  # base64 and base64url coincide
    scanner = Scanner(needles_for(text, label="t", kind="canary"))
    blob = base64.b64encode(text)
    assert len(dedupe(scanner.scan(blob))) == 1


# --- key material --------------------------------------------------------------------


def test_olm_account_pickle_yields_the_real_private_keys() -> None:
    account = vodozemac.Account()
    account.generate_one_time_keys(3)
    account.generate_fallback_key()  # type: ignore[attr-defined]
    fields = dict(private_fields(open_pickle(account.pickle(PICKLE_KEY).encode())))
    dh = X25519PrivateKey.from_private_bytes(fields["diffie_hellman_key"])
    assert dh.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == (
        account.curve25519_key.to_bytes()
    )
    ed = Ed25519PrivateKey.from_private_bytes(fields["signing_key.Normal"])
    ed_pub = base64.b64encode(ed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert ed_pub.decode().rstrip("=") == account.ed25519_key.to_base64()
    otks = {p: v for p, v in fields.items() if ".private_keys." in p}
    assert len(otks) == 3
    publics = {k.to_bytes() for k in account.one_time_keys.values()}
    for secret in otks.values():
        pub = X25519PrivateKey.from_private_bytes(secret).public_key()
        assert pub.public_bytes(Encoding.Raw, PublicFormat.Raw) in publics
    assert any(p.startswith("fallback_keys") for p in fields)
    # Public keys are not searched for (the server may hold them).
    assert account.curve25519_key.to_bytes() not in fields.values()


def test_session_pickle_yields_ratchet_secrets_not_peer_keys() -> None:
    alice, bob = vodozemac.Account(), vodozemac.Account()
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    session = alice.create_outbound_session(bob.curve25519_key, otk)
    prekey = session.encrypt(b"hello").to_pre_key()
    assert prekey is not None
    bob_session, _ = bob.create_inbound_session(alice.curve25519_key, prekey)
    session.decrypt(bob_session.encrypt(b"hi"))
    public = {bob.curve25519_key.to_bytes(), otk.to_bytes(), alice.curve25519_key.to_bytes()}
    # Bob's sending ratchet is active (his own ratchet key is private) ...
    fields = dict(private_fields(open_pickle(bob_session.pickle(PICKLE_KEY).encode())))
    assert {p.split(".")[-1] for p in fields} == {"root_key", "ratchet_key", "key"}
    assert "sending_ratchet.active_ratchet.ratchet_key" in fields
    assert any(p.startswith("receiving_chains") for p in fields)
    assert not public & set(fields.values())
    # ... Alice's is inactive: its ratchet key is Bob's public one and is left out.
    fields = dict(private_fields(open_pickle(session.pickle(PICKLE_KEY).encode())))
    assert set(fields) == {
        "sending_ratchet.root_key.key",
        "receiving_chains.inner.0.hkdf_ratchet.key",
    }
    assert not public & set(fields.values())


def test_key_secrets_labels_and_reports_unreadable_pickles() -> None:
    account = vodozemac.Account()
    material = [
        ("device signing key", Secret(secrets.token_bytes(32))),
        ("olm account", Secret(account.pickle(PICKLE_KEY).encode())),
        ("olm session broken", Secret(b"bm90IGEgcGlja2xl")),
    ]
    keys, failed = key_secrets("alice/d1", material)
    labels = [k.label for k in keys]
    assert "alice/d1 device signing key" in labels
    assert "alice/d1 olm account olm curve25519 identity key" in labels
    assert failed and failed[0].startswith("alice/d1 olm session broken")
    with pytest.raises(PickleError):
        open_pickle(account.pickle(bytes([1]) * 32).encode())  # wrong pickle key: MAC fails


# --- sources -------------------------------------------------------------------------


def test_sqlite_rows_are_located_by_table_column_and_rowid(tmp_path: Path) -> None:
    db_path = tmp_path / "db.sqlite3"
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE inbox (id INTEGER PRIMARY KEY, body BLOB, note TEXT)")
    db.executemany(
        "INSERT INTO inbox (body, note) VALUES (?, ?)",
        [(secrets.token_bytes(40), "fine") for _ in range(30)],
    )
    db.execute(
        "INSERT INTO inbox (id, body, note) VALUES (77, ?, ?)",
        (secrets.token_bytes(8), "x" + base64.b64encode(b"ab" + CANARY).decode()),
    )
    db.commit()
    results = Results()
    files = expand_paths([db_path])
    assert {f.name for f in files} >= {"db.sqlite3", "db.sqlite3-wal"}
    for f in files:
        scan_file(f, _scanner(), results)
    scan_sqlite_tables(db_path, _scanner(), results)
    db.close()
    wheres = [f.where for f in results.findings]
    # The base64 run starts 3 characters into the encoding of b"ab" + CANARY.
    assert "table inbox, column note, rowid 77, byte 4" in wheres
    assert any(w.startswith("offset ") for w in wheres)  # the raw file scan found it too
    assert results.scanned[-1].tables == {"inbox": 31}
    assert results.problems == []


def test_logs_report_line_numbers_and_gzip_is_read(tmp_path: Path) -> None:
    lines = [json.dumps({"event": "send", "n": i}) for i in range(1000)]
    lines[712] = json.dumps({"event": "oops", "body": CANARY.hex()})
    text = ("\n".join(lines) + "\n").encode()
    plain, packed = tmp_path / "server.log", tmp_path / "server.log.1.gz"
    plain.write_bytes(text)
    packed.write_bytes(gzip.compress(text))
    results = Results()
    for path in (plain, packed):
        scan_file(path, _scanner(), results, kind="log")
    assert [(f.source, f.where.split(",")[0], f.encoding) for f in results.findings] == [
        (str(plain), "line 713", "hex"),
        (str(packed), "line 713", "hex"),
    ]
    assert results.scanned[1].bytes == len(text)  # decompressed size


def test_dsn_helpers() -> None:
    assert redact_dsn("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    assert dsn_schemas("postgresql://u@h/db?search_path=sv_a,public") == ["sv_a", "public"]
    assert dsn_schemas("postgresql://u@h/db") is None


# --- verdict -------------------------------------------------------------------------


def _report(**kw: object) -> Report:
    return Report(server="ws://x", canaries=["1:1 live"], keys=3, usernames=["u1"], **kw)  # type: ignore[arg-type]


def test_verdicts_and_exit_codes() -> None:
    finding = Finding(label="1:1 live", kind="canary", encoding="base64+1", preview="sottovoce-…",
                      source="/d/server.log", where="line 3, offset 99")
    assert (_report().verdict, _report().exit_code) == (PASS, 0)
    incomplete = _report(problems=["no push payload arrived"])
    assert (incomplete.verdict, incomplete.exit_code) == (INCOMPLETE, 1)
    failed = _report(findings=[finding], problems=["x"])
    assert (failed.verdict, failed.exit_code) == (FAIL, 1)
    text = failed.render()
    assert "FAIL" in text and "/d/server.log, line 3, offset 99" in text and "base64+1" in text
    assert json.loads(failed.to_json_text())["findings"][0]["where"] == "line 3, offset 99"


def test_scanning_a_closed_sqlite_database_writes_nothing_beside_it(tmp_path: Path) -> None:
    db_path = tmp_path / "db.sqlite3"
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute("INSERT INTO t VALUES (?)", (CANARY.hex(),))
    db.commit()
    db.close()  # the last connection checkpoints and removes -wal and -shm
    before = sorted(p.name for p in tmp_path.iterdir())
    results = Results()
    for f in expand_paths([db_path]):
        scan_file(f, _scanner(), results)
    scan_sqlite_tables(db_path, _scanner(), results)
    assert sorted(p.name for p in tmp_path.iterdir()) == before == ["db.sqlite3"]
    assert [f.where for f in results.findings][-1] == "table t, column x, rowid 1, byte 0"
