"""Every size, count and time limit as a named constant, each with its reason.

Limits live here so that a reviewer can see them all at once and so that the
server, the client and the sans-IO cores agree on them.
"""

from __future__ import annotations

# --- codec -------------------------------------------------------------------

#: RFC 9420 §2.1.2: the variable-length integer has a 30-bit payload.
VARINT_MAX = (1 << 30) - 1
#: Largest single TLS-encoded structure we will decode; bounds memory per message. The
#: largest any caller needs is a 1:1 payload of MAX_PLAINTEXT_BYTES (1 MiB) plus its
#: header; network frames are far smaller (MAX_FRAME_BYTES).
MAX_DECODE_BYTES = 2 * 1024 * 1024
#: Vector items one decode may read in all. Each becomes a Python object, so this bounds
#: what nested empty vectors can cost (~4 MB, ~0.1 s); the largest legitimate structure,
#: a ratchet tree of MAX_ROOM_MEMBERS leaves, needs a few thousand (one per node, a few
#: per leaf).
MAX_DECODE_ITEMS = 1 << 16

# --- identity ----------------------------------------------------------------

#: Usernames are public aliases: short, printable, easy to read aloud.
USERNAME_MIN_LEN = 3
USERNAME_MAX_LEN = 32
#: Device ids are opaque ASCII tokens chosen by the device.
DEVICE_ID_MAX_LEN = 64
#: A device certificate is valid for at most this long; devices renew before expiry.
DEVICE_CERT_MAX_LIFETIME_MS = 2 * 365 * 24 * 3600 * 1000
#: Tolerated clock skew between devices when checking "not yet valid".
CLOCK_SKEW_MS = 5 * 60 * 1000
#: An account-deletion statement is signed just before it is sent; an older one
#: (e.g. lifted from a stolen device's disk) is refused.
ACCOUNT_DELETION_MAX_AGE_MS = 10 * 60 * 1000
#: Safety numbers: 60 digits, 12 groups of 5 (the Signal convention users know).
SAFETY_NUMBER_DIGITS = 60
#: Iterations of the safety-number fingerprint hash; slows brute-forcing collisions.
SAFETY_NUMBER_ITERATIONS = 5200
#: Random bytes in a printed recovery code: 128 bits, beyond any guessing.
RECOVERY_CODE_BYTES = 16
#: Links followed in an account's succession or recovery chain; bounds the resolver's
#: work on a flood of statements (an account rotates its key once per revocation).
SUCCESSION_MAX_CHAIN = 1024
#: Signed statements (certificates, revocations, successions) the server keeps per account;
#: recoveries signed by the recovery key are kept past it, so a thief who floods an
#: account with statements from a stolen key cannot lock the owner out.
MAX_ACCOUNT_STATEMENTS = 512
#: Statements in one upload (a succession, one certificate per surviving device, revocations).
MAX_STATEMENTS_PER_UPLOAD = 64
#: A device renews its own certificate when less than this is left of it (checked on every
#: connect), so a device in use never meets an expired certificate.
CERT_RENEW_BEFORE_MS = 30 * 24 * 3600 * 1000
#: A linking code (QR or short code) is good for this long; a closed or expired attempt
#: leaves nothing behind.
LINK_CODE_TTL_MS = 5 * 60 * 1000
#: The one-time secret in a linking QR code: 256 bits, beyond any guessing.
LINK_SECRET_BYTES = 32
#: Words both screens show when linking (11 bits each): a mismatch is easy to spot.
LINK_CONFIRMATION_WORDS = 4
#: Longest server URL a linking QR code carries (keeps the code scannable).
LINK_SERVER_URL_MAX_LEN = 512
#: One message through a linking mailbox (a handover part, a history chunk): one
#: ciphertext's worth, so a relayed frame stays well under MAX_FRAME_BYTES.
LINK_MESSAGE_MAX_BYTES = 160 * 1024
#: Messages one linking mailbox relays in all (the PAKE's three, the handover, the
#: history in chunks): past it the mailbox closes.
LINK_MAX_MESSAGES = 160
#: Messages a mailbox holds for a side that has not joined yet (the PAKE's first).
LINK_MAX_QUEUED = 4
#: Mailboxes one server node holds at once (each lives at most LINK_CODE_TTL_MS).
LINK_MAX_MAILBOXES = 4096

# --- pairwise ----------------------------------------------------------------

#: Plaintexts are padded up to the next bucket so ciphertext length leaks little.
PADDING_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
#: Above the largest bucket, pad to a multiple of this.
PADDING_LARGE_STEP = 65536
#: Largest 1:1 plaintext; larger content goes through attachments.
MAX_PLAINTEXT_BYTES = 1024 * 1024
#: One-time keys a device publishes per batch, and the stock below which it refills.
ONE_TIME_KEYS_BATCH = 50
ONE_TIME_KEYS_LOW_WATERMARK = 10
#: Message ids remembered per session to reject duplicates after vodozemac's own
#: ratchet has forgotten them (vodozemac keeps 40 skipped message keys per chain).
SEEN_MESSAGE_IDS_PER_SESSION = 2048

# --- mls ---------------------------------------------------------------------

#: RFC 9420 §7.8: node indices are uint32, so a tree holds at most 2^31 leaves.
MLS_MAX_LEAVES = 1 << 31
#: RFC 9420 §9: how far ahead of a sender's ratchet we derive to reach a generation;
#: bounds the work one forged or far-future SenderData can make us do.
MLS_MAX_FORWARD_RATCHET = 1000
#: Skipped (not yet used) keys kept per sender ratchet for out-of-order delivery;
#: bounds memory to 2 ratchets x this many keys per member.
MLS_MAX_SKIPPED_KEYS = 128
#: RFC 9420 §9: a ratchet generation is a uint32 in SenderData.
MLS_MAX_GENERATION = (1 << 32) - 1

# --- mls group state ---------------------------------------------------------

#: Past epochs whose application-message keys a member keeps for late messages
#: (RFC 9420 §14: delivery may reorder across a commit); fewer = more forward secrecy.
MLS_PAST_EPOCHS = 2
#: Epochs whose resumption_psk is kept for PSK proposals, reinit and branch (RFC 9420 §8.6
#: asks for an upper limit).
MLS_RESUMPTION_PSK_EPOCHS = 32
#: Proposals cached per epoch; bounds what a flood of proposals can make us hold.
MLS_MAX_PENDING_PROPOSALS = 1000
#: Default KeyPackage / leaf lifetime, and how far back not_before is set so that a
#: peer whose clock runs a little behind still accepts a fresh KeyPackage.
MLS_KEY_PACKAGE_LIFETIME_MS = 90 * 24 * 3600 * 1000
MLS_LIFETIME_SKEW_MS = 3600 * 1000

# --- delivery protocol (KSMP v3) ---------------------------------------------

#: Largest WebSocket frame either side accepts; bounds per-connection memory.
MAX_FRAME_BYTES = 256 * 1024
#: Files (server/blobs.py): the largest a client may upload (plaintext bytes), what one
#: account may have stored at once, and how long an upload is kept at the latest (it goes
#: sooner, once every device it is for has fetched it). Each is a server option.
MAX_FILE_SIZE = 100 * 1024 * 1024
FILE_QUOTA = 1024 * 1024 * 1024
FILE_TTL_MS = 7 * 24 * 3600 * 1000
#: Largest single ciphertext in an envelope (base64-decoded); big content goes as attachments.
MAX_CIPHERTEXT_BYTES = 160 * 1024
#: Ciphertexts one send may carry: the recipient's devices plus our own other devices.
MAX_SEND_DEVICES = 64
#: Client-chosen ids (messageId, idempotencyKey, conversationId): opaque, bounded.
MAX_ID_LEN = 128
#: Prekeys accepted per upload and stored per device.
MAX_PREKEYS_PER_UPLOAD = 100
MAX_PREKEYS_PER_DEVICE = 500
#: Accounts one account may block at the server (``sottovoce.block``).
MAX_BLOCKED_ACCOUNTS = 10_000
#: Frames replayed per resume batch before the server yields to other clients.
REPLAY_BATCH = 500
#: A server challenge must be answered within this window and only once.
AUTH_CHALLENGE_TTL_MS = 30_000
#: Unacked inbox frames are kept this long by default (server --retention-days).
DEFAULT_RETENTION_MS = 30 * 24 * 3600 * 1000
#: A disappearing message's expiresAtMs on a send: at most this far ahead (the longest
#: timer, a week) plus CLOCK_SKEW_MS, and no further than CLOCK_SKEW_MS in the past.
MAX_MESSAGE_EXPIRY_MS = 7 * 24 * 3600 * 1000
#: The disappearing-messages timers a chat can have, as the CLI names them, in seconds
#: (0: off); the longest is the week above.
TIMER_CHOICES: dict[str, int] = {
    "off": 0, "5s": 5, "1m": 60, "1h": 3600, "1d": 86_400, "1w": 604_800,
}
#: Default inbox quotas (server --inbox-*): what may wait unread in one device's inbox,
#: in all (a device offline for the whole retention in busy conversations stays under it)...
INBOX_MAX_MESSAGES = 20_000
INBOX_MAX_BYTES = 256 * 1024 * 1024
#: ...from one account its account has written to (half: no contact fills it alone)...
INBOX_CONTACT_MESSAGES = 10_000
INBOX_CONTACT_BYTES = 128 * 1024 * 1024
#: ...and from one account it has never written to: an eighth of the bytes (big frames
#: are how a stranger fills an inbox fast), half the frames (an honest first burst to a
#: recipient busy reading must not be refused: a refused send is resent later, out of order).
INBOX_STRANGER_MESSAGES = 5_000
INBOX_STRANGER_BYTES = 16 * 1024 * 1024
#: Keepalive: the server pings idle connections at this interval.
KEEPALIVE_INTERVAL_MS = 20_000
#: Frames read but held back while a connection's earlier async work runs; past
#: this the server stops reading that socket (bounds per-connection memory).
MAX_PENDING_FRAMES = 64
#: A TCP connection must finish the WebSocket handshake within this time.
OPEN_TIMEOUT_MS = 10_000
#: Handshake requests are split off the stream up to this size (a real one is < 1 KiB);
#: a larger one goes to websockets' own parser, which has its own line/header limits.
MAX_REQUEST_BYTES = 16 * 1024
#: After a close frame, the peer has this long to answer before the TCP close (twice).
CLOSE_TIMEOUT_MS = 2_000

# --- sframe ------------------------------------------------------------------

#: RFC 9605 §4.3: KID and CTR are carried in at most 8 bytes each.
SFRAME_MAX_KID = (1 << 64) - 1
SFRAME_MAX_COUNTER = (1 << 64) - 1
#: Default anti-replay window per KID, in counters (RFC 3711 §3.3.2 style); covers
#: reordering of a few seconds of video at 30-60 frames/s per track.
SFRAME_REPLAY_WINDOW = 128
#: Largest replay window accepted; the bitmap is an int of this many bits per KID.
SFRAME_MAX_REPLAY_WINDOW = 1 << 16
#: Default frames (of a newer epoch) after which old-epoch receive keys are dropped;
#: enough for in-flight frames of every track across an epoch change.
SFRAME_EPOCH_GRACE_FRAMES = 512

# --- room audit trail --------------------------------------------------------

#: Devices one audit entry names (one commit's adds or removes); larger changes are
#: split over several commits.
AUDIT_MAX_SUBJECTS = 128
#: Largest encoded audit entry: 128 subjects x 2 ids x (128 + 2) bytes plus at most
#: ~1 KiB of fixed fields (ids, a 256-byte key and signature) = 34,287 bytes. Typical
#: entries are ~300 bytes. The wire limit MAX_ROOM_AUDIT_ENTRY_BYTES is this value, so
#: the server accepts every entry a client can build.
AUDIT_MAX_ENTRY_BYTES = 36 * 1024
#: Largest signature public key (P-521 uncompressed is 133 bytes) and signature
#: (P-521 DER is at most 139 bytes); headroom, but bounded.
AUDIT_MAX_KEY_BYTES = 256
AUDIT_MAX_SIGNATURE_BYTES = 256

# --- client ------------------------------------------------------------------

#: Largest text a client sends in one message; bigger content goes as attachments
#: (and the fan-out frame must still fit MAX_FRAME_BYTES).
MAX_TEXT_BYTES = 16 * 1024
#: Frames (and acks) the client stores in one transaction before it acks them.
CLIENT_INBOX_BATCH = 500
#: Ephemeral messages kept in the in-memory ring buffer (never written anywhere).
EPHEMERAL_RING_SIZE = 200
#: Sends a client keeps unacknowledged on the wire (outbox flow control); well under
#: the server's per-device burst, so replaying a long outbox is never rate-limited.
OUTBOX_WINDOW = 512
#: Resends of one message after device_mismatch (with the devices the error names) before
#: it is marked failed; a second mismatch means the directory changed again meanwhile.
DEVICE_MISMATCH_RETRIES = 1

# --- client rooms ------------------------------------------------------------

#: One-time MLS KeyPackages a device uploads per batch (plus one last-resort one):
#: enough for a burst of invitations between two top-ups.
CLIENT_KEY_PACKAGE_BATCH = 50
#: Attempts of one commit against commit_conflict / stale state before giving up; a
#: member losing this many races in a row is better told than looping forever.
ROOM_COMMIT_RETRIES = 12
#: Attempts of one room message against stale_epoch (each waits for the new epoch).
ROOM_SEND_RETRIES = 6
#: Room frames buffered for a room we have not joined yet (its Welcome or our
#: external commit's reply is still on the way); more are dropped (room.sync refills).
ROOM_EARLY_FRAMES = 1000
#: A room's local name, and the name an invitation notice carries: a label for a status
#: line, not a description.
MAX_ROOM_NAME_BYTES = 200

# --- rooms: the MLS delivery service -----------------------------------------

#: One MLS KeyPackage (RFC 9420 §10) with a basic credential is well under 1 KiB;
#: 16 KiB leaves room for x509 chains without letting one upload hog memory.
MAX_KEY_PACKAGE_BYTES = 16 * 1024
#: KeyPackages accepted per upload and one-time KeyPackages stored per device.
MAX_KEY_PACKAGES_PER_UPLOAD = 100
MAX_KEY_PACKAGES_PER_DEVICE = 500
#: The owner is told (sottovoce.keypackages.low) when its one-time stock falls below this.
KEY_PACKAGES_LOW_WATERMARK = 10
#: Member devices per room: bounds fan-out work per message and the roster kept in memory.
MAX_ROOM_MEMBERS = 1000
#: The largest HPKE public key of any MLS suite we implement: X-Wing's (X25519 +
#: ML-KEM-768, crypto/xwing.py), against 32 bytes for X25519. Every tree node holds one.
MAX_MLS_KEM_PUBLIC_KEY_BYTES = 1216
#: What a ratchet-tree leaf holds besides its encryption key, at most: signature key
#: (≤ 133 bytes, P-521), a basic credential ``user/device`` (≤ 97), capabilities, lifetime,
#: leaf extensions and a signature (≤ 139). Generous, so no real leaf comes near it.
MAX_MLS_LEAF_OVERHEAD_BYTES = 1024
#: A parent node besides its key: a parent hash (≤ 64) and its varint headers; its
#: unmerged leaves are counted once for the whole tree (≤ ~10 ancestors per leaf, 4 bytes).
MAX_MLS_PARENT_OVERHEAD_BYTES = 128
MAX_MLS_UNMERGED_BYTES = MAX_ROOM_MEMBERS * 10 * 4
#: The largest ratchet tree of a room (RFC 9420 §12.4.3.3), from the room size cap and
#: the largest suite's keys: MAX_ROOM_MEMBERS leaves and one parent fewer. X-Wing at
#: 1,000 members needs ~2.6 MB of it; MAX_DECODE_BYTES (2 MiB) is too small for that.
MAX_RATCHET_TREE_BYTES = (
    MAX_ROOM_MEMBERS * (MAX_MLS_KEM_PUBLIC_KEY_BYTES + MAX_MLS_LEAF_OVERHEAD_BYTES)
    + (MAX_ROOM_MEMBERS - 1) * (MAX_MLS_KEM_PUBLIC_KEY_BYTES + MAX_MLS_PARENT_OVERHEAD_BYTES)
    + MAX_MLS_UNMERGED_BYTES
)
#: One new member's EncryptedGroupSecrets in a Welcome: a KeyPackageRef, the KEM output
#: (X-Wing: 1,120 bytes) and the sealed GroupSecrets (with a path secret and PSK ids).
MAX_MLS_WELCOME_SECRETS_BYTES = 2048
#: The one decode limit that is larger than MAX_DECODE_BYTES: a Welcome (which carries the
#: GroupInfo, the tree inside it, and a secrets entry per new member), a GroupInfo or a
#: ratchet tree handed to a join. The tree and the secrets are bounded above; 256 KiB is
#: for the GroupInfo's context and extensions. Only those three decodes take it; every
#: other decode (network frames, 1:1 payloads, commits) keeps MAX_DECODE_BYTES, and the
#: item budget MAX_DECODE_ITEMS stays the same for all.
MAX_GROUP_DECODE_BYTES = (
    MAX_RATCHET_TREE_BYTES + MAX_ROOM_MEMBERS * MAX_MLS_WELCOME_SECRETS_BYTES + 256 * 1024
)
#: A commit, a Welcome and a GroupInfo each fit one frame (MAX_FRAME_BYTES bounds their sum;
#: a GroupInfo carrying the ratchet tree of a very large room needs more and is refused).
MAX_ROOM_COMMIT_BYTES = 160 * 1024
MAX_ROOM_WELCOME_BYTES = 160 * 1024
MAX_ROOM_GROUP_INFO_BYTES = 160 * 1024
#: One audit entry holds ids, keys, a hash and a signature, never content: a few hundred
#: bytes, more with many subjects; the format's own bound (protocol/audit.py), so an entry
#: the client could build is never refused by size.
MAX_ROOM_AUDIT_ENTRY_BYTES = AUDIT_MAX_ENTRY_BYTES
#: Audit entries returned per sottovoce.room.audit reply.
ROOM_AUDIT_BATCH = 1000
#: Base64 bytes of audit entries in one reply, well under MAX_FRAME_BYTES (a reply with
#: 1,000 maximum-size entries would not fit in a frame); the reply then says "more".
ROOM_AUDIT_REPLY_BYTES = MAX_FRAME_BYTES // 2
#: Room frames per sottovoce.room.sync reply (and per replay read of one room).
ROOM_SYNC_BATCH = 500
#: Room join tokens: 22 chars = 128 bits of base64url at the least; clients send 43 (32 bytes).
ROOM_TOKEN_MIN_LEN = 22
ROOM_TOKEN_MAX_LEN = 128
#: Rooms listed by sottovoce.rooms.list (bounded so the reply fits one frame).
MAX_ROOMS_LISTED = 2000
#: A join request carries the requester's own KeyPackage with a basic credential (~400
#: bytes; ~2,650 in the hybrid X-Wing suite, whose init and leaf keys are 1,216 bytes
#: each), fanned out to every member: nothing bigger is needed, so nothing bigger goes.
MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES = 4 * 1024
#: Join requests one device may send (a burst, then one a minute): asking to join is rare.
JOIN_REQUESTS_PER_DEVICE_BURST = 3
JOIN_REQUESTS_PER_DEVICE_PER_S = 1 / 60
#: Join requests one room takes (a burst, then one every 10 s): bounds the notices fanned
#: out to its members whoever holds the token.
JOIN_REQUESTS_PER_ROOM_BURST = 30
JOIN_REQUESTS_PER_ROOM_PER_S = 1 / 10
#: Unanswered join requests a room holds (one per device; answered ones free their slot).
MAX_PENDING_JOIN_REQUESTS = 20
#: An unanswered join request stops counting as pending after this long.
JOIN_REQUEST_PENDING_MS = 24 * 3600 * 1000

# --- calls (1:1 signalling engine) ---------------------------------------------

#: Call ids and offer/answer nonces: 128 random bits, so neither collides nor is guessed.
CALL_ID_BYTES = 16
CALL_NONCE_BYTES = 16
#: A caller rings this long before the call counts as missed (what phone users expect).
CALL_RING_TIMEOUT_MS = 45_000
#: A callee device rings a little longer than the caller waits, so the caller's
#: cancel (and its durable missed-call record) normally arrives before the callee gives up.
CALL_RING_GRACE_MS = 5_000
#: From accept to media flowing (offer, answer, ICE, DTLS), and from a lost path to a
#: restarted one; past this the call has failed and both sides are told.
CALL_SETUP_TIMEOUT_MS = 20_000
CALL_RECONNECT_TIMEOUT_MS = 15_000
#: An SDP of three m-sections with a dozen candidates is ~6 KB; bounds one signal's memory.
MAX_CALL_SDP_BYTES = 32 * 1024
#: ICE candidates one trickle signal may carry, and the length of one candidate line.
MAX_CALL_CANDIDATES = 32
MAX_CALL_CANDIDATE_BYTES = 512
#: Callee devices rung at once; the same bound as the devices one send may address.
MAX_CALL_DEVICES = MAX_SEND_DEVICES
#: ICE restarts per call; each one is a new transport and a full DTLS handshake.
MAX_CALL_ICE_RESTARTS = 1000
#: Ended call ids remembered so a late or replayed signal is told apart from a new call.
CALL_RECENT_IDS = 64

# --- TURN (coturn use-auth-secret credentials) -----------------------------------

#: TURN credentials live at most 10 minutes: long enough to set up and restart a
#: call's transports (an allocation, once made, is refreshed by the client), short
#: enough that a leaked credential is soon useless.
TURN_CREDENTIAL_MAX_TTL_S = 600
#: Random bytes of the opaque id in a TURN username (no user or device name in it).
TURN_ID_BYTES = 12
#: TURN URLs one server hands out (UDP, TCP, TLS for a few relays).
TURN_MAX_URLS = 8
#: The secret shared with coturn: at least 128 bits.
TURN_SECRET_MIN_BYTES = 16
#: TURN credential requests per device: a call asks once per connection (an ICE
#: restart too), so a few a minute is plenty; more is a device minting relays.
TURN_REQUESTS_PER_MINUTE = 20
TURN_REQUESTS_BURST = 10
# --- key transparency ----------------------------------------------------------

#: Leaves a log may hold: tree sizes are uint64 on the wire (c2sp.org/tlog-checkpoint);
#: 2^48 directory changes is far beyond any deployment and keeps sizes exact in JSON.
KT_MAX_LOG_SIZE = 1 << 48
#: Signature lines read from one signed note; c2sp.org/signed-note asks verifiers to
#: accept at least 16 (a log signature plus witnesses).
KT_MAX_NOTE_SIGNATURES = 32
#: Largest signed note (checkpoint plus signatures) accepted; a real one is < 1 KiB.
KT_MAX_NOTE_BYTES = 16 * 1024
#: Largest key name on a signature line (an origin like "example.com/log42").
KT_MAX_KEY_NAME_BYTES = 256
#: A checkpoint whose newest cosignature is older than this is refused by default: a
#: server could otherwise keep showing one client an old, consistent view.
KT_DEFAULT_MAX_CHECKPOINT_AGE_MS = 24 * 3600 * 1000
#: Versions of one account kept in the map, and so walked by its monitor; each
#: directory change of an account (device added, revoked, succession) is one version.
KT_MAX_VERSIONS = 1 << 20
#: Versions one ``sottovoce.kt.history`` page carries at most (fewer when they would not
#: fit one frame): an account with a long history is monitored a page at a time.
KT_HISTORY_PAGE = 256
#: Devices one account-state value lists (the map commits to all of them).
KT_MAX_DEVICES = 64
#: Key-transparency requests (head, lookup, history) per device: each lookup costs the
#: server a VRF evaluation for an unknown name and a few dozen indexed reads.
KT_LOOKUPS_PER_MINUTE = 120
KT_LOOKUPS_BURST = 30
#: With no directory change, the same checkpoint is cosigned again this often, so its
#: newest cosignature stays well within what clients accept
#: (KT_DEFAULT_MAX_CHECKPOINT_AGE_MS).
KT_COSIGN_INTERVAL_MS = 3600 * 1000

# --- room calls (SFU, mesh, call MLS group, SFrame media) ------------------------

#: A call without an SFU is a full mesh: each device encodes once per peer, so four
#: (three uploads each) is what a laptop and a home uplink carry.
MESH_MAX_PARTICIPANTS = 4
#: Devices in one call through an SFU (the VideoRoom's publisher limit; each one is a
#: leaf of the call's MLS group and a set of receive keys at every member).
ROOM_CALL_MAX_PARTICIPANTS = 32
#: After an epoch change a receiver keeps the previous epoch's key of a sender's track
#: while the sender is still in the call, until that sender's first new-epoch frame of
#: the track, and never longer than this: a frame in flight is late after 2 s anyway.
CALL_EPOCH_GRACE_MS = 2_000
#: The member in line r (0 = the lowest leaf) commits pending joins and leaves once they
#: have waited r times this long, so one member commits and another takes over if it
#: has gone quiet, without two commits racing for every change.
CALL_COMMIT_STAGGER_MS = 3_000
#: Joins and leaves waiting for one commit (bounds the commit and the state a flood adds).
MAX_CALL_PENDING_CHANGES = 16
#: A recording starts only after every present participant said yes within this long.
CALL_RECORDING_CONSENT_MS = 20_000
#: Bytes of one room call signal (a commit with a path and a Welcome for several joiners
#: with the ratchet tree of a 32-member group fits well below this).
MAX_ROOM_CALL_SIGNAL_BYTES = 256 * 1024
#: The SFU publisher id a device announces, and Janus ids in general (the server derives
#: 32 hex characters).
MAX_SFU_ID_LEN = 64
#: SFUs one server may drive (each one is a Janus instance with its own WebSocket).
SFU_MAX_ENDPOINTS = 16
#: A grant lets one device join one call's SFU room for this long; once joined it stays
#: until it leaves, is kicked, or the call ends. Short, so a leaked grant is soon useless.
SFU_GRANT_TTL_MS = 60_000
#: The Janus API answers a request within this long or the SFU counts as down.
SFU_REQUEST_TIMEOUT_S = 5.0
#: A Janus session dies after 60 s without a request (its session_timeout): ping well inside.
SFU_KEEPALIVE_S = 25.0
#: One Janus API message (an SDP of three m-sections and its JSON envelope).
MAX_SFU_MESSAGE_BYTES = 64 * 1024
#: Encoded frames of a recording sealed together in one record at rest.
RECORDING_FRAMES_PER_CHUNK = 64
#: How often a connected device polls its own account's history in the transparency log
#: (besides once per connection): a device or key the owner did not add is seen within
#: this long while the device is online; 10 minutes costs one small request per device.
KT_MONITOR_INTERVAL_S = 600
#: Alerts a device keeps about its transparency log (split views, forks, foreign devices);
#: each one stays until acknowledged, so a server cannot flush the list with noise.
KT_MAX_ALERTS = 1000
#: A directory change is served before the log shows it: the server signs a checkpoint
#: per batch of changes and waits for its witnesses to cosign it. A lookup whose keys
#: are not (yet) in the log is retried after each of these pauses (4 s in all) before
#: it is refused; a witness round takes milliseconds on a LAN, about a second remote.
KT_CATCH_UP_PAUSES_S = (0.1, 0.3, 0.6, 1.0, 2.0)
