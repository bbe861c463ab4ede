-- process-dataset: one row per (source, config, split, output) run; its checkpoint is the
-- last shard whose upload rsync confirmed, with the source iterator's state after that shard.
CREATE TABLE IF NOT EXISTS dataset_runs (
    run            text PRIMARY KEY,
    source         text NOT NULL,
    config_name    text,
    split          text NOT NULL,
    output         text NOT NULL,
    state          text NOT NULL DEFAULT 'running'
                   CHECK (state IN ('running', 'interrupted', 'done', 'failed')),
    rows_done      bigint NOT NULL DEFAULT 0,
    rows_written   bigint NOT NULL DEFAULT 0,
    rows_failed    bigint NOT NULL DEFAULT 0,
    shards_done    integer NOT NULL DEFAULT 0,
    last_id        text,
    host           text,
    pid            integer,
    slurm_job_id   text,
    started_at     timestamptz,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    error          text
);
CREATE TABLE IF NOT EXISTS dataset_shards (
    run          text NOT NULL REFERENCES dataset_runs (run),
    shard        integer NOT NULL,
    first_row    bigint NOT NULL,
    end_row      bigint NOT NULL,
    rows         integer NOT NULL,
    failed       integer NOT NULL,
    bytes        bigint NOT NULL,
    last_id      text,
    remote_path  text NOT NULL,
    source_state jsonb,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run, shard)
);
CREATE TABLE IF NOT EXISTS dataset_failures (
    run        text NOT NULL REFERENCES dataset_runs (run),
    row_index  bigint NOT NULL,
    id         text,
    error      text NOT NULL,
    PRIMARY KEY (run, row_index)
);
