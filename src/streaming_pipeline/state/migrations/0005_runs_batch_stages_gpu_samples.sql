-- What the day report draws: one row per worker run of an archive (requeues and reruns each get
-- one), the start and end of each stage of each stream batch, GPU samples, and whether any window
-- of a member needed a fallback temperature.
CREATE TABLE IF NOT EXISTS archive_runs (
    id            bigserial PRIMARY KEY,
    archive       text NOT NULL REFERENCES archives (archive) ON DELETE CASCADE,
    day           date NOT NULL,
    host          text,
    pid           integer,
    slurm_job_id  text,
    restarts      integer NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    state         text NOT NULL DEFAULT 'running',
    error         text,
    audio_s       double precision
);
CREATE INDEX IF NOT EXISTS archive_runs_day ON archive_runs (day, started_at);
CREATE TABLE IF NOT EXISTS batch_stages (
    run_id      bigint NOT NULL REFERENCES archive_runs (id) ON DELETE CASCADE,
    batch       integer NOT NULL,
    stage       text NOT NULL CHECK (stage IN ('extract', 'convert', 'transcribe', 'upload')),
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    members     integer NOT NULL DEFAULT 0,
    audio_s     double precision NOT NULL DEFAULT 0,
    bytes_read  bigint,
    PRIMARY KEY (run_id, batch, stage)
);
CREATE TABLE IF NOT EXISTS gpu_samples (
    run_id     bigint NOT NULL REFERENCES archive_runs (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL,
    gpu        integer NOT NULL,
    busy       real NOT NULL,
    memory_mb  real NOT NULL
);
CREATE INDEX IF NOT EXISTS gpu_samples_run ON gpu_samples (run_id, at);
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS fallback boolean;
