CREATE TABLE IF NOT EXISTS archives (
    archive        text PRIMARY KEY,
    day            date NOT NULL,
    slot           text NOT NULL,
    path           text NOT NULL,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'failed')),
    members_seen   integer NOT NULL DEFAULT 0,
    bytes_total    bigint,
    bytes_read     bigint,
    host           text,
    pid            integer,
    slurm_job_id   text,
    started_at     timestamptz,
    finished_at    timestamptz,
    wall_s         double precision,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS archives_day ON archives (day, slot);
CREATE TABLE IF NOT EXISTS audio_files (
    id                   bigserial PRIMARY KEY,
    day                  date NOT NULL,
    slot                 text NOT NULL,
    archive              text NOT NULL REFERENCES archives (archive),
    member               text NOT NULL,
    status               text NOT NULL
                         CHECK (status IN ('uploading', 'done', 'failed', 'rejected')),
    size_bytes           bigint,
    sample_rate          integer,
    channels             integer,
    duration_s           double precision,
    transcript           text,
    language             text,
    language_probability double precision,
    remote_path          text,
    error                text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (archive, member)
);
CREATE INDEX IF NOT EXISTS audio_files_day_slot ON audio_files (day, slot);
CREATE INDEX IF NOT EXISTS audio_files_status ON audio_files (archive, status);
CREATE INDEX IF NOT EXISTS audio_files_created ON audio_files (created_at);
