"""Progress in PostgreSQL: the store, the archive lock, schema migrations, the embedded server."""
