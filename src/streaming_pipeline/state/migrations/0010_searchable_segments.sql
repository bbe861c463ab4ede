-- Searchable transcripts (issue 25): each member's segments with their times (and words with
-- theirs where the decoder timed words), written in the same fenced transaction as the member's
-- row, under a full-text index. `config` is the text-search configuration of the member's
-- language (state/search_text.py); `search_text` holds the character bigrams of text written
-- without spaces (Chinese, Japanese, ...) and is NULL otherwise. `day` and `language` repeat the
-- member's so that a search filters on them without a join.
CREATE TABLE IF NOT EXISTS segments (
    archive     text NOT NULL,
    member      text NOT NULL,
    seq         integer NOT NULL,
    day         date NOT NULL,
    language    text,
    config      regconfig NOT NULL,
    start_s     real NOT NULL,
    end_s       real NOT NULL,
    text        text NOT NULL,
    search_text text,
    words       jsonb,
    tsv         tsvector GENERATED ALWAYS AS (to_tsvector(config, coalesce(search_text, text))) STORED,
    PRIMARY KEY (archive, member, seq),
    FOREIGN KEY (archive, member) REFERENCES audio_files (archive, member) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS segments_tsv ON segments USING gin (tsv);
-- How many segments a member has in `segments`; NULL: none recorded yet (done before this
-- migration: `streaming-pipeline index DAY` fills them from the JSON on the destination).
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS searchable_segments integer;
