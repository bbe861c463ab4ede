-- Who spoke when (stages/speakers): each segment's speaker within its member (S1, S2, ... in order
-- of first appearance; NULL where speakers were not attributed), and each member's speakers with
-- how long and from when each speaks and its centroid embedding (CAM++, 192 values, unit length),
-- from which `voices` recognises the same voice across a day's members (`voice`, NULL until then).
ALTER TABLE segments ADD COLUMN speaker text;

CREATE TABLE member_speakers (
    archive  text NOT NULL,
    member   text NOT NULL,
    speaker  text NOT NULL,
    seconds  real NOT NULL,
    first_s  real NOT NULL,
    centroid real[] NOT NULL,
    voice    text,
    PRIMARY KEY (archive, member, speaker),
    FOREIGN KEY (archive, member) REFERENCES audio_files (archive, member) ON DELETE CASCADE
);
