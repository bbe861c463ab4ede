"""process-dataset's runs, their shards (checkpoints) and failed rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from ..errors import ConfigError, RunBusy, StoreError
from .db import Table, one
from .records import DatasetResume, DatasetRun, DatasetTotals, Holder, Owner, ShardCheckpoint, ShardRow


class DatasetTable(Table):
    """`dataset_runs`, `dataset_shards`, `dataset_failures`."""

    def start(
        self,
        spec: DatasetRun,
        *,
        owner: Owner,
        resume: bool,
        lease_s: float = 120.0,
        may_take: Callable[[Holder], bool] = lambda holder: False,
    ) -> DatasetResume:
        """Claim the run's row (its lease: one process per run) and return where to continue
        (nothing done for a new run). RunBusy while another live process holds it.

        A run that has uploaded shards continues only with `resume`: starting it over silently
        would write its first shards again next to what a reader may already use.
        """

        run = spec.run

        def start(cur: psycopg.Cursor[Any]) -> DatasetResume:
            cur.execute(
                """
                INSERT INTO dataset_runs (run, source, config_name, split, output)
                VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run) DO NOTHING
                """,
                (run, spec.source, spec.config_name, spec.split, spec.output),
            )
            cur.execute(
                "SELECT *, lease_until > now() AS leased FROM dataset_runs WHERE run = %s FOR UPDATE", (run,)
            )
            row = one(cur)
            holder = Holder.of(row)
            if row["leased"] and not may_take(holder):
                raise RunBusy(f"{run} is being processed by {holder.describe()}; not starting a second one")
            if row["shards_done"] > 0 and not resume:
                raise _RunExists(row["shards_done"], row["rows_done"], row["state"])
            cur.execute(
                "SELECT source_state FROM dataset_shards WHERE run = %s AND shard = %s",
                (run, row["shards_done"] - 1),
            )
            shard = cur.fetchone()
            token = _take_run(cur, run, owner, lease_s)
            return DatasetResume(
                rows_done=row["rows_done"],
                shards_done=row["shards_done"],
                last_id=row["last_id"],
                source_state=shard["source_state"] if shard else None,
                state=row["state"],
                lease_token=token,
            )

        try:
            return self._db.transaction(start, "start dataset run")
        except _RunExists as exists:
            raise ConfigError(
                f"{run} already has {exists.shards} uploaded shards ({exists.rows} source rows, "
                f"state {exists.state}): pass --resume to continue it, or --output-name to start a new one"
            ) from None

    def record_shard(self, run: str, shard: ShardCheckpoint) -> None:
        """Checkpoint an uploaded shard, its failed rows and the run's totals in one transaction.

        Shards are recorded in order: a shard whose predecessor is not recorded is refused, so the
        checkpoint never skips rows.
        """
        from psycopg.types.json import Jsonb

        def record(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(
                """
                UPDATE dataset_runs SET rows_done = %s, shards_done = %s + 1, last_id = %s,
                       rows_written = rows_written + %s, rows_failed = rows_failed + %s, updated_at = now()
                WHERE run = %s AND shards_done = %s
                """,
                (
                    shard.end_row,
                    shard.shard,
                    shard.last_id,
                    shard.rows,
                    len(shard.failures),
                    run,
                    shard.shard,
                ),
            )
            if cur.rowcount != 1:
                raise StoreError(f"shard {shard.shard} of {run} is out of order; not recorded")
            cur.execute(
                """
                INSERT INTO dataset_shards (run, shard, first_row, end_row, rows, failed, bytes, last_id,
                                            remote_path, source_state)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (
                    run, shard.shard, shard.first_row, shard.end_row, shard.rows, len(shard.failures),
                    shard.bytes, shard.last_id, shard.remote_path,
                    None if shard.source_state is None else Jsonb(shard.source_state),
                ),
            )  # fmt: skip
            if shard.failures:
                cur.executemany(
                    "INSERT INTO dataset_failures (run, row_index, id, error) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (run, row_index) DO UPDATE SET id = EXCLUDED.id, error = EXCLUDED.error",
                    [(run, *failure) for failure in shard.failures],
                )

        self._db.transaction(record, "record shard", fenced=True)

    def shards(self, run: str) -> list[ShardRow]:
        rows = self._db.query(
            "SELECT shard, rows, bytes, remote_path FROM dataset_shards WHERE run = %s ORDER BY shard", (run,)
        )
        return [ShardRow(r["shard"], r["rows"], r["bytes"], r["remote_path"]) for r in rows]

    def finish(self, run: str, *, state: str, error: str | None) -> DatasetTotals:
        sql = """
            UPDATE dataset_runs SET state = %s, error = %s, finished_at = now(), updated_at = now()
            WHERE run = %s RETURNING *
        """

        def finish(cur: psycopg.Cursor[Any]) -> DatasetTotals:
            cur.execute(sql, (state, error, run))
            row = one(cur)
            return DatasetTotals(
                row["rows_done"], row["rows_written"], row["rows_failed"], row["shards_done"]
            )

        return self._db.transaction(finish, "finish dataset run", fenced=True)


class _RunExists(Exception):
    def __init__(self, shards: int, rows: int, state: str) -> None:
        super().__init__()
        self.shards, self.rows, self.state = shards, rows, state


def _take_run(cur: psycopg.Cursor[Any], run: str, owner: Owner, lease_s: float) -> int:
    """The run's row, locked by the caller, taken by `owner`: its new lease token."""
    cur.execute(
        """
        UPDATE dataset_runs SET state = 'running', host = %s, pid = %s, slurm_job_id = %s,
               started_at = now(), finished_at = NULL, error = NULL, updated_at = now(),
               lease_token = lease_token + 1, lease_until = now() + make_interval(secs => %s)
        WHERE run = %s RETURNING lease_token
        """,
        (owner.host, owner.pid, owner.slurm_job_id, lease_s, run),
    )
    return int(one(cur)["lease_token"])
