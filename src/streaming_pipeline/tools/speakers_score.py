"""`streaming-pipeline speakers-score`: a set of conversations with reference speaker turns through
the pipeline, its speaker turns scored.

A set is a folder of recordings with a `manifest.tsv` (file, duration_s, speakers, n_turns,
kinds, ...), one reference `<stem>.rttm` and `<stem>.uem` per recording, and its own scorer,
`score_speakers.py` (DER with a collar, hypothesis speakers mapped one-to-one; the speaker count).
The command packs the recordings into one `.tar.xz`, runs it through `ArchiveWorker` as
`process-tar` does (an embedded PostgreSQL unless a DSN is given), collects the RTTM files the
pipeline wrote beside each FLAC, and runs the set's scorer on them: the figures are the set's own.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PipelineError
from ..run.voices import find_voices
from .broadcast import SET_DAY, run_recordings

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..state.store import ProgressStore

SCORER = "score_speakers.py"


def read_files(set_dir: Path) -> list[tuple[str, float]]:
    """The set's recordings and their seconds, from its manifest."""
    path = set_dir / "manifest.tsv"
    if not path.is_file() or not (set_dir / SCORER).is_file():
        raise ConfigError(f"{set_dir} is not a speaker-turn set: it needs a manifest.tsv and {SCORER}")
    with path.open(encoding="utf-8", newline="") as f:
        return [(r["file"], float(r["duration_s"])) for r in csv.DictReader(f, delimiter="\t")]


def _written(results: Path, suffix: str) -> dict[str, Path]:
    """The files of `suffix` under `results`, by their path without the suffix."""
    return {p.relative_to(results).with_suffix("").as_posix(): p for p in results.rglob(f"*{suffix}")}


def _find(written: dict[str, Path], recording: str) -> Path | None:
    """A recording's file among `written`: at its own path, or where a run put it under a folder."""
    stem = Path(recording).with_suffix("").as_posix()
    return written.get(stem) or next((p for k, p in written.items() if k.endswith("/" + stem)), None)


def collect_rttms(files: list[str], results: Path, hyp: Path) -> list[str]:
    """Each recording's RTTM, found under `results` by its path without the extension, copied to
    `hyp/<its path>.rttm` as the scorer wants it; the recordings that have none."""
    written = _written(results, ".rttm")
    shutil.rmtree(hyp, ignore_errors=True)
    missing = []
    for f in files:
        stem = Path(f).with_suffix("").as_posix()
        match = _find(written, f)
        if match is None:
            missing.append(f)
            continue
        target = hyp / f"{stem}.rttm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(match, target)
    return missing


def run_scorer(set_dir: Path, hyp: Path) -> tuple[list[str], dict[str, Any]]:
    """The set's scorer on `hyp`: its printed table, and its figures (its last line, JSON)."""
    done = subprocess.run(
        [sys.executable, str(set_dir / SCORER), str(set_dir), str(hyp)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise PipelineError(f"{SCORER} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return lines[:-1], json.loads(lines[-1])


def _turns(path: Path) -> list[tuple[str, float, float]]:
    """An RTTM file's (speaker, start, end)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        p = line.split()
        if len(p) >= 8 and p[0] == "SPEAKER":
            out.append((p[7], float(p[3]), float(p[3]) + float(p[4])))
    return out


def reference_of(hyp: list[tuple[str, float, float]], ref: list[tuple[str, float, float]]) -> dict[str, str]:
    """Each hypothesis speaker's reference speaker: the one it shares the most time with."""
    shared: dict[tuple[str, str], float] = {}
    for h, a, b in hyp:
        for r, c, d in ref:
            overlap = min(b, d) - max(a, c)
            if overlap > 0:
                shared[(h, r)] = shared.get((h, r), 0.0) + overlap
    out: dict[str, str] = {}
    for (h, r), _ in sorted(shared.items(), key=lambda kv: -kv[1]):
        out.setdefault(h, r)
    return out


def pairwise(voices: list[str], truth: list[str]) -> tuple[float, float, int, int]:
    """Pairwise precision and recall of `voices` against `truth` over all pairs of items, and the
    pair counts they are shares of (same voice, same truth)."""
    n = len(voices)
    same_voice = same_truth = both = 0
    for i in range(n):
        for j in range(i + 1, n):
            v, t = voices[i] == voices[j], truth[i] == truth[j]
            same_voice += v
            same_truth += t
            both += v and t
    precision = both / same_voice if same_voice else 1.0
    recall = both / same_truth if same_truth else 1.0
    return precision, recall, same_voice, same_truth


# A segment may overlap a second reference speaker's turn by this much (the scorer's collar is
# 0.25 s on either side of a change): more, and it holds two people's words under one name.
SPAN_LIMIT_S = 0.5


def spanning(segments: list[tuple[float, float]], ref: list[tuple[str, float, float]]) -> int:
    """How many of `segments` ((start, end)) overlap the turns of two reference speakers, the
    smaller overlap more than SPAN_LIMIT_S: a segment that should have been split at a change."""
    count = 0
    for start, end in segments:
        shared: dict[str, float] = {}
        for person, a, b in ref:
            overlap = min(end, b) - max(start, a)
            if overlap > 0:
                shared[person] = shared.get(person, 0.0) + overlap
        if len(shared) > 1 and sorted(shared.values())[-2] > SPAN_LIMIT_S:
            count += 1
    return count


def score_spanning(set_dir: Path, files: list[str], results: Path) -> tuple[int, int]:
    """Segments of the set's transcripts (the JSON beside each FLAC) that span two reference
    speakers (`spanning`), and the segments there are."""
    written = _written(results, ".json")
    bad = total = 0
    for f in files:
        match = _find(written, f)
        ref = set_dir / Path(f).with_suffix(".rttm")
        if match is None or not ref.is_file():
            continue
        segments = [(float(s["start"]), float(s["end"])) for s in json.loads(match.read_text())["segments"]]
        bad += spanning(segments, _turns(ref))
        total += len(segments)
    return bad, total


@dataclass(frozen=True)
class VoiceScore:
    """The day's voices against the reference labels (which name a person alike in every file)."""

    precision: float  # of member-speaker pairs given one voice, the share that are one person
    recall: float  # of pairs that are one person, the share given one voice
    member_speakers: int
    voices: int
    persons: int

    def line(self) -> str:
        return (
            f"voices across the set: {self.voices} for {self.member_speakers} member-speakers "
            f"({self.persons} persons); pairwise precision {self.precision:.3f}, recall {self.recall:.3f}"
        )


def score_voices(set_dir: Path, hyp: Path, found: list[tuple[str, str, str]]) -> VoiceScore:
    """`found`: (member path, speaker, voice) as `voices` gave them; each member-speaker's person
    is the reference speaker it shares the most time with in its file."""
    voices, truth = [], []
    for member, speaker, voice in found:
        stem = Path(member).with_suffix("").as_posix()
        ref, mine = set_dir / f"{stem}.rttm", hyp / f"{stem}.rttm"
        if not (ref.is_file() and mine.is_file()):
            continue
        person = reference_of(_turns(mine), _turns(ref)).get(speaker)
        if person is not None:
            voices.append(voice)
            truth.append(person)
    precision, recall, _, _ = pairwise(voices, truth)
    return VoiceScore(precision, recall, len(voices), len(set(voices)), len(set(truth)))


@dataclass(frozen=True)
class SpeakersRun:
    """A run of the set through the pipeline, and its score."""

    figures: dict[str, Any]
    table: list[str]
    audio_s: float
    wall_s: float
    speaker_cpu_s: float
    results: Path
    voices: VoiceScore | None = None
    spanning: tuple[int, int] = (0, 0)  # segments over two reference speakers, of all segments

    def lines(self) -> list[str]:
        f = self.figures
        per_hour = self.speaker_cpu_s / self.audio_s * 3600 if self.audio_s else 0.0
        errors = f"miss {f['miss']:.2f}, false alarm {f['fa']:.2f}, confusion {f['conf']:.2f}"
        return [
            *self.table,
            f"{self.audio_s / 60:.1f} min of audio in {self.wall_s:.1f} s; "
            f"speaker stage {per_hour:.0f} CPU s per audio hour",
            f"DER {f['der']:.2f}% ({errors}); "
            f"speakers counted right in {f['spk_exact_n']} of {f['files']} files",
            f"segments spanning two reference speakers by more than {SPAN_LIMIT_S:g} s: "
            f"{self.spanning[0]} of {self.spanning[1]}",
            *([self.voices.line()] if self.voices else []),
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.figures.items() if k not in ("set", "hyp")},
            "audio_s": self.audio_s,
            "wall_s": self.wall_s,
            "speaker_cpu_s_per_audio_hour": self.speaker_cpu_s / self.audio_s * 3600
            if self.audio_s
            else None,
            "voices": asdict(self.voices) if self.voices else None,
            "segments_spanning_two_speakers": self.spanning[0],
            "segments": self.spanning[1],
        }


def run_set(config: PipelineConfig, set_dir: Path, work: Path, store: ProgressStore) -> SpeakersRun:
    """The set through the pipeline (speakers on), its RTTMs scored by the set's scorer."""
    from dataclasses import replace

    files = read_files(set_dir)
    names = [f for f, _ in files]
    config = replace(config, speakers=True)
    remote, wall, cpu = run_recordings(config, set_dir, names, work, store, "speakers")
    missing = collect_rttms(names, remote, work / "hyp")
    if missing:
        raise PipelineError(f"no RTTM written for {', '.join(missing)}")
    table, figures = run_scorer(set_dir, work / "hyp")
    day = find_voices(store, SET_DAY)  # the set as one day: the same person in several files
    found = [(s.member, s.speaker, s.voice or "") for s in day.speakers]
    voices = score_voices(set_dir, work / "hyp", found)
    audio_s = sum(d for _, d in files)
    span = score_spanning(set_dir, names, remote)
    return SpeakersRun(figures, table, audio_s, wall, cpu.get("speakers", 0.0), remote, voices, span)


__all__ = ["SpeakersRun", "collect_rttms", "read_files", "run_scorer", "run_set"]
