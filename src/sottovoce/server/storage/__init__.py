"""Storage adapters behind one interface (:mod:`.base`): SQLite now, PostgreSQL next."""
