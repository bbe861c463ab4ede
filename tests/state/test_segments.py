"""Searchable segments against a real PostgreSQL: written with the member's row, found by language
(stemming, phrases, web-search operators, Chinese as bigrams), at the matched word's second."""

from __future__ import annotations

import datetime as dt

import pytest

from streaming_pipeline.state.records import MemberRecord, Owner
from streaming_pipeline.state.search_text import (
    bigram_query,
    bigrams,
    highlight_unspaced,
    search_config,
    word_time,
)
from streaming_pipeline.state.segments import SearchQuery
from streaming_pipeline.state.store import ArchiveKey, ProgressStore
from streaming_pipeline.transcript import Segment, Word

from ..conftest import query

DAY = dt.date(2025, 1, 25)
KEY = ArchiveKey("2025-01-25/06_00.tar.xz", DAY, "06_00")
LATER = ArchiveKey("2025-01-27/06_00.tar.xz", dt.date(2025, 1, 27), "06_00")


def _words(text: str, start: float, step: float) -> list[Word]:
    return [Word(start + i * step, start + (i + 1) * step, f" {w}", 0.9) for i, w in enumerate(text.split())]


def _member(name: str, language: str, *segments: Segment) -> MemberRecord:
    return MemberRecord(
        name,
        "uploading",
        transcript=" ".join(s.text for s in segments),
        language=language,
        remote_path=f"/remote/2025-01-25/06_00/{name.replace('.wav', '.flac')}",
        searchable_segments=len(segments),
        segments=segments,
    )


@pytest.fixture
def store(pg_dsn: str) -> ProgressStore:
    store = ProgressStore(pg_dsn)
    store.init_schema()
    for key in (KEY, LATER):
        store.archives.start(key, path="/x.tar.xz", bytes_total=10, owner=Owner(None, "h", 1))
    jfk = "And so my fellow Americans, ask not what your country can do for you"
    timed = Segment(2.0, 8.0, jfk, words=_words(jfk, 2.0, 0.5))
    store.members.record(
        KEY,
        [
            _member("jfk.wav", "en", Segment(0.0, 2.0, "Good evening."), timed),
            _member("fr.wav", "fr", Segment(0.0, 2.5, "et c'est la dictée numéro un")),
            _member("zh.wav", "zh", Segment(1.0, 4.3, "广州市房地产中介协会分析")),
            _member("runners.wav", "en", Segment(5.0, 6.0, "The runners were running in the rain.")),
        ],
    )  # fmt: skip
    store.members.mark_done(
        KEY.archive, [(m, f"/remote/{m}") for m in ("jfk.wav", "fr.wav", "zh.wav", "runners.wav")]
    )
    store.members.record(LATER, [_member("late.wav", "en", Segment(3.0, 4.0, "Your country again."))])
    store.members.mark_done(LATER.archive, [("late.wav", "/remote/late.flac")])
    return store


def _found(store: ProgressStore, text: str, **filters: object) -> list[tuple[str, float]]:
    return [(h.member, h.at) for h in store.segments.search(SearchQuery(text, **filters)).hits]  # type: ignore[arg-type]


def test_a_phrase_finds_its_member_at_the_matched_words_second(store: ProgressStore) -> None:
    (hit,) = store.segments.search(SearchQuery('"ask not what your country"')).hits
    assert (hit.member, hit.day, hit.slot, hit.start, hit.end) == ("jfk.wav", DAY, "06_00", 2.0, 8.0)
    assert hit.at == 4.5  # "ask" is the fifth word: 2.0 + 4 * 0.5
    assert "«ask» not what your «country»" in hit.highlight
    assert hit.player == "ffplay -ss 4.5 /remote/jfk.wav"
    # stemming (english): "run" finds "runners ... running"; a word said nowhere finds nothing
    assert _found(store, "run") == [("runners.wav", 5.0)]
    assert _found(store, "zeppelin") == []
    # web-search operators: or, -excluded
    assert {m for m, _ in _found(store, "country or rain")} == {"jfk.wav", "runners.wav", "late.wav"}
    assert {m for m, _ in _found(store, "country -americans")} == {"late.wav"}


def test_filters_by_day_language_and_archive_and_limits(store: ProgressStore) -> None:
    assert {m for m, _ in _found(store, "country")} == {"jfk.wav", "late.wav"}
    assert _found(store, "country", first_day=LATER.day, last_day=LATER.day) == [("late.wav", 3.0)]
    assert _found(store, "country", archive=KEY.archive) == [("jfk.wav", 6.5)]
    assert _found(store, "dictée numéro", language="fr") == [("fr.wav", 0.0)]
    assert _found(store, "dictée", language="en") == []
    assert len(store.segments.search(SearchQuery("country", limit=1)).hits) == 1
    # the web view's: slot, model (as recorded), pages
    assert {m for m, _ in _found(store, "country", slot="06_00")} == {"jfk.wav", "late.wav"}
    assert _found(store, "country", slot="07_00") == []
    assert _found(store, "country", model="large-v3") == []  # these members recorded no model
    first, second = (store.segments.search(SearchQuery("country", limit=1, offset=n)).hits for n in (0, 1))
    assert len(first) == len(second) == 1 and first[0].member != second[0].member
    assert store.segments.search(SearchQuery("country", limit=1, offset=2)).hits == []
    assert first[0].member_id > 0


def test_past_the_candidates_the_result_says_it_was_cut(store: ProgressStore, monkeypatch) -> None:
    from streaming_pipeline.state import segments

    assert not store.segments.search(SearchQuery("country or rain")).truncated  # 3 match
    monkeypatch.setattr(segments, "CANDIDATES", 2)
    found = store.segments.search(SearchQuery("country or rain"))
    assert found.truncated and len(found.hits) == 2


def test_chinese_is_found_inside_words_as_bigrams(store: ProgressStore) -> None:
    (hit,) = store.segments.search(SearchQuery("房地产")).hits
    assert (hit.member, hit.at, hit.language) == ("zh.wav", 1.0, "zh")
    assert hit.highlight == "广州市«房地产»中介协会分析"
    assert _found(store, "广州 协会") == [("zh.wav", 1.0)]  # both words, anywhere in the segment
    assert _found(store, "上海") == []


def test_only_done_members_are_found_and_a_rerecorded_member_replaces_its_segments(
    store: ProgressStore, pg_dsn: str
) -> None:
    store.members.record(KEY, [_member("new.wav", "en", Segment(0.0, 1.0, "an uploading zeppelin"))])
    assert _found(store, "zeppelin") == []  # not done yet: its FLAC may not be there
    store.members.record(KEY, [_member("new.wav", "en", Segment(0.0, 1.0, "a zeppelin made again"))])
    store.members.mark_done(KEY.archive, [("new.wav", "/remote/new.flac")])
    assert _found(store, "zeppelin") == [("new.wav", 0.0)]
    rows = query(pg_dsn, "SELECT text FROM segments WHERE member = 'new.wav'")
    assert rows == [{"text": "a zeppelin made again"}]
    # a done member is never re-recorded, its segments neither
    store.members.record(KEY, [_member("new.wav", "en", Segment(0.0, 1.0, "something else"))])
    assert query(pg_dsn, "SELECT text FROM segments WHERE member = 'new.wav'") == rows
    searchable = store.segments.searchable(DAY)
    assert (searchable.members, searchable.segments, searchable.unindexed) == (5, 6, 0)


def test_search_config_bigrams_and_word_times() -> None:
    have = {"simple", "english", "french"}
    assert search_config("en", have) == ("english", False)
    assert search_config("de", have) == ("simple", False)  # a server without german
    assert search_config("xx", have) == ("simple", False)
    assert search_config("ja", have) == ("simple", True)
    accents = {*have, "unaccent_simple", "unaccent_english"}  # migration 0013's copies
    assert search_config("en", accents) == ("unaccent_english", False)
    assert search_config("fr", accents) == ("french", False)  # no copy: the plain one
    assert search_config("xx", accents) == ("unaccent_simple", False)
    assert search_config("ja", accents) == ("simple", True)  # bigrams have no accents to drop
    assert bigrams("東京都 abc に") == "東京 京都 abc に"
    assert bigram_query('東京都 -大阪 "京都"') == '"東京 京都" -"大阪" "京都"'
    assert bigram_query("news東京都") == 'news "東京 京都"'
    assert highlight_unspaced("東京都に行く", "京都") == "東«京都»に行く"
    words = [[0.0, 0.5, " And"], [0.5, 1.0, " so"], [1.0, 1.4, " my"]]
    assert word_time("And so my", words, 7) == 1.0
    assert word_time("And so my", words, 0) == 0.0
    assert word_time("And so my", None, 3) is None


def test_each_segment_is_searched_in_its_own_language(pg_dsn: str) -> None:
    """An English programme with a German sentence: the German segment is stored as German and
    stemmed by the german configuration ("Kindern" finds "Kinder"), the English ones as English;
    the language filter reads the segment's language, not the member's."""
    store = ProgressStore(pg_dsn)
    store.init_schema()
    key = ArchiveKey("2025-01-26/06_00.tar.xz", dt.date(2025, 1, 26), "06_00")
    store.archives.start(key, path="/y.tar.xz", bytes_total=10, owner=Owner(None, "h", 1))
    segments = (
        Segment(0.0, 2.0, "The children were playing.", language="en"),
        Segment(3.0, 5.0, "Die Kinder spielten im Garten.", language="de"),
        Segment(6.0, 8.0, "Back to the studio.", language=None),  # the member's language
    )
    store.members.record(key, [_member("mixed.wav", "en", *segments)])
    store.members.mark_done(key.archive, [("mixed.wav", "/remote/mixed.flac")])
    rows = query(
        pg_dsn, "SELECT seq, language, config::text FROM segments WHERE member = 'mixed.wav' ORDER BY seq"
    )
    assert [(r["seq"], r["language"], r["config"]) for r in rows] == [
        (0, "en", "unaccent_english"), (1, "de", "unaccent_german"), (2, "en", "unaccent_english"),
    ]  # fmt: skip
    assert _found(store, "Kindern") == [("mixed.wav", 3.0)]
    assert _found(store, "Kindern", language="de") == [("mixed.wav", 3.0)]
    assert _found(store, "studio", language="de") == []
    assert _found(store, "studio", language="en") == [("mixed.wav", 6.0)]


def test_speakers_are_recorded_with_their_segments_and_searched_by(pg_dsn: str) -> None:
    """Each segment's speaker, each member's speakers with their centroids (192 values), a
    speaker's segments found alone."""
    from streaming_pipeline.transcript import Speaker

    store = ProgressStore(pg_dsn)
    store.init_schema()
    store.archives.start(KEY, path="/x.tar.xz", bytes_total=10, owner=Owner(None, "h", 1))
    segments = (
        Segment(0.0, 2.0, "Good evening, your country calls.", speaker="S1"),
        Segment(2.5, 4.0, "Thank you, my country answers.", speaker="S2"),
    )
    voice = tuple(float(i) / 192 for i in range(192))
    speakers = (Speaker("S1", 2.0, 0.0, voice), Speaker("S2", 1.5, 2.5, voice[::-1]))
    record = MemberRecord(
        "talk.wav", "uploading", transcript="...", language="en", remote_path="/remote/talk.flac",
        searchable_segments=2, segments=segments, speakers=speakers,
    )  # fmt: skip
    store.members.record(KEY, [record])
    store.members.mark_done(KEY.archive, [("talk.wav", "/remote/talk.flac")])
    hits = store.segments.search(SearchQuery("country")).hits
    assert sorted((h.speaker, h.start) for h in hits) == [("S1", 0.0), ("S2", 2.5)]
    (only,) = store.segments.search(SearchQuery("country", speaker="S2")).hits
    assert (only.speaker, only.text) == ("S2", "Thank you, my country answers.")
    rows = query(pg_dsn, "SELECT speaker, seconds, first_s, centroid FROM member_speakers ORDER BY speaker")
    assert [(r["speaker"], r["seconds"], r["first_s"]) for r in rows] == [("S1", 2.0, 0.0), ("S2", 1.5, 2.5)]
    assert len(rows[0]["centroid"]) == 192 and rows[0]["centroid"][1] == pytest.approx(1 / 192)
    store.close()


def test_a_prefix_and_near_find_what_websearch_cannot(store: ProgressStore) -> None:
    """`countr*` finds country; `ask NEAR/4 country` the two within four words in either order
    (ask not what your country: four apart, stop words counted), not further apart."""
    assert {m for m, _ in _found(store, "countr*")} == {"jfk.wav", "late.wav"}
    assert {m for m, _ in _found(store, "fellow*")} == {"jfk.wav"}
    assert _found(store, "ask NEAR/4 country") == [("jfk.wav", 4.5)]
    assert _found(store, "ask NEAR/3 country") == []
    assert _found(store, "country NEAR/4 ask") == [("jfk.wav", 4.5)]
    assert _found(store, "americans NEAR ask") == [("jfk.wav", 4.0)]  # NEAR alone: within 5
    assert {m for m, _ in _found(store, "countr* -americans")} == {"late.wav"}
    assert _found(store, "-countr* rain") == [("runners.wav", 5.0)]
    # hostile text is quoted, never tsquery syntax
    assert _found(store, "it's' NEAR/1 ) & | !*") == []


def test_search_by_members_counts_and_groups(store: ProgressStore) -> None:
    grouped = store.segments.search_members(SearchQuery("country", limit=1), per_member=1)
    assert (grouped.segments, grouped.member_count, grouped.understood) == (2, 2, True)
    assert len(grouped.members) == 1 and len(grouped.members[0].hits) == 1
    second = store.segments.search_members(SearchQuery("country", limit=1, offset=1), per_member=1)
    assert {g.hits[0].member for g in (grouped.members[0], second.members[0])} == {"jfk.wav", "late.wav"}
    past = store.segments.search_members(SearchQuery("country", limit=1, offset=5))
    assert (past.members, past.segments, past.member_count) == ([], 2, 2)
    nothing = store.segments.search_members(SearchQuery('""'))
    assert not nothing.understood and nothing.members == []
    english = store.segments.search_members(SearchQuery("the and of"))
    assert "english" in english.stop_words_in and english.segments == 0


def test_accents_need_not_be_typed_and_stemming_stays(pg_dsn: str) -> None:
    store = ProgressStore(pg_dsn)
    store.init_schema()
    store.archives.start(KEY, path="/x.tar.xz", bytes_total=10, owner=Owner(None, "h", 1))
    store.members.record(
        KEY,
        [
            _member("es.wav", "es", Segment(0.0, 2.0, "Buenos días, señor alcalde.")),
            _member("de.wav", "de", Segment(0.0, 2.0, "Die Züge nach München fahren heute.")),
            _member("fr.wav", "fr", Segment(0.0, 2.0, "Les élèves écoutaient la radio.")),
        ],
    )
    store.members.mark_done(KEY.archive, [(m, f"/remote/{m}") for m in ("es.wav", "de.wav", "fr.wav")])
    assert _found(store, "senor") == [("es.wav", 0.0)] and _found(store, "señor") == [("es.wav", 0.0)]
    assert _found(store, "Munchen") == [("de.wav", 0.0)]
    assert _found(store, "eleve") == [("fr.wav", 0.0)]  # unaccented, and stemmed: élèves -> élev
    assert _found(store, "zuge", language="de") == [("de.wav", 0.0)]
    assert _found(store, '"senor alcalde"') == [("es.wav", 0.0)]
    (row,) = query(pg_dsn, "SELECT DISTINCT config::text AS config FROM segments WHERE member = 'es.wav'")
    assert row["config"] == "unaccent_spanish"


def test_the_migration_moves_segments_written_before_it(store: ProgressStore, pg_dsn: str) -> None:
    """A database of version 12: its segments under the plain configurations (and Chinese under
    `simple`, in bigrams). Migrating moves the first to their accent-blind copies, keeps the
    bigrams, and search finds both."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE segments SET config = 'pg_catalog.english'::regconfig WHERE language = 'en'")
        conn.execute("DELETE FROM schema_version WHERE version >= 13")
    store.init_schema()
    configs = {r["member"]: r["config"] for r in query(pg_dsn, "SELECT member, config::text FROM segments")}
    assert configs["jfk.wav"] == "unaccent_english" and configs["zh.wav"] == "simple"
    assert _found(store, '"ask not what your country"') == [("jfk.wav", 4.5)]
    assert _found(store, "协会") == [("zh.wav", 1.0)]
