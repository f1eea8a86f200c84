#!/bin/sh
# Online backup of a sottovoce server's SQLite database (docs/single-server.md).
#
#   sottovoce-backup.sh [DATA_DIR] [BACKUP_DIR] [KEEP_DAYS]
#       defaults: /var/lib/sottovoce /var/backups/sottovoce 14
#
# Run it as the server's user, while the server runs. VACUUM INTO writes one
# consistent snapshot taken in a single read transaction; in WAL mode that reader
# does not block the server's writer. The copy is then checked with PRAGMA
# integrity_check, and backups older than KEEP_DAYS are deleted. Never copy
# sottovoce.sqlite3 itself while the server runs: committed transactions may
# still be only in its -wal file. Prints the path of the new backup.
set -eu
data_dir=${1:-/var/lib/sottovoce}
backup_dir=${2:-/var/backups/sottovoce}
keep_days=${3:-14}
db="$data_dir/sottovoce.sqlite3"
if [ ! -f "$db" ]; then
    echo "sottovoce-backup: no database at $db" >&2
    exit 1
fi
case "$backup_dir" in
    *"'"*) echo "sottovoce-backup: the backup directory must not contain a quote" >&2; exit 2 ;;
esac
umask 077
mkdir -p "$backup_dir"
out="$backup_dir/sottovoce-$(date -u +%Y%m%dT%H%M%SZ).sqlite3"
# Wait up to 10 s for a lock rather than fail while a checkpoint runs.
sqlite3 -cmd ".timeout 10000" "$db" "VACUUM INTO '$out'"
check=$(sqlite3 "$out" "PRAGMA integrity_check")
if [ "$check" != ok ]; then
    echo "sottovoce-backup: $out fails integrity_check: $check" >&2
    exit 1
fi
find "$backup_dir" -name 'sottovoce-*.sqlite3' -type f -mtime +"$keep_days" -delete
echo "$out"
