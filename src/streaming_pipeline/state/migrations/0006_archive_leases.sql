-- Leases instead of session advisory locks: a worker owns an archive while lease_until is in the
-- future and renews it on a heartbeat. Each claim increments lease_token, and every write of a
-- worker checks that the token is still its own (fencing), so a worker that stalled past its
-- lease and was taken over writes nothing more. No session state: works through PgBouncer in
-- transaction mode.
ALTER TABLE archives ADD COLUMN IF NOT EXISTS lease_token bigint NOT NULL DEFAULT 0;
ALTER TABLE archives ADD COLUMN IF NOT EXISTS lease_until timestamptz;
ALTER TABLE archive_runs ADD COLUMN IF NOT EXISTS lease_token bigint;
-- A process-dataset run is held the same way (one process per output run).
ALTER TABLE dataset_runs ADD COLUMN IF NOT EXISTS lease_token bigint NOT NULL DEFAULT 0;
ALTER TABLE dataset_runs ADD COLUMN IF NOT EXISTS lease_until timestamptz;
CREATE INDEX IF NOT EXISTS archives_claimable ON archives (day, slot) WHERE state <> 'done';
DROP VIEW IF EXISTS day_status;
DROP VIEW IF EXISTS archive_status;
DROP FUNCTION IF EXISTS archive_locked(text);
DROP FUNCTION IF EXISTS archive_lock_key(text);
-- live: a worker holds an unexpired lease on the archive; its owner is slurm_job_id, host
-- and pid, until lease_until.
CREATE VIEW archive_status AS
SELECT a.day, a.slot, a.archive, a.state,
       coalesce(a.lease_until > now(), false) AS live,
       count(f.id) FILTER (WHERE f.status = 'done') AS done,
       count(f.id) FILTER (WHERE f.status = 'failed') AS failed,
       count(f.id) FILTER (WHERE f.status = 'rejected') AS rejected,
       count(f.id) FILTER (WHERE f.status = 'uploading') AS uploading,
       round((coalesce(sum(f.duration_s) FILTER (WHERE f.status = 'done'), 0) / 3600)::numeric, 3)
           AS audio_hours,
       CASE WHEN a.state = 'running' THEN extract(epoch FROM now() - a.started_at)
            ELSE a.wall_s END AS elapsed_s,
       a.members_seen, a.bytes_read, a.bytes_total, a.slurm_job_id, a.host, a.pid, a.restarts,
       a.started_at, a.finished_at, a.heartbeat_at, a.lease_until, a.lease_token,
       CASE WHEN a.lease_until > now() THEN extract(epoch FROM a.lease_until - now()) END
           AS lease_left_s,
       a.error
FROM archives a LEFT JOIN audio_files f USING (archive)
GROUP BY a.archive;
CREATE VIEW day_status AS
SELECT day,
       count(*) AS archives,
       count(*) FILTER (WHERE state = 'done') AS archives_done,
       count(*) FILTER (WHERE state = 'running' AND live) AS archives_running,
       count(*) FILTER (WHERE state = 'failed') AS archives_failed,
       count(*) FILTER (WHERE state IN ('pending', 'interrupted')
                        OR (state = 'running' AND NOT live)) AS archives_waiting,
       sum(done) AS members_done, sum(failed) AS members_failed, sum(rejected) AS members_rejected,
       sum(audio_hours) AS audio_hours,
       min(started_at) AS first_start, max(finished_at) AS last_finish
FROM archive_status GROUP BY day;
