-- An archive whose tar stream did not reach its real end (a bad header, a stream cut inside a
-- member, data after the end-of-archive blocks) ends 'damaged': the members before the damage
-- are done, each member seen has its row. A resubmit tries it again (it may have been replaced).
ALTER TABLE archives DROP CONSTRAINT IF EXISTS archives_state_check;
ALTER TABLE archives ADD CONSTRAINT archives_state_check
    CHECK (state IN ('pending', 'running', 'interrupted', 'done', 'failed', 'damaged'));
CREATE OR REPLACE VIEW day_status AS
SELECT day,
       count(*) AS archives,
       count(*) FILTER (WHERE state = 'done') AS archives_done,
       count(*) FILTER (WHERE state = 'running' AND live) AS archives_running,
       count(*) FILTER (WHERE state IN ('failed', 'damaged')) AS archives_failed,
       count(*) FILTER (WHERE state IN ('pending', 'interrupted')
                        OR (state = 'running' AND NOT live)) AS archives_waiting,
       sum(done) AS members_done, sum(failed) AS members_failed, sum(rejected) AS members_rejected,
       sum(audio_hours) AS audio_hours,
       min(started_at) AS first_start, max(finished_at) AS last_finish
FROM archive_status GROUP BY day;
-- Members a worker was decoding when its process died (a decoder library's segfault, the OOM
-- killer): `in_flight` is set while a member is with the decoder and cleared once its transcript
-- is back (or the run ends in order); the next run counts each member still in flight in
-- `crashed_runs`. A member in flight when two runs died is failed and skipped.
CREATE TABLE IF NOT EXISTS member_crashes (
    archive      text NOT NULL REFERENCES archives (archive) ON DELETE CASCADE,
    member       text NOT NULL,
    in_flight    boolean NOT NULL DEFAULT false,
    crashed_runs integer NOT NULL DEFAULT 0,
    PRIMARY KEY (archive, member)
);
