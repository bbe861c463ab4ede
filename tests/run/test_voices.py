"""`voices`: the same voice across a day's members, recorded, printed as JSON lines, and searched
by (`search --voice`); against a real PostgreSQL, with centroids made for the test (two persons)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.state.records import ArchiveKey, MemberRecord, Owner
from streaming_pipeline.state.store import ProgressStore
from streaming_pipeline.transcript import Segment, Speaker

from ..conftest import query

DAY = dt.date(2025, 1, 25)


def _unit(v: np.ndarray) -> tuple[float, ...]:
    return tuple(float(x) for x in v / np.linalg.norm(v))


def test_a_voice_in_two_slots_is_one_voice_and_is_searched_by(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    host, guest = rng.normal(size=192), rng.normal(size=192)
    store = ProgressStore(pg_dsn)
    store.init_schema()
    for slot, member, voices in (
        ("06_00", "news/a.wav", (host, guest)),
        ("07_00", "talk/b.wav", (guest, host)),
    ):
        key = ArchiveKey(f"2025-01-25/{slot}.tar.xz", DAY, slot)
        store.archives.start(key, path="/x.tar.xz", bytes_total=10, owner=Owner(None, "h", 1))
        segments = (
            Segment(0.0, 2.0, "Good morning from the studio.", speaker="S1"),
            Segment(2.5, 4.0, "Thank you for having me.", speaker="S2"),
        )
        speakers = tuple(
            Speaker(f"S{i}", 2.0, 2.5 * (i - 1), _unit(v + 0.05 * rng.normal(size=192)))
            for i, v in enumerate(voices, 1)
        )
        record = MemberRecord(
            member, "uploading", transcript="...", language="en", remote_path=f"/remote/{slot}/{member}",
            searchable_segments=2, segments=segments, speakers=speakers,
        )  # fmt: skip
        store.members.record(key, [record])
        store.members.mark_done(key.archive, [(member, f"/remote/{slot}/{member}")])
    store.close()

    assert main(["voices", DAY.isoformat(), "--json", "--dsn", pg_dsn]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"member": "news/a.wav", "speaker": "S1", "voice": "V1"},
        {"member": "news/a.wav", "speaker": "S2", "voice": "V2"},
        {"member": "talk/b.wav", "speaker": "S1", "voice": "V2"},  # the guest, now first
        {"member": "talk/b.wav", "speaker": "S2", "voice": "V1"},
    ]
    recorded = query(pg_dsn, "SELECT member, speaker, voice FROM member_speakers ORDER BY member, speaker")
    assert [r["voice"] for r in recorded] == ["V1", "V2", "V2", "V1"]
    assert main(["search", "studio", "--voice", "v2", "--json", "--dsn", pg_dsn]) == 0
    (hit,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (hit["member"], hit["speaker"]) == ("talk/b.wav", "S1")
    assert main(["voices", DAY.isoformat(), "--dsn", pg_dsn]) == 0
    text = capsys.readouterr().out
    assert "4 member-speakers, 2 voices" in text and "talk/b.wav" in text
