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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PipelineError
from .broadcast import run_recordings

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


def collect_rttms(files: list[str], results: Path, hyp: Path) -> list[str]:
    """Each recording's RTTM, found under `results` by its path without the extension, copied to
    `hyp/<its path>.rttm` as the scorer wants it; the recordings that have none."""
    written = {p.relative_to(results).with_suffix("").as_posix(): p for p in results.rglob("*.rttm")}
    shutil.rmtree(hyp, ignore_errors=True)
    missing = []
    for f in files:
        stem = Path(f).with_suffix("").as_posix()
        match = written.get(stem) or next((p for k, p in written.items() if k.endswith("/" + stem)), None)
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


@dataclass(frozen=True)
class SpeakersRun:
    """A run of the set through the pipeline, and its score."""

    figures: dict[str, Any]
    table: list[str]
    audio_s: float
    wall_s: float
    speaker_cpu_s: float
    results: Path

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
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.figures.items() if k not in ("set", "hyp")},
            "audio_s": self.audio_s,
            "wall_s": self.wall_s,
            "speaker_cpu_s_per_audio_hour": self.speaker_cpu_s / self.audio_s * 3600
            if self.audio_s
            else None,
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
    return SpeakersRun(figures, table, sum(d for _, d in files), wall, cpu.get("speakers", 0.0), remote)


__all__ = ["SpeakersRun", "collect_rttms", "read_files", "run_scorer", "run_set"]
