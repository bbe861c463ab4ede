-- How each member's transcript was timed (none, segment or word: --timestamps) and which subtitle
-- files were written beside its FLAC and JSON ('srt,vtt'; NULL: none, e.g. no speech). A rerun's
-- reconcile checks those files on the destination before it marks the member done.
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS timestamps text;
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS subtitles text;
