"""The database's roles as docs/getting-started.md creates them: `init-db` runs once as the
owner; the workers' role has only SELECT, INSERT, UPDATE and DELETE (no DDL) and runs a day; the
read-only role reads `status` and `search` and can change nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from streaming_pipeline.cli import main

from ..conftest import DAY, make_day, query, worker_options

# What the page tells a site to grant, run here as the owner.
WORKER_GRANTS = """
    GRANT CONNECT ON DATABASE {db} TO {role};
    GRANT USAGE ON SCHEMA public TO {role};
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
"""
READER_GRANTS = """
    GRANT CONNECT ON DATABASE {db} TO {role};
    GRANT USAGE ON SCHEMA public TO {role};
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
"""


@pytest.fixture
def roles(pg_dsn: str):
    names = {kind: f"{kind}_{uuid.uuid4().hex[:8]}" for kind in ("worker", "reader")}
    db = pg_dsn.rsplit("dbname=", 1)[1].split()[0]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for role in names.values():
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'role-pw'")
    yield {kind: f"{pg_dsn} user={role} password=role-pw" for kind, role in names.items()}, names, db
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for role in names.values():
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


@pytest.mark.slow
def test_workers_need_no_ddl_and_readers_change_nothing(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, roles, capsys
) -> None:
    dsns, names, db = roles
    assert main(["init-db", "--dsn", pg_dsn]) == 0  # as the owner, once
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(WORKER_GRANTS.format(db=db, role=names["worker"]))
        conn.execute(READER_GRANTS.format(db=db, role=names["reader"]))
    with psycopg.connect(dsns["worker"]) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("CREATE TABLE t (x int)")  # the role really has no DDL rights

    make_day(tmp_path, ["08_00"], members=2)
    options = worker_options(tmp_path, dsns["worker"], tiny_model)
    rc = main(["process-day", DAY, "--executor", "local", "--input-root", str(tmp_path / "input"),
               "--log-dir", str(tmp_path / "logs"), *options])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    done = query(pg_dsn, "SELECT count(*) AS n FROM audio_files WHERE status = 'done'")[0]["n"]
    assert done == 2

    capsys.readouterr()
    assert main(["status", DAY, "--dsn", dsns["reader"]]) == 0
    assert "1 archives (1 done)" in capsys.readouterr().out
    with psycopg.connect(dsns["reader"]) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE archives SET state = 'failed'")
