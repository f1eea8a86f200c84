"""Key transparency, the sans-I/O core (docs/architecture.md §Planned): the append-only
log (RFC 9162 hashing), the map of every account version, ECVRF labels (RFC 9381),
C2SP signed-note checkpoints and cosignatures, the client's verifier and monitor,
and the witness. The server's log writer, clients and witnesses all import it."""
