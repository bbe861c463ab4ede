-- Which library decoded each member (soundfile or pyav); the whole escaped name of a rejected
-- member whose key had to be cut or made unique (a duplicate).
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS decoder text;
ALTER TABLE audio_files ADD COLUMN IF NOT EXISTS full_name text;
