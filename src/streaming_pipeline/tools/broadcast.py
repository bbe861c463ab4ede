"""`streaming-pipeline broadcast-score`: the pipeline on a set of broadcast-like recordings, scored.

A set is a folder of recordings with a `manifest.tsv` (file, category, duration_s, language,
reference, speech_spans, how_made, ...): speech, speech over music beds, telephone speech, music,
noise, dead air and assembled programmes. The command packs the set's recordings into one
`.tar.xz`, runs it through `ArchiveWorker` exactly as `process-tar` does (an embedded PostgreSQL
unless a DSN is given, a local destination), and scores the JSON sidecars it wrote:

    over_nonspeech_s_per_min    seconds of segments lying over non-speech (beyond 1 s of any
                                speech span), per minute of non-speech
    start_error_s               |first overlapping segment's start - sentence start|: median/p90/max
    sentences_lost_or_wrong     sentences whose WER in their own language is above 0.5 (a dropped
                                or translated sentence scores 1)
    wer_speech / _telephone / _over_music   corpus WER of those categories (English over music)
    words_per_min_*             words on instrumental music, noise and silence, and on sung music

The scoring follows the set's reference scorer (`score.py`) rule for rule, so that the two agree
(a test holds them to it); it is pure: `score(files, transcripts)` needs no model or database.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import statistics
import tarfile
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..state.store import ProgressStore

CJK_LANGUAGES = ("ja", "zh", "ko", "th")  # scored by characters, not words
NON_SPEECH = ("music", "noise", "silence")
SUNG = re.compile(r"VOCALS|sung|singing|with vocals")
SPAN_MARGIN_S = 1.0  # a segment this close to a speech span is not over non-speech
LOST_WER = 0.5


def _is_cjk(c: str) -> bool:
    return "\u3040" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af"


@dataclass(frozen=True)
class SetFile:
    """One recording of the set, as its manifest describes it."""

    file: str
    category: str
    duration_s: float
    language: str
    reference: str
    spans: tuple[tuple[float, float, str], ...]  # (start, end, sentence) of each speech span
    how_made: str = ""

    @property
    def sung(self) -> bool:
        return self.category == "music" and bool(SUNG.search(self.how_made))

    def span_language(self, sentence: str) -> str:
        """The language a span is scored in: the file's, or for a programme (whose manifest
        lists several) only what the script tells: CJK by characters, any other by words."""
        if self.category != "programme":
            return self.language or "en"
        if any("\uac00" <= c <= "\ud7af" for c in sentence):
            return "ko"
        if any("\u3040" <= c <= "\u9fff" for c in sentence):
            return "ja"
        return "xx"


def read_manifest(set_dir: Path) -> list[SetFile]:
    path = set_dir / "manifest.tsv"
    if not path.is_file():
        raise ConfigError(f"{set_dir} is not a recording set: it has no manifest.tsv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        SetFile(
            file=r["file"],
            category=r["category"],
            duration_s=float(r["duration_s"]),
            language=r.get("language") or "",
            reference=r.get("reference") or "",
            spans=tuple((float(a), float(b), t) for a, b, t in json.loads(r["speech_spans"] or "[]")),
            how_made=r.get("how_made") or "",
        )
        for r in rows
    ]


# -- text ------------------------------------------------------------------------------------------
def _normalised(text: str) -> str:
    return re.sub(r"[^\w\s']", " ", unicodedata.normalize("NFKC", text))


def score_words(text: str, language: str) -> list[str]:
    """Lower-cased words without punctuation; characters for CJK languages."""
    t = _normalised(text).lower()
    return [c for c in t if not c.isspace()] if language in CJK_LANGUAGES else t.split()


def word_count(text: str) -> int:
    """Words of any script: each CJK character counts as one."""
    words = _normalised(text).split()
    return sum(sum(map(_is_cjk, w)) if any(map(_is_cjk, w)) else 1 for w in words)


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions and deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def wer(pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> float:
    """Corpus WER: all edits over all reference words."""
    words = sum(len(r) for r, _ in pairs)
    return sum(edit_distance(r, h) for r, h in pairs) / words if words else 0.0


# -- the score -------------------------------------------------------------------------------------
Timed = tuple[float, float, str]  # a transcript segment: start, end, text


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


@dataclass(frozen=True)
class StartErrors:
    median: float
    p90: float
    max: float
    sentences: int


@dataclass(frozen=True)
class BroadcastScore:
    missing: int
    over_nonspeech_s_per_min: float | None
    stray_words_per_min_nonspeech: float | None
    start_error_s: StartErrors | None
    sentences_lost: int
    sentences: int
    sentence_wer_mean: float | None
    wer: dict[str, float] = field(default_factory=dict)  # speech, telephone, over_music
    words_per_min_instrumental: float | None = None
    words_per_min_sung: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The reference scorer's keys and roundings."""
        out: dict[str, Any] = {"missing": self.missing}
        if self.over_nonspeech_s_per_min is not None:
            out["over_nonspeech_s_per_min"] = round(self.over_nonspeech_s_per_min, 2)
            out["stray_words_per_min_nonspeech"] = round(self.stray_words_per_min_nonspeech or 0.0, 2)
        if self.start_error_s is not None:
            out["start_error_s"] = {
                k: round(v, 2) if k != "sentences" else v for k, v in asdict(self.start_error_s).items()
            }
        if self.sentences:
            out["sentences_lost_or_wrong"] = f"{self.sentences_lost}/{self.sentences} (WER > {LOST_WER:g})"
            out["sentence_wer_mean"] = round(self.sentence_wer_mean or 0.0, 3)
        out |= {f"wer_{k}": round(v, 4) for k, v in self.wer.items()}
        instrumental, sung = self.words_per_min_instrumental, self.words_per_min_sung
        out["words_per_min_instrumental_music_noise_silence"] = (
            None if instrumental is None else round(instrumental, 2)
        )
        out["words_per_min_sung_music"] = None if sung is None else round(sung, 2)
        return out

    def lines(self) -> list[str]:
        j = self.as_json()
        starts = j.get("start_error_s")
        return [
            f"seconds of segments over non-speech, per minute of it: {j.get('over_nonspeech_s_per_min')}",
            "sentence start error median / p90 / max: "
            + (f"{starts['median']} / {starts['p90']} / {starts['max']} s" if starts else "-"),
            f"sentences lost, translated or mis-placed: {j.get('sentences_lost_or_wrong', '-')}",
            "WER clean / telephone / over music: "
            + " / ".join(
                f"{100 * self.wer[k]:.1f}%" if k in self.wer else "-"
                for k in ("speech", "telephone", "over_music")
            ),
            "words per minute on instrumental music, noise and silence: "
            + str(j["words_per_min_instrumental_music_noise_silence"]),
            f"words per minute on sung music (lyrics): {j['words_per_min_sung_music']}",
        ]


def score(files: Sequence[SetFile], transcripts: Mapping[str, Sequence[Timed]]) -> BroadcastScore:
    """Score each file's transcript segments (`transcripts[file]`) against the manifest."""
    over = stray = nonspeech = 0.0
    starts: list[float] = []
    sentence_wers: list[float] = []
    pairs: dict[str, list[tuple[list[str], list[str]]]] = {"speech": [], "telephone": [], "over_music": []}
    invented = {"instrumental": [0, 0.0], "sung": [0, 0.0]}
    missing = 0
    for f in files:
        if f.file not in transcripts:
            missing += 1
            continue
        segments = transcripts[f.file]
        text = " ".join(t for _, _, t in segments)
        if f.category in NON_SPEECH:
            kind = "sung" if f.sung else "instrumental"
            invented[kind][0] += word_count(text)
            invented[kind][1] += f.duration_s / 60
            continue
        if f.spans:
            nonspeech += f.duration_s - sum(b - a for a, b, _ in f.spans)
            for s0, s1, t in segments:
                inside = sum(_overlap(s0, s1, a - SPAN_MARGIN_S, b + SPAN_MARGIN_S) for a, b, _ in f.spans)
                over += max(0.0, (s1 - s0) - inside)
                stray += word_count(t) if inside == 0 else 0
            for a, b, sentence in f.spans:
                hits = [s for s in segments if _overlap(s[0], s[1], a, b) > 0]
                if hits:
                    starts.append(abs(hits[0][0] - a))
                language = f.span_language(sentence)
                said = " ".join(
                    t for s0, s1, t in segments if a - SPAN_MARGIN_S <= (s0 + s1) / 2 <= b + SPAN_MARGIN_S
                )
                ref = score_words(sentence, language)
                if ref:
                    sentence_wers.append(min(1.0, wer([(ref, score_words(said, language))])))
            if f.category == "speech_over_music" and f.language == "en":
                pairs["over_music"].append((score_words(f.reference, "en"), score_words(text, "en")))
        elif f.category in ("speech", "telephone") and f.reference:
            language = f.language or "en"
            pairs[f.category].append((score_words(f.reference, language), score_words(text, language)))
    ordered = sorted(starts)
    return BroadcastScore(
        missing=missing,
        over_nonspeech_s_per_min=over / (nonspeech / 60) if nonspeech else None,
        stray_words_per_min_nonspeech=stray / (nonspeech / 60) if nonspeech else None,
        start_error_s=StartErrors(
            statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))], ordered[-1], len(ordered)
        )
        if ordered
        else None,
        sentences_lost=sum(w > LOST_WER for w in sentence_wers),
        sentences=len(sentence_wers),
        sentence_wer_mean=statistics.mean(sentence_wers) if sentence_wers else None,
        wer={k: wer(v) for k, v in pairs.items() if v},
        words_per_min_instrumental=invented["instrumental"][0] / invented["instrumental"][1]
        if invented["instrumental"][1]
        else None,
        words_per_min_sung=invented["sung"][0] / invented["sung"][1] if invented["sung"][1] else None,
    )


# -- sidecars and the run --------------------------------------------------------------------------
def read_sidecars(files: Sequence[SetFile], results: Path) -> dict[str, list[Timed]]:
    """Each file's segments from the JSON sidecar the pipeline wrote for it under `results`
    (found by the member's path without its extension, wherever the day and slot put it)."""
    sidecars: dict[str, Path] = {}
    for path in results.rglob("*.json"):
        sidecars.setdefault(path.relative_to(results).with_suffix("").as_posix(), path)
    out: dict[str, list[Timed]] = {}
    for f in files:
        stem = Path(f.file).with_suffix("").as_posix()
        match = sidecars.get(stem) or next((p for k, p in sidecars.items() if k.endswith("/" + stem)), None)
        if match is not None:
            segments = json.loads(match.read_text(encoding="utf-8")).get("segments", [])
            out[f.file] = [(s["start"], s["end"], s["text"]) for s in segments]
    return out


def pack_set(set_dir: Path, files: Sequence[str], archive: Path) -> Path:
    """The set's recordings as one archive, members named by their path in the set (kept when
    it is newer than the manifest)."""
    manifest = set_dir / "manifest.tsv"
    if archive.is_file() and archive.stat().st_mtime >= manifest.stat().st_mtime:
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:xz", preset=1) as tar:
        for f in files:
            tar.add(set_dir / f, arcname=f, recursive=False)
    partial.replace(archive)
    return archive


SET_DAY = dt.date(2000, 1, 2)  # the day a set is run under


def run_recordings(
    config: PipelineConfig, set_dir: Path, files: Sequence[str], work: Path, store: ProgressStore, slot: str
) -> tuple[Path, float, dict[str, float]]:
    """A set's recordings through `ArchiveWorker` under a day and slot of their own (reruns start
    afresh): where the outputs are, the run's wall seconds and its CPU seconds by stage."""
    import shutil
    from dataclasses import replace

    from ..run.worker import ArchiveWorker
    from ..stages.asr.loader import Transcriber
    from ..state.records import ArchiveKey

    archive = pack_set(set_dir, files, work / "set.tar.xz")
    remote = work / "remote"
    shutil.rmtree(remote, ignore_errors=True)
    shutil.rmtree(work / "scratch", ignore_errors=True)
    config = replace(config, remote=str(remote), scratch_dir=work / "scratch")
    day = SET_DAY
    store.archives.forget(ArchiveKey.of(day, archive, slot).archive)
    started = time.monotonic()
    result = ArchiveWorker(
        config, day=day, archive_path=archive, slot=slot, store=store, transcriber_factory=Transcriber
    ).run()
    wall = time.monotonic() - started
    if not result.ok:
        raise PipelineError(f"the set's run did not finish: {result.summary_line()}")
    return remote, wall, dict(result.stage_cpu_s or {})


@dataclass(frozen=True)
class BroadcastRun:
    """A run of the set through the pipeline, and its score."""

    score: BroadcastScore
    audio_s: float
    wall_s: float
    results: Path

    def lines(self) -> list[str]:
        rate = self.audio_s / self.wall_s if self.wall_s else 0.0
        return [
            f"{self.audio_s / 60:.1f} min of audio in {self.wall_s:.1f} s ({rate:.1f}x realtime)",
            f"sidecars: {self.results}",
            *self.score.lines(),
        ]


def run_set(config: PipelineConfig, set_dir: Path, work: Path, store: ProgressStore) -> BroadcastRun:
    """The set through the pipeline, scored."""
    files = read_manifest(set_dir)
    remote, wall, _ = run_recordings(config, set_dir, [f.file for f in files], work, store, "broadcast")
    transcripts = read_sidecars(files, remote)
    return BroadcastRun(score(files, transcripts), sum(f.duration_s for f in files), wall, remote)
