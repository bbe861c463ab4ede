-- What made each member's current transcript (issue 24): the model as named, its provenance
-- (model identity, decoder and options, device, versions; stages/asr/provenance.py) and the key that
-- says whether two transcripts were made the same way. `retranscribe` replaces a done member's
-- transcript in place and keeps the one it replaced in `transcript_history`.
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS model text;
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS provenance jsonb;
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS transcript_key text;
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS transcribed_at timestamptz;
CREATE INDEX IF NOT EXISTS audio_files_day_transcript_key ON audio_files (day, transcript_key)
    WHERE status = 'done';
CREATE TABLE IF NOT EXISTS transcript_history (
    id                   bigserial PRIMARY KEY,
    archive              text NOT NULL,
    member               text NOT NULL,
    transcript           text,
    language             text,
    language_probability double precision,
    model                text,
    provenance           jsonb,
    transcript_key       text,
    transcribed_at       timestamptz,
    replaced_at          timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (archive, member) REFERENCES audio_files (archive, member) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS transcript_history_member ON transcript_history (archive, member);
