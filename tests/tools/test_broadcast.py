"""`broadcast-score`: the figures of a broadcast-like set, computed as its reference scorer does.

The scoring is pure, so most tests give it hand-made manifests and transcripts; one holds it to the
set's own `score.py` on transcripts drawn from the real manifest, and one runs the command.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.tools.broadcast import (
    SetFile,
    edit_distance,
    read_manifest,
    read_sidecars,
    score,
    score_words,
    wer,
    word_count,
)

PROGRAMME = SetFile(
    file="programme/p.flac",
    category="programme",
    duration_s=60.0,
    language="en,de",
    reference="",
    spans=((2.0, 6.0, "Good evening and welcome."), (30.0, 34.0, "Guten Abend und willkommen.")),
)
MUSIC = SetFile("music/m.ogg", "music", 30.0, "none", "", (), "instrumental excerpt")
SUNG = SetFile("music/s.mp3", "music", 30.0, "none", "", (), "excerpt. VOCALS: sung fr")
SPEECH = SetFile("speech/s.flac", "speech", 3.0, "en", "One two three.", ())


def test_a_programmes_figures_by_hand() -> None:
    transcripts = {
        PROGRAMME.file: [
            (2.4, 6.5, "Good evening and welcome."),  # 0.4 s late, within the span's 1 s margin
            (12.0, 14.0, "Thank you."),  # over non-speech, overlapping no speech: stray words
            (29.0, 33.0, "Good evening and welcome."),  # translated: its sentence scores 1
        ],
        MUSIC.file: [(0.0, 5.0, "la la la")],
        SUNG.file: [(0.0, 5.0, "un deux trois quatre")],
        SPEECH.file: [(0.0, 3.0, "one two tree")],
    }
    result = score([PROGRAMME, MUSIC, SUNG, SPEECH], transcripts)
    nonspeech_min = (60.0 - 8.0) / 60
    assert result.over_nonspeech_s_per_min == pytest.approx(2.0 / nonspeech_min)
    assert result.stray_words_per_min_nonspeech == pytest.approx(2 / nonspeech_min)
    assert result.start_error_s is not None
    assert (result.start_error_s.max, result.start_error_s.sentences) == (pytest.approx(1.0), 2)
    assert (result.sentences_lost, result.sentences) == (1, 2)
    assert result.wer == {"speech": pytest.approx(1 / 3)}
    assert result.words_per_min_instrumental == pytest.approx(3 / 0.5)
    assert result.words_per_min_sung == pytest.approx(4 / 0.5)
    figures = result.as_json()
    assert figures["sentences_lost_or_wrong"] == "1/2 (WER > 0.5)" and figures["missing"] == 0
    # a file without a transcript is missing, not empty
    assert score([PROGRAMME, SPEECH], {SPEECH.file: []}).missing == 1


def test_words_are_counted_and_compared_in_their_own_script() -> None:
    assert score_words("Hello, World! It's", "en") == ["hello", "world", "it's"]
    assert score_words("그는 걸어갔다.", "ko") == ["그", "는", "걸", "어", "갔", "다"]
    assert word_count("砸自己的脚 and two") == 7
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert wer([(["a", "b"], []), (["c"], ["c"])]) == pytest.approx(2 / 3)


def test_word_error_rate_agrees_with_jiwer() -> None:
    import jiwer

    rng = random.Random(7)
    vocabulary = "the a of to in is it on was he".split()

    def drawn(least: int) -> list[str]:
        return [rng.choice(vocabulary) for _ in range(rng.randint(least, 12))]

    pairs = [(drawn(1), drawn(0)) for _ in range(200)]
    expected = jiwer.wer([" ".join(r) for r, _ in pairs], [" ".join(h) or "<empty>" for _, h in pairs])
    # jiwer reads an empty hypothesis as one word, "<empty>": the same edit count as deleting all
    assert wer(pairs) == pytest.approx(expected)


def _reference_scorer(set_dir: Path):
    spec = importlib.util.spec_from_file_location("reference_score", set_dir / "score.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drawn_transcripts(files: list[SetFile], seed: int) -> dict[str, list[tuple[float, float, str]]]:
    """Transcripts with what a decoder gets wrong: late or early starts, dropped and garbled
    sentences, segments stretched over non-speech, words on music and noise."""
    rng = random.Random(seed)
    out: dict[str, list[tuple[float, float, str]]] = {}
    for f in files:
        if rng.random() < 0.05:
            continue  # missing
        segments: list[tuple[float, float, str]] = []
        for a, b, text in f.spans or ((0.0, f.duration_s, f.reference),):
            if rng.random() < 0.15:
                continue
            words = text.split()
            if rng.random() < 0.3:
                words = [w if rng.random() < 0.7 else rng.choice(["uh", "the", "Bonjour"]) for w in words]
            start = max(0.0, a + rng.uniform(-3, 3))
            segments.append((start, max(start, b + rng.uniform(-2, 12)), " ".join(words)))
        if f.category in ("music", "noise", "silence") and rng.random() < 0.5:
            segments.append((1.0, 4.0, "you know what I mean 砸自己"))
        out[f.file] = sorted(segments)
    return out


def test_the_figures_agree_with_the_sets_reference_scorer(broadcast_set: Path) -> None:
    pytest.importorskip("jiwer")
    reference = _reference_scorer(broadcast_set)
    import csv

    with (broadcast_set / "manifest.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    files = read_manifest(broadcast_set)
    assert [f.file for f in files] == [r["file"] for r in rows]
    for seed in range(5):
        transcripts = _drawn_transcripts(files, seed)
        assert score(files, transcripts).as_json() == reference.score(rows, transcripts), seed


def test_the_command_scores_sidecars_wherever_the_day_and_slot_put_them(tmp_path: Path, capsys) -> None:
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    columns = "file category duration_s sample_rate channels language reference speech_spans source license"
    header = "\t".join([*columns.split(), "how_made"])
    spans = json.dumps([[a, b, t] for a, b, t in PROGRAMME.spans])
    (set_dir / "manifest.tsv").write_text(
        f"{header}\n{PROGRAMME.file}\tprogramme\t60.0\t16000\t1\ten,de\t\t{spans}\t\t\t\n"
        f"{MUSIC.file}\tmusic\t30.0\t16000\t1\tnone\t\t\t\t\tinstrumental\n",
        encoding="utf-8",
    )
    results = tmp_path / "remote" / "2000-01-02" / "broadcast"
    for stem, segments in {
        "programme/p": [{"start": 2.1, "end": 6.0, "text": "Good evening and welcome."}],
        "music/m": [],
    }.items():
        (results / stem).parent.mkdir(parents=True, exist_ok=True)
        (results / f"{stem}.json").write_text(json.dumps({"segments": segments}), encoding="utf-8")
    files = read_manifest(set_dir)
    assert set(read_sidecars(files, tmp_path / "remote")) == {PROGRAMME.file, MUSIC.file}
    figures = tmp_path / "figures.json"
    rc = main(
        ["broadcast-score", str(set_dir), "--transcripts", str(tmp_path / "remote"), "--json", str(figures)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "sentences lost, translated or mis-placed: 1/2 (WER > 0.5)" in out
    written = json.loads(figures.read_text())
    assert written["over_nonspeech_s_per_min"] == 0.0 and written["start_error_s"]["median"] == 0.1
    assert written["words_per_min_instrumental_music_noise_silence"] == 0.0


def test_a_folder_without_a_manifest_or_without_sidecars_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["broadcast-score", str(tmp_path), "--transcripts", str(tmp_path)]) != 0
    assert "has no manifest.tsv" in capsys.readouterr().err
    (tmp_path / "manifest.tsv").write_text("file\tcategory\tduration_s\tspeech_spans\nm.ogg\tmusic\t3\t\n")
    assert main(["broadcast-score", str(tmp_path), "--transcripts", str(tmp_path)]) != 0
    assert "no JSON sidecar of the set's recordings" in capsys.readouterr().err
