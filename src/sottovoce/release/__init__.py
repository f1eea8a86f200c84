"""The release kit: signed source manifests (minisign), their verification, and
the reproducible build behind ``scripts/release`` (docs/operations.md §Releases)."""
