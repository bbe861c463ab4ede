-- The audio library that read a member's source (soundfile or pyav) was `decoder`, the word the
-- speech decoder's kind (batched or per-member, in `provenance`) also used: it is `audio_reader`.
ALTER TABLE audio_files RENAME COLUMN decoder TO audio_reader;
