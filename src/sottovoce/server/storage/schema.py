"""The database schema, version by version, for both engines (docs/operations.md).

Each :class:`Version` says once why it exists and holds its DDL for each engine:
the column types differ (BLOB/bytea, INTEGER/bigint), and so do storage details
(``WITHOUT ROWID`` tables on SQLite; identity columns, BRIN indexes and the
``sv_append_batch`` function on PostgreSQL). A database records how many
versions it has; at start-up each engine applies the ones after that, in one
transaction (``sqlite.migrate``, ``postgres.migrate``), and refuses a database
newer than this code. Never edit a released version: append a new one, with
both engines' DDL side by side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Version:
    #: Why this version exists.
    what: str
    #: Statements separated by ';' (so no ';' inside a comment).
    sqlite: str
    #: One script (the simple-query protocol runs several statements).
    postgres: str


# One group commit's writes in one statement (one round trip instead of six: on a
# busy event loop each round trip waits for a loop turn). Lock order: the
# conversations' counter rows in the order given, then the devices' rows sorted
# (FOR UPDATE under ORDER BY locks in that order). Sequences: a counter advanced
# by n for this batch hands out last-n+1 … last, in the ranks the caller gave.
# The two released versions share their start; each one's text is as released.
_APPEND_HEAD = """
    CREATE FUNCTION sv_append_batch(
        conv_ids text[], conv_counts bigint[], dev_ids bigint[], dev_counts bigint[],
        s_dev bigint[], s_key text[], s_conv text[], s_mid text[], s_ci int[], s_rank bigint[],
        i_dev bigint[], i_di int[], i_rank bigint[], i_ci int[], i_srank bigint[],
        i_pre text[], i_post text[], received bigint,{args}
        OUT conv_last bigint[], OUT dev_last bigint[]
    ) LANGUAGE plpgsql AS $fn$
    DECLARE
        n bigint;
    BEGIN
        WITH up AS (
            INSERT INTO conversations AS c(conversation_id, last_seq)
            SELECT * FROM unnest(conv_ids, conv_counts)
            ON CONFLICT (conversation_id) DO UPDATE SET last_seq = c.last_seq + excluded.last_seq
            RETURNING c.conversation_id, c.last_seq
        )
        SELECT array_agg(up.last_seq ORDER BY u.ord) INTO conv_last
        FROM up JOIN unnest(conv_ids) WITH ORDINALITY AS u(id, ord) ON u.id = up.conversation_id;
        PERFORM 1 FROM devices WHERE dev = ANY(dev_ids) ORDER BY dev FOR UPDATE;
        WITH up AS (
            UPDATE devices AS d SET last_inbox_seq = d.last_inbox_seq + u.cnt
            FROM unnest(dev_ids, dev_counts) AS u(id, cnt) WHERE d.dev = u.id
            RETURNING d.dev, d.last_inbox_seq
        )
        SELECT array_agg(up.last_inbox_seq ORDER BY up.dev) INTO dev_last FROM up;
        INSERT INTO sends(sender_dev, idem_key, conversation_id, message_id, server_seq,
                          received_at)
        SELECT u.sd, u.k, u.cv, u.m, conv_last[u.ci] - conv_counts[u.ci] + 1 + u.r, received
        FROM unnest(s_dev, s_key, s_conv, s_mid, s_ci, s_rank) AS u(sd, k, cv, m, ci, r)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n <> coalesce(cardinality(s_dev), 0) THEN
            RAISE EXCEPTION 'idempotency key already stored' USING ERRCODE = 'SV001';
        END IF;
"""
_APPEND_FUNCTION = _APPEND_HEAD.format(args="") + """\
        INSERT INTO inbox(dev, seq, received_at, envelope)
        SELECT u.dv, dev_last[u.di] - dev_counts[u.di] + 1 + u.r, received,
               u.pre || (conv_last[u.ci] - conv_counts[u.ci] + 1 + u.sr)::text || u.post
        FROM unnest(i_dev, i_di, i_rank, i_ci, i_srank, i_pre, i_post)
             AS u(dv, di, r, ci, sr, pre, post);
    END
    $fn$;
"""  # noqa: S608 -- constants only

# v4's sv_append_batch: as above, and each inbox row also names its sending device;
# then what waits per (recipient device, sending account) grows by the rows just
# inserted (exact byte lengths), and the senders are recorded as having written to
# the recipients. Usage rows of a device are only written under its counter row
# lock (or by single-statement deletes), so these upserts cannot deadlock.
_V4_ARGS = """ i_sender bigint[],
        w_user text[], w_peer text[],"""
_APPEND_FUNCTION_V4 = _APPEND_HEAD.format(args=_V4_ARGS) + """\
        WITH ins AS (
            INSERT INTO inbox(dev, seq, received_at, envelope, sender)
            SELECT u.dv, dev_last[u.di] - dev_counts[u.di] + 1 + u.r, received,
                   u.pre || (conv_last[u.ci] - conv_counts[u.ci] + 1 + u.sr)::text || u.post,
                   u.sd
            FROM unnest(i_dev, i_di, i_rank, i_ci, i_srank, i_pre, i_post, i_sender)
                 AS u(dv, di, r, ci, sr, pre, post, sd)
            RETURNING inbox.dev, inbox.sender, octet_length(inbox.envelope) AS size
        )
        INSERT INTO inbox_usage AS q(dev, sender, messages, bytes)
        SELECT ins.dev, d.user_id, count(*), sum(ins.size)
        FROM ins JOIN devices d ON d.dev = ins.sender
        GROUP BY ins.dev, d.user_id ORDER BY 1, 2
        ON CONFLICT (dev, sender) DO UPDATE
            SET messages = q.messages + excluded.messages, bytes = q.bytes + excluded.bytes;
        INSERT INTO correspondents(user_id, peer)
        SELECT * FROM unnest(w_user, w_peer) AS w(u, p) ORDER BY 1, 2
        ON CONFLICT DO NOTHING;
    END
    $fn$;
"""  # noqa: S608 -- constants only

# The disappearing-messages version of sv_append_batch: as v4's, and each inbox row
# also takes the send's expiry (0 in ``i_expires``: NULL, kept until read).
_V4_BODY = _APPEND_FUNCTION_V4[len(_APPEND_HEAD.format(args=_V4_ARGS)):]
_APPEND_FUNCTION_EXPIRY = _APPEND_HEAD.format(
    args=_V4_ARGS + "\n        i_expires bigint[],"
) + _V4_BODY.replace(
    "INSERT INTO inbox(dev, seq, received_at, envelope, sender)",
    "INSERT INTO inbox(dev, seq, received_at, envelope, sender, expires_at)",
).replace(
    "                   u.sd\n",
    "                   u.sd, nullif(u.ex, 0)\n",
).replace(
    "unnest(i_dev, i_di, i_rank, i_ci, i_srank, i_pre, i_post, i_sender)\n"
    "                 AS u(dv, di, r, ci, sr, pre, post, sd)",
    "unnest(i_dev, i_di, i_rank, i_ci, i_srank, i_pre, i_post, i_sender, i_expires)\n"
    "                 AS u(dv, di, r, ci, sr, pre, post, sd, ex)",
)


VERSIONS: tuple[Version, ...] = (
    Version(
        "accounts, devices, prekeys, 1:1 conversations and their idempotency records, inboxes",
        sqlite="""
    CREATE TABLE accounts(
        user_id TEXT PRIMARY KEY,
        account_key BLOB NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE devices(
        dev INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        certificate BLOB NOT NULL,
        revoked_at INTEGER,
        push_endpoint TEXT,
        last_inbox_seq INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        UNIQUE(user_id, device_id)
    );
    CREATE TABLE prekeys(
        dev INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        prekey BLOB NOT NULL,
        PRIMARY KEY(dev, key_id)
    ) WITHOUT ROWID;
    CREATE TABLE fallback_keys(
        dev INTEGER PRIMARY KEY,
        prekey BLOB NOT NULL
    );
    CREATE TABLE conversations(
        conversation_id TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Idempotency: (sender device, key) -> the original ack. Rowid order is
    -- arrival order, which expiry relies on.
    CREATE TABLE sends(
        id INTEGER PRIMARY KEY,
        sender_dev INTEGER NOT NULL,
        idem_key TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        server_seq INTEGER NOT NULL,
        received_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX sends_idem ON sends(sender_dev, idem_key);
    -- One row per recipient device (docs/architecture.md): an append-only table with a
    -- narrow index writes fastest, and rowid order is arrival order.
    CREATE TABLE inbox(
        id INTEGER PRIMARY KEY,
        dev INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        envelope TEXT NOT NULL
    );
    CREATE UNIQUE INDEX inbox_dev_seq ON inbox(dev, seq);
    """,
        postgres="""
    CREATE TABLE accounts(
        user_id text PRIMARY KEY,
        account_key bytea NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE TABLE devices(
        dev bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id text NOT NULL REFERENCES accounts(user_id),
        device_id text NOT NULL,
        certificate bytea NOT NULL,
        revoked_at bigint,
        push_endpoint text,
        -- The device's globalInboxSeq counter; its row lock orders inbox commits.
        last_inbox_seq bigint NOT NULL DEFAULT 0,
        created_at bigint NOT NULL,
        UNIQUE(user_id, device_id)
    );
    CREATE TABLE prekeys(
        dev bigint NOT NULL,
        key_id text NOT NULL,
        prekey bytea NOT NULL,
        PRIMARY KEY(dev, key_id)
    );
    CREATE TABLE fallback_keys(
        dev bigint PRIMARY KEY,
        prekey bytea NOT NULL
    );
    -- The serverSeq counter per conversation; its row lock serializes writers.
    CREATE TABLE conversations(
        conversation_id text PRIMARY KEY,
        last_seq bigint NOT NULL
    );
    -- Idempotency: (sender device, key) -> the original ack.
    CREATE TABLE sends(
        sender_dev bigint NOT NULL,
        idem_key text NOT NULL,
        conversation_id text NOT NULL,
        message_id text NOT NULL,
        server_seq bigint NOT NULL,
        received_at bigint NOT NULL,
        PRIMARY KEY(sender_dev, idem_key)
    );
    -- One row per recipient device (docs/architecture.md). received_at grows with insertion
    -- order, so a BRIN index finds the expired prefix at almost no write cost.
    CREATE TABLE inbox(
        dev bigint NOT NULL,
        seq bigint NOT NULL,
        received_at bigint NOT NULL,
        envelope text NOT NULL,
        PRIMARY KEY(dev, seq)
    );
    -- Ciphertext does not compress: do not spend CPU trying.
    ALTER TABLE inbox ALTER COLUMN envelope SET STORAGE EXTERNAL;
    CREATE INDEX inbox_received ON inbox USING brin(received_at);
    CREATE INDEX sends_received ON sends USING brin(received_at);
    """ + _APPEND_FUNCTION,
    ),
    Version(
        "rooms and KeyPackages",
        sqlite="""
    CREATE TABLE key_packages(
        id INTEGER PRIMARY KEY,
        dev INTEGER NOT NULL,
        key_package BLOB NOT NULL
    );
    CREATE INDEX key_packages_dev ON key_packages(dev, id);
    -- One row per device that ever uploaded KeyPackages, with its last-resort one.
    CREATE TABLE key_package_devices(
        dev INTEGER PRIMARY KEY,
        last_resort BLOB
    );
    -- token_hash is SHA-256 over a domain prefix and the token: never the token.
    CREATE TABLE rooms(
        room INTEGER PRIMARY KEY,
        room_id TEXT NOT NULL UNIQUE,
        epoch INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        group_info BLOB,
        token_hash BLOB,
        audit_count INTEGER NOT NULL DEFAULT 0,
        audit_head BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX rooms_token ON rooms(token_hash) WHERE token_hash IS NOT NULL;
    -- One read position per member device. until_seq is set when the device is
    -- removed: it still gets the messages up to the commit that removed it.
    CREATE TABLE room_members(
        room INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        joined_seq INTEGER NOT NULL,
        read_seq INTEGER NOT NULL,
        until_seq INTEGER,
        PRIMARY KEY(room, dev)
    ) WITHOUT ROWID;
    CREATE INDEX room_members_dev ON room_members(dev);
    -- One row per room message (docs/architecture.md): append-only, narrow index, rowid = arrival.
    CREATE TABLE room_messages(
        id INTEGER PRIMARY KEY,
        room INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        envelope TEXT NOT NULL
    );
    CREATE UNIQUE INDEX room_messages_seq ON room_messages(room, seq);
    -- The accepted commit of each epoch (epoch = the epoch it was made in).
    CREATE TABLE room_commits(
        room INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY(room, epoch)
    ) WITHOUT ROWID;
    CREATE TABLE room_audit(
        room INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        entry BLOB NOT NULL,
        PRIMARY KEY(room, idx)
    ) WITHOUT ROWID;
""",
        postgres="""
    CREATE TABLE key_packages(
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        dev bigint NOT NULL,
        key_package bytea NOT NULL
    );
    CREATE INDEX key_packages_dev ON key_packages(dev, id);
    -- One row per device that ever uploaded KeyPackages, with its last-resort one.
    CREATE TABLE key_package_devices(
        dev bigint PRIMARY KEY,
        last_resort bytea
    );
    -- token_hash is SHA-256 over a domain prefix and the token: never the token.
    -- The row is the room's lock: every room write takes it FOR UPDATE first.
    CREATE TABLE rooms(
        room bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        room_id text NOT NULL UNIQUE,
        epoch bigint NOT NULL,
        last_seq bigint NOT NULL,
        group_info bytea,
        token_hash bytea,
        audit_count bigint NOT NULL DEFAULT 0,
        audit_head bytea,
        created_at bigint NOT NULL
    );
    CREATE UNIQUE INDEX rooms_token ON rooms(token_hash) WHERE token_hash IS NOT NULL;
    -- One read position per member device; until_seq is set when the device is
    -- removed (it still gets the messages up to the commit that removed it).
    CREATE TABLE room_members(
        room bigint NOT NULL,
        dev bigint NOT NULL,
        joined_seq bigint NOT NULL,
        read_seq bigint NOT NULL,
        until_seq bigint,
        PRIMARY KEY(room, dev)
    );
    CREATE INDEX room_members_dev ON room_members(dev);
    -- One row per room message (docs/architecture.md), not one per recipient.
    CREATE TABLE room_messages(
        room bigint NOT NULL,
        seq bigint NOT NULL,
        received_at bigint NOT NULL,
        envelope text NOT NULL,
        PRIMARY KEY(room, seq)
    );
    ALTER TABLE room_messages ALTER COLUMN envelope SET STORAGE EXTERNAL;
    CREATE INDEX room_messages_received ON room_messages USING brin(received_at);
    -- The accepted commit of each epoch (epoch = the epoch it was made in).
    CREATE TABLE room_commits(
        room bigint NOT NULL,
        epoch bigint NOT NULL,
        seq bigint NOT NULL,
        PRIMARY KEY(room, epoch)
    );
    CREATE TABLE room_audit(
        room bigint NOT NULL,
        idx bigint NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY(room, idx)
    );
""",
    ),
    Version(
        "account deletion: a deleted account keeps its row as a tombstone (deleted_at set),"
        " so its username can never be registered again",
        sqlite="""
    ALTER TABLE accounts ADD COLUMN deleted_at INTEGER
    """,
        postgres="""
    ALTER TABLE accounts ADD COLUMN deleted_at bigint;
    """,
    ),
    Version(
        "pending room join requests (one per room and device)",
        sqlite="""
    CREATE TABLE room_join_requests(
        room INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        requested_at INTEGER NOT NULL,
        PRIMARY KEY(room, dev)
    ) WITHOUT ROWID
""",
        postgres="""
    CREATE TABLE room_join_requests(
        room bigint NOT NULL,
        dev bigint NOT NULL,
        requested_at bigint NOT NULL,
        PRIMARY KEY(room, dev)
    );
""",
    ),
    Version(
        "inbox quotas (storage/quota.py): each inbox row names its sending device (0: unknown,"
        " as for rows stored before); per recipient device, what waits from each sending"
        " account; which accounts have written to which (PostgreSQL: sv_append_batch keeps"
        " those two up to date)",
        sqlite="""
    ALTER TABLE inbox ADD COLUMN sender INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE inbox_usage(
        dev INTEGER NOT NULL,
        sender TEXT NOT NULL,
        messages INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        PRIMARY KEY(dev, sender)
    ) WITHOUT ROWID;
    INSERT INTO inbox_usage(dev, sender, messages, bytes)
        SELECT dev, '', count(*), sum(length(envelope)) FROM inbox GROUP BY dev;
    CREATE TABLE correspondents(
        user_id TEXT NOT NULL,
        peer TEXT NOT NULL,
        PRIMARY KEY(user_id, peer)
    ) WITHOUT ROWID
    """,
        postgres="""
    ALTER TABLE inbox ADD COLUMN sender bigint NOT NULL DEFAULT 0;
    CREATE TABLE inbox_usage(
        dev bigint NOT NULL,
        sender text NOT NULL,
        messages bigint NOT NULL,
        bytes bigint NOT NULL,
        PRIMARY KEY(dev, sender)
    );
    INSERT INTO inbox_usage(dev, sender, messages, bytes)
        SELECT dev, '', count(*), sum(octet_length(envelope)) FROM inbox GROUP BY dev;
    CREATE TABLE correspondents(
        user_id text NOT NULL,
        peer text NOT NULL,
        PRIMARY KEY(user_id, peer)
    );
    DROP FUNCTION sv_append_batch;
    """ + _APPEND_FUNCTION_V4,  # noqa: S608 -- constants only
    ),
    Version(
        "room settings the server acts on (docs/calls.md): the data-residency region of a"
        " room's calls (NULL: any SFU) and whether its opt-in recorder device may join them",
        sqlite="""
    ALTER TABLE rooms ADD COLUMN residency TEXT;
    ALTER TABLE rooms ADD COLUMN recorder INTEGER NOT NULL DEFAULT 0
    """,
        postgres="""
    ALTER TABLE rooms ADD COLUMN residency text;
    ALTER TABLE rooms ADD COLUMN recorder boolean NOT NULL DEFAULT false;
    """,
    ),
    Version(
        "account-key succession and recovery (identity/succession.py): each account keeps"
        " the keys it was registered with (genesis_key, recovery_key; NULL for accounts"
        " registered before) and every valid statement it was given; account_key and the"
        " devices are what resolve() makes of them, forked while a fork is unsettled",
        sqlite="""
    ALTER TABLE accounts ADD COLUMN genesis_key BLOB;
    ALTER TABLE accounts ADD COLUMN recovery_key BLOB;
    ALTER TABLE accounts ADD COLUMN forked INTEGER NOT NULL DEFAULT 0;
    UPDATE accounts SET genesis_key = account_key;
    CREATE TABLE account_statements(
        user_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY(user_id, kind, body)
    ) WITHOUT ROWID;
    INSERT INTO account_statements(user_id, kind, body, received_at)
        SELECT user_id, 'certificate', certificate, created_at FROM devices
        WHERE revoked_at IS NULL
    """,
        postgres="""
    ALTER TABLE accounts ADD COLUMN genesis_key bytea;
    ALTER TABLE accounts ADD COLUMN recovery_key bytea;
    ALTER TABLE accounts ADD COLUMN forked bigint NOT NULL DEFAULT 0;
    UPDATE accounts SET genesis_key = account_key;
    CREATE TABLE account_statements(
        user_id text NOT NULL,
        kind text NOT NULL,
        body bytea NOT NULL,
        received_at bigint NOT NULL,
        PRIMARY KEY(user_id, kind, body)
    );
    INSERT INTO account_statements(user_id, kind, body, received_at)
        SELECT user_id, 'certificate', certificate, created_at FROM devices
        WHERE revoked_at IS NULL;
    """,
    ),
    Version(
        "key transparency (storage/kt.py): the log's leaves and nodes, every account"
        " version, the per-account version trees, the map's nodes versioned by the epoch"
        " that wrote them, VRF labels, checkpoints and cosignatures; every table"
        " append-only",
        sqlite="""
    CREATE TABLE kt_leaves(idx INTEGER PRIMARY KEY, leaf BLOB NOT NULL);
    CREATE TABLE kt_log_nodes(node INTEGER PRIMARY KEY, hash BLOB NOT NULL);
    CREATE TABLE kt_versions(
        map_key BLOB NOT NULL,
        version INTEGER NOT NULL,
        epoch INTEGER NOT NULL,
        state BLOB NOT NULL,
        opening BLOB NOT NULL,
        commitment BLOB NOT NULL,
        PRIMARY KEY(map_key, version)
    ) WITHOUT ROWID;
    CREATE TABLE kt_version_nodes(
        map_key BLOB NOT NULL,
        node INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY(map_key, node)
    ) WITHOUT ROWID;
    CREATE TABLE kt_map_nodes(
        node BLOB NOT NULL,
        epoch INTEGER NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY(node, epoch)
    ) WITHOUT ROWID;
    CREATE TABLE kt_labels(
        username TEXT PRIMARY KEY,
        label BLOB NOT NULL,
        proof BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE kt_checkpoints(
        size INTEGER PRIMARY KEY,
        signed_note BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE kt_cosignatures(
        size INTEGER NOT NULL,
        witness TEXT NOT NULL,
        ts INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY(size, witness, ts)
    ) WITHOUT ROWID
    """,
        postgres="""
    CREATE TABLE kt_leaves(idx bigint PRIMARY KEY, leaf bytea NOT NULL);
    CREATE TABLE kt_log_nodes(node bigint PRIMARY KEY, hash bytea NOT NULL);
    CREATE TABLE kt_versions(
        map_key bytea NOT NULL,
        version bigint NOT NULL,
        epoch bigint NOT NULL,
        state bytea NOT NULL,
        opening bytea NOT NULL,
        commitment bytea NOT NULL,
        PRIMARY KEY(map_key, version)
    );
    CREATE TABLE kt_version_nodes(
        map_key bytea NOT NULL,
        node bigint NOT NULL,
        hash bytea NOT NULL,
        PRIMARY KEY(map_key, node)
    );
    CREATE TABLE kt_map_nodes(
        node bytea NOT NULL,
        epoch bigint NOT NULL,
        record bytea NOT NULL,
        PRIMARY KEY(node, epoch)
    );
    CREATE TABLE kt_labels(
        username text PRIMARY KEY,
        label bytea NOT NULL,
        proof bytea NOT NULL
    );
    CREATE TABLE kt_checkpoints(
        size bigint PRIMARY KEY,
        signed_note bytea NOT NULL,
        created_at bigint NOT NULL
    );
    CREATE TABLE kt_cosignatures(
        size bigint NOT NULL,
        witness text NOT NULL,
        ts bigint NOT NULL,
        line text NOT NULL,
        PRIMARY KEY(size, witness, ts)
    );
    """,
    ),
    Version(
        "file blobs (storage/blobs.py): who uploaded each one, its sealed size and chunk"
        " count, whether it is complete, when it expires, and the devices it is for (each"
        " marked once it fetched it); the chunks themselves are files in the data directory",
        sqlite="""
    CREATE TABLE blobs(
        blob_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        owner_device TEXT NOT NULL,
        size INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        complete INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX blobs_owner ON blobs(owner, expires_at);
    CREATE INDEX blobs_expiry ON blobs(expires_at);
    CREATE TABLE blob_recipients(
        blob_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        fetched INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(blob_id, user_id, device_id)
    ) WITHOUT ROWID
    """,
        postgres="""
    CREATE TABLE blobs(
        blob_id text PRIMARY KEY,
        owner text NOT NULL,
        owner_device text NOT NULL,
        size bigint NOT NULL,
        chunks bigint NOT NULL,
        complete bigint NOT NULL DEFAULT 0,
        created_at bigint NOT NULL,
        expires_at bigint NOT NULL
    );
    CREATE INDEX blobs_owner ON blobs(owner, expires_at);
    CREATE INDEX blobs_expiry ON blobs(expires_at);
    CREATE TABLE blob_recipients(
        blob_id text NOT NULL,
        user_id text NOT NULL,
        device_id text NOT NULL,
        fetched bigint NOT NULL DEFAULT 0,
        PRIMARY KEY(blob_id, user_id, device_id)
    );
    """,
    ),
    Version(
        "disappearing messages (docs/protocol.md): an inbox row may carry the expiry its"
        " sender gave (NULL: none); replay never returns an expired row and the expiry"
        " loop deletes them (PostgreSQL: sv_append_batch takes the expiries)",
        sqlite="""
    ALTER TABLE inbox ADD COLUMN expires_at INTEGER;
    CREATE INDEX inbox_expires ON inbox(expires_at) WHERE expires_at IS NOT NULL
    """,
        postgres="""
    ALTER TABLE inbox ADD COLUMN expires_at bigint;
    CREATE INDEX inbox_expires ON inbox(expires_at) WHERE expires_at IS NOT NULL;
    DROP FUNCTION sv_append_batch;
    """ + _APPEND_FUNCTION_EXPIRY,
    ),
    Version(
        "key transparency: directory changes waiting for the log (storage/kt.py), each"
        " queued in its change's transaction and folded into the log and map in batches",
        sqlite="""
    CREATE TABLE kt_pending(
        seq INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        kind INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        state BLOB NOT NULL,
        inherit_rk INTEGER NOT NULL
    )
    """,
        postgres="""
    CREATE TABLE kt_pending(
        seq bigserial PRIMARY KEY,
        username text NOT NULL,
        kind integer NOT NULL,
        ts bigint NOT NULL,
        state bytea NOT NULL,
        inherit_rk integer NOT NULL
    );
    """,
    ),
    Version(
        "blocks: the accounts each account blocked; delivery stores nothing from a"
        " blocked sender for the blocker's devices (docs/threat-model.md §Blocking)",
        sqlite="""
    CREATE TABLE blocks(
        user_id TEXT NOT NULL,
        blocked TEXT NOT NULL,
        PRIMARY KEY(user_id, blocked)
    ) WITHOUT ROWID
    """,
        postgres="""
    CREATE TABLE blocks(
        user_id text NOT NULL,
        blocked text NOT NULL,
        PRIMARY KEY(user_id, blocked)
    );
    """,
    ),
    Version(
        "disappearing room messages: a room message may carry the expiry its sender gave"
        " (room_messages.expires_at, NULL: none); room.sync and replay never return an"
        " expired row and the expiry loop deletes them",
        sqlite="""
    ALTER TABLE room_messages ADD COLUMN expires_at INTEGER;
    CREATE INDEX room_messages_expires ON room_messages(expires_at)
        WHERE expires_at IS NOT NULL
    """,
        postgres="""
    ALTER TABLE room_messages ADD COLUMN expires_at bigint;
    CREATE INDEX room_messages_expires ON room_messages(expires_at)
        WHERE expires_at IS NOT NULL;
    """,
    ),
    Version(
        "discovery: each account's discovery mode where it is not the default (1 public:"
        " found by prefix search; 2 strict: only with a friend verification code), and the"
        " static one-time friend verification codes, each only as an scrypt hash with its"
        " own salt, deleted when used, and the hashed capabilities a strict account's devices"
        " granted (storage/discovery.py, server/discovery.py)",
        sqlite="""
    CREATE TABLE discovery(
        user_id TEXT PRIMARY KEY,
        mode INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE fvc_static(
        user_id TEXT NOT NULL,
        slot INTEGER NOT NULL,
        salt BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY(user_id, slot)
    ) WITHOUT ROWID;
    CREATE TABLE discovery_grants(
        user_id TEXT NOT NULL,
        grant_hash BLOB NOT NULL,
        PRIMARY KEY(user_id, grant_hash)
    ) WITHOUT ROWID
    """,
        postgres="""
    CREATE TABLE discovery(
        user_id text PRIMARY KEY,
        mode integer NOT NULL
    );
    CREATE TABLE fvc_static(
        user_id text NOT NULL,
        slot integer NOT NULL,
        salt bytea NOT NULL,
        hash bytea NOT NULL,
        PRIMARY KEY(user_id, slot)
    );
    CREATE TABLE discovery_grants(
        user_id text NOT NULL,
        grant_hash bytea NOT NULL,
        PRIMARY KEY(user_id, grant_hash)
    );
    """,
    ),
    Version(
        "KeyPackages per MLS cipher suite: key_packages.suite (the RFC 9420 code point; 1"
        " for every row stored before suites were named) and each device's last-resort"
        " KeyPackage per suite in key_package_last_resorts, where the one key_package_devices"
        " held moves as suite 1 (key_package_devices keeps one row per device that uploads);"
        " a claim takes a KeyPackage of the suite it names (storage/keypackages.py)",
        sqlite="""
    ALTER TABLE key_packages ADD COLUMN suite INTEGER NOT NULL DEFAULT 1;
    DROP INDEX key_packages_dev;
    CREATE INDEX key_packages_dev ON key_packages(dev, suite, id);
    CREATE TABLE key_package_last_resorts(
        dev INTEGER NOT NULL,
        suite INTEGER NOT NULL,
        last_resort BLOB NOT NULL,
        PRIMARY KEY(dev, suite)
    ) WITHOUT ROWID;
    INSERT INTO key_package_last_resorts(dev, suite, last_resort)
        SELECT dev, 1, last_resort FROM key_package_devices WHERE last_resort IS NOT NULL;
    ALTER TABLE key_package_devices DROP COLUMN last_resort
    """,
        postgres="""
    ALTER TABLE key_packages ADD COLUMN suite integer NOT NULL DEFAULT 1;
    DROP INDEX key_packages_dev;
    CREATE INDEX key_packages_dev ON key_packages(dev, suite, id);
    CREATE TABLE key_package_last_resorts(
        dev bigint NOT NULL,
        suite integer NOT NULL,
        last_resort bytea NOT NULL,
        PRIMARY KEY(dev, suite)
    );
    INSERT INTO key_package_last_resorts(dev, suite, last_resort)
        SELECT dev, 1, last_resort FROM key_package_devices WHERE last_resort IS NOT NULL;
    ALTER TABLE key_package_devices DROP COLUMN last_resort;
    """,
    ),
    Version(
        "contact requests to a strict account wait for its devices: each TOTP request"
        " with the time the server received it (the owner's device checks the code"
        " against that time), taken by the first of its devices to connect, at most a"
        " week and 200 per account (storage/discovery.py, server/discovery.py)",
        sqlite="""
    CREATE TABLE contact_requests(
        user_id TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        requester TEXT NOT NULL,
        proof BLOB NOT NULL,
        PRIMARY KEY(user_id, received_ms, requester)
    ) WITHOUT ROWID
    """,
        postgres="""
    CREATE TABLE contact_requests(
        user_id text NOT NULL,
        received_ms bigint NOT NULL,
        requester text NOT NULL,
        proof bytea NOT NULL,
        PRIMARY KEY(user_id, received_ms, requester)
    );
    """,
    ),
)
SQLITE_MIGRATIONS = tuple(v.sqlite for v in VERSIONS)
POSTGRES_MIGRATIONS = tuple(v.postgres for v in VERSIONS)
