-- A worker stopped by a signal (time limit, preemption) leaves its archive 'interrupted'.
ALTER TABLE archives DROP CONSTRAINT IF EXISTS archives_state_check;
ALTER TABLE archives ADD CONSTRAINT archives_state_check
    CHECK (state IN ('pending', 'running', 'interrupted', 'done', 'failed'));
ALTER TABLE archives ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
ALTER TABLE archives ADD COLUMN IF NOT EXISTS restarts integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS days (
    day              date PRIMARY KEY,
    state            text NOT NULL CHECK (state IN ('submitted', 'done', 'incomplete')),
    archives         integer NOT NULL DEFAULT 0,
    submitted        integer NOT NULL DEFAULT 0,
    executor         text,
    array_job_id     text,
    finalize_job_id  text,
    submitted_at     timestamptz,
    finalized_at     timestamptz,
    summary          jsonb
);
-- The key a worker holds (pg_advisory_lock) while it processes an archive.
CREATE OR REPLACE FUNCTION archive_lock_key(archive text) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('streaming-pipeline:' || archive, 0) $$;
-- Whether a live session holds that key; a dead worker's session (and lock) is gone.
CREATE OR REPLACE FUNCTION archive_locked(archive text) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = ((archive_lock_key(archive) >> 32) & 4294967295)::oid
          AND l.objid = (archive_lock_key(archive) & 4294967295)::oid)
$$;
CREATE OR REPLACE VIEW archive_status AS
SELECT a.day, a.slot, a.archive, a.state,
       archive_locked(a.archive) AS live,
       count(f.id) FILTER (WHERE f.status = 'done') AS done,
       count(f.id) FILTER (WHERE f.status = 'failed') AS failed,
       count(f.id) FILTER (WHERE f.status = 'rejected') AS rejected,
       count(f.id) FILTER (WHERE f.status = 'uploading') AS uploading,
       round((coalesce(sum(f.duration_s) FILTER (WHERE f.status = 'done'), 0) / 3600)::numeric, 3)
           AS audio_hours,
       CASE WHEN a.state = 'running' THEN extract(epoch FROM now() - a.started_at)
            ELSE a.wall_s END AS elapsed_s,
       a.members_seen, a.bytes_read, a.bytes_total, a.slurm_job_id, a.host, a.restarts,
       a.started_at, a.finished_at, a.heartbeat_at, a.error
FROM archives a LEFT JOIN audio_files f USING (archive)
GROUP BY a.archive;
CREATE OR REPLACE VIEW day_status AS
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
