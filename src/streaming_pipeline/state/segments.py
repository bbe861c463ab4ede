"""Transcript segments in PostgreSQL under a full-text index: written with their member's row,
searched by `streaming-pipeline search`, filled for older days by `index` (state/search_text.py
says how text is indexed in each language)."""

from __future__ import annotations

import datetime as dt
import functools
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .db import Table
from .records import MemberRecord
from .search_text import (
    CLOSE,
    CONFIGS,
    OPEN,
    bigram_query,
    bigrams,
    first_match,
    has_unspaced,
    highlight_unspaced,
    language_of,
    operators,
    plain_words,
    player_command,
    preferred,
    search_config,
    word_time,
)

# One statement per batch: the rows come as parallel arrays, the member's day and language from
# its row (which the same transaction has just written). `%(which)s` picks the members written.
_INSERT = """
    INSERT INTO segments (archive, member, seq, day, language, config, start_s, end_s, text,
                          search_text, words, speaker)
    SELECT f.archive, f.member, s.seq, f.day, coalesce(s.language, f.language), s.config::regconfig,
           s.start_s, s.end_s, s.text, s.search_text, s.words, s.speaker
    FROM unnest(%(members)s::text[], %(seqs)s::int[], %(languages)s::text[], %(configs)s::text[],
                %(starts)s::real[], %(ends)s::real[], %(texts)s::text[], %(search_texts)s::text[],
                %(words)s::jsonb[], %(speakers)s::text[])
         AS s(member, seq, language, config, start_s, end_s, text, search_text, words, speaker)
    JOIN audio_files f ON f.archive = %(archive)s AND f.member = s.member
    ON CONFLICT (archive, member, seq) DO NOTHING
"""
_DELETE = "DELETE FROM segments WHERE archive = %s AND member = ANY(%s)"
_DELETE_SPEAKERS = "DELETE FROM member_speakers WHERE archive = %s AND member = ANY(%s)"
_INSERT_SPEAKER = """
    INSERT INTO member_speakers (archive, member, speaker, seconds, first_s, centroid)
    VALUES (%s, %s, %s, %s, %s, %s::real[])
"""

# The query as each text-search configuration reads it; rows with an empty reading (only stop
# words in that language) are left out.
_PARSE = """
    SELECT c.config::text AS config, c.bigram, t::text AS tsquery
    FROM unnest(%(configs)s::regconfig[], %(bigram)s::bool[], %(texts)s::text[], %(extras)s::text[])
             AS c(config, bigram, text, extra),
         LATERAL (SELECT websearch_to_tsquery(c.config, c.text) && CASE WHEN c.extra = ''
                         THEN ''::tsquery ELSE to_tsquery(c.config, c.extra) END) AS q(t)
    WHERE numnode(t) > 0
"""

# `any_q` (every reading, OR-ed) arrives as a value, so the planner weighs it: a rare word goes
# through the full-text index, a word in a third of all segments through the table in order, which
# stops at CANDIDATES (the index would first list all of its matches). The candidates are then kept
# where their member is done and their own language's reading matches, ranked, cut to the limit,
# and only then highlighted.
_KEPT = """
    WITH own AS (
        SELECT * FROM unnest(%(configs)s::regconfig[], %(bigram)s::bool[], %(tsqueries)s::tsquery[])
            AS o(config, bigram, own_q)
    ), matched AS MATERIALIZED (
        SELECT s.* FROM segments s
        WHERE s.tsv @@ %(any_q)s::tsquery
            AND (%(language)s::text IS NULL OR s.language = %(language)s)
            AND (%(first)s::date IS NULL OR s.day >= %(first)s)
            AND (%(last)s::date IS NULL OR s.day <= %(last)s)
            AND (%(archive)s::text IS NULL OR s.archive = %(archive)s)
            AND (%(member)s::text IS NULL OR s.member = %(member)s)
            AND (%(speaker)s::text IS NULL OR s.speaker = %(speaker)s)
            AND (%(voice)s::text IS NULL OR EXISTS (
                SELECT 1 FROM member_speakers v WHERE v.archive = s.archive AND v.member = s.member
                    AND v.speaker = s.speaker AND v.voice = %(voice)s))
        LIMIT %(candidates)s
    ), kept AS (
        SELECT m.*, o.own_q, f.id AS member_id, f.slot, f.remote_path, ts_rank_cd(m.tsv, o.own_q) AS rank
        FROM matched m
        JOIN own o ON o.config = m.config AND o.bigram = (m.search_text IS NOT NULL)
        JOIN audio_files f USING (archive, member)
        WHERE f.status = 'done' AND m.tsv @@ o.own_q
            AND (%(slot)s::text IS NULL OR f.slot = %(slot)s)
            AND (%(model)s::text IS NULL OR f.model = %(model)s)
    )"""
_HIT_COLUMNS = """member_id, day, slot, archive, member, seq, language, start_s, end_s, text, words,
           remote_path, speaker, rank, search_text IS NOT NULL AS bigrams,
           ts_headline(config, text, own_q, %(headline)s) AS highlight"""
_SEARCH = (
    _KEPT
    + """, ranked AS (
        SELECT * FROM kept ORDER BY rank DESC, day, archive, member, seq LIMIT %(limit)s OFFSET %(offset)s
    )
    SELECT """
    + _HIT_COLUMNS
    + """, (SELECT count(*) FROM matched) AS candidates
    FROM ranked ORDER BY rank DESC, day, archive, member, seq
"""
)
# The web view's search: members ranked by their best hit, a page of them (limit, offset count
# members), each with its best `per_member` hits; one row of totals even when the page is empty.
_GROUPED = (
    _KEPT
    + """, members AS (
        SELECT member_id, max(rank) AS best, count(*) AS n FROM kept GROUP BY member_id
    ), page AS (
        SELECT * FROM members ORDER BY best DESC, member_id LIMIT %(limit)s OFFSET %(offset)s
    ), top AS (
        SELECT k.*, p.best, p.n,
               row_number() OVER (PARTITION BY k.member_id ORDER BY k.rank DESC, k.seq) AS r
        FROM kept k JOIN page p USING (member_id)
    ), totals AS (
        SELECT (SELECT count(*) FROM kept) AS segments, (SELECT count(*) FROM members) AS members,
               (SELECT count(*) FROM matched) AS candidates
    )
    SELECT totals.*, top.best, top.n, """
    + _HIT_COLUMNS
    + """
    FROM totals LEFT JOIN top ON top.r <= %(per_member)s
    ORDER BY top.best DESC, top.member_id, top.rank DESC, top.seq
"""
)


# Ranking reads every candidate's vector: a word in half of all segments would cost seconds. Past
# this many matches the hits are the best of the first CANDIDATES found (SearchResult.truncated).
CANDIDATES = 5000


@dataclass(frozen=True)
class SearchQuery:
    text: str  # as users type it: words, "a phrase", or, -not (websearch_to_tsquery)
    first_day: dt.date | None = None
    last_day: dt.date | None = None
    language: str | None = None
    archive: str | None = None
    member: str | None = None  # with `archive`: one member's segments (its page's hits)
    slot: str | None = None
    model: str | None = None  # as recorded: a directory's name or a hub id
    speaker: str | None = None  # S1, S2, ...: that speaker's segments (within each member)
    voice: str | None = None  # V1, V2, ...: that voice's segments, in any member (`voices` gave them)
    limit: int = 20
    offset: int = 0  # hits skipped: the page after `offset // limit` pages


@dataclass(frozen=True)
class SearchHit:
    day: dt.date
    slot: str
    archive: str
    member: str
    language: str | None
    start: float  # the segment's
    end: float
    at: float  # where to play from: the matched word's start where words were timed, else `start`
    text: str
    highlight: str  # `text` with each match between « and »
    remote_path: str  # the member's FLAC on the destination
    rank: float
    member_id: int = 0  # its row (audio_files.id): the web view's link
    speaker: str | None = None  # the segment's speaker within its member

    @property
    def player(self) -> str:
        """A line a person pastes into a shell to hear the hit."""
        return shlex.join(player_command(self.remote_path, self.at))

    def as_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(), "slot": self.slot, "archive": self.archive,
            "member": self.member, "language": self.language, "start": self.start, "end": self.end,
            "at": self.at, "text": self.text, "highlight": self.highlight,
            "remote_path": self.remote_path, "player": self.player, "rank": self.rank,
            "speaker": self.speaker,
        }  # fmt: skip


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    truncated: bool  # more segments matched than were ranked (CANDIDATES): narrow the query


@dataclass(frozen=True)
class MemberHits:
    """One member's best hits, and how many of its segments match in all."""

    hits: list[SearchHit]
    matching: int

    @property
    def more(self) -> int:
        return self.matching - len(self.hits)


@dataclass(frozen=True)
class GroupedResult:
    """A page of members with their best hits, and the totals of the whole search."""

    members: list[MemberHits]
    segments: int  # matching segments (of the CANDIDATES ranked)
    member_count: int  # members they are in
    truncated: bool
    understood: bool = True  # False: every reading of the query was empty (stop words, empty quotes)
    stop_words_in: tuple[str, ...] = ()  # configurations in which the query is only stop words


@dataclass(frozen=True)
class Searchable:
    """A day's done members as the search sees them."""

    members: int  # whose segments are recorded
    segments: int
    unindexed: int  # done members whose segments are not (yet): `index DAY` fills them


@dataclass(frozen=True)
class Storage:
    segments: int
    table_bytes: int  # with its TOAST and its other indexes
    index_bytes: int  # the full-text index


@dataclass(frozen=True)
class Unindexed:
    archive: str
    member: str
    remote_path: str


class SegmentTable(Table):
    """`segments`: written inside the callers' transactions (members.record, transcripts.replace,
    `index`), read by `search`."""

    @functools.cached_property
    def configs(self) -> frozenset[str]:
        """The text-search configurations this server has."""
        return frozenset(r["cfgname"] for r in self._db.query("SELECT cfgname FROM pg_ts_config"))

    def write(self, cur: psycopg.Cursor[Any], archive: str, records: Sequence[MemberRecord]) -> None:
        """`records`' segments in place of any the members had, in the caller's transaction (after
        the members' rows are written: the segments take their day and language)."""
        timed = [r for r in records if r.searchable_segments is not None]
        if not timed:
            return
        cur.execute(_DELETE, (archive, [r.member for r in timed]))
        columns: dict[str, list[Any]] = {
            k: []
            for k in (
                "members",
                "seqs",
                "languages",
                "configs",
                "starts",
                "ends",
                "texts",
                "search_texts",
                "words",
                "speakers",
            )
        }
        for r in timed:
            for seq, s in enumerate(r.segments):
                # Each segment in its own language's configuration (a member can hold several).
                language = s.language or r.language
                config, bigram = search_config(language, self.configs)
                columns["members"].append(r.member)
                columns["seqs"].append(seq)
                columns["languages"].append(language)
                columns["configs"].append(config)
                columns["starts"].append(s.start)
                columns["ends"].append(s.end)
                columns["texts"].append(s.text)
                columns["search_texts"].append(bigrams(s.text) if bigram else None)
                words = s.words
                columns["words"].append(
                    Jsonb([[round(w.start, 2), round(w.end, 2), w.word] for w in words]) if words else None
                )
                columns["speakers"].append(s.speaker)
        if columns["members"]:
            cur.execute(_INSERT, {"archive": archive, **columns})
        # Speakers are written with their centroids; a JSON written before the JSON carried them
        # (read back by `index`) leaves `member_speakers` as it was.
        attributed = [r for r in timed if r.speakers is not None and all(sp.centroid for sp in r.speakers)]
        if attributed:
            cur.execute(_DELETE_SPEAKERS, (archive, [r.member for r in attributed]))
            rows = [
                (archive, r.member, sp.id, sp.seconds, sp.first_s, list(sp.centroid))
                for r in attributed
                for sp in r.speakers or ()
            ]
            if rows:
                cur.executemany(_INSERT_SPEAKER, rows)

    def search(self, query: SearchQuery) -> SearchResult:
        """The best-ranked matching segments, `query.limit` of them after `query.offset`."""
        params = self._params(query)
        if params is None:
            return SearchResult([], truncated=False)
        rows = self._db.query(_SEARCH, params)
        truncated = bool(rows) and int(rows[0]["candidates"]) >= CANDIDATES
        return SearchResult([_hit(row, query.text) for row in rows], truncated)

    def search_members(self, query: SearchQuery, per_member: int = 3) -> GroupedResult:
        """The members with matching segments, ranked by their best, `query.limit` of them after
        `query.offset` members, each with its `per_member` best hits; and the search's totals."""
        params = self._params(query)
        if params is None:
            return GroupedResult([], 0, 0, truncated=False, understood=False)
        rows = self._db.query(_GROUPED, {**params, "per_member": per_member})
        # The languages that stem (not `simple`, which drops no word) in which the query read as
        # nothing: every word of it is a stop word there. None left at all: nothing to look for.
        stemming = {language_of(c) for c in self._reading_configs()} - {"simple"}
        read = {language_of(c) for c, b in zip(params["configs"], params["bigram"], strict=True) if not b}
        empty = tuple(sorted(stemming - read)) if not query.language else ()
        understood = bool(read - {"simple"}) or has_unspaced(query.text) or bool(query.language)
        groups: dict[int, MemberHits] = {}
        for row in rows:
            if row["member_id"] is None:
                continue  # the totals' row of a page past the last
            group = groups.setdefault(int(row["member_id"]), MemberHits([], int(row["n"])))
            group.hits.append(_hit(row, query.text))
        first = rows[0]
        truncated = int(first["candidates"]) >= CANDIDATES
        return GroupedResult(
            list(groups.values()), int(first["segments"]), int(first["members"]), truncated, understood, empty
        )

    def _reading_configs(self) -> list[str]:
        """The configurations a query without a language is read in: each one segments use."""
        return sorted({preferred(c, self.configs) for c in self.configs & _USED_CONFIGS})

    def _params(self, query: SearchQuery) -> dict[str, Any] | None:
        """The statement's parameters: the query as each configuration reads it (None when every
        reading is empty: only stop words, or nothing but quotes)."""
        bigram_text = bigram_query(plain_words(query.text))
        plain, extra = operators(query.text)  # prefixes and NEAR, which websearch does not read
        if query.language:
            config, bigram = search_config(query.language, self.configs)
            readings = [(config, bigram, bigram_text, "") if bigram else (config, bigram, plain, extra)]
        else:
            readings = [(c, False, plain, extra) for c in self._reading_configs()]
            readings.append(("simple", True, bigram_text, ""))
        parsed = self._db.query(
            _PARSE,
            {
                "configs": [r[0] for r in readings],
                "bigram": [r[1] for r in readings],
                "texts": [r[2] for r in readings],
                "extras": [r[3] for r in readings],
            },
        )
        if not parsed:
            return None
        return {
            "configs": [r["config"] for r in parsed],
            "bigram": [r["bigram"] for r in parsed],
            "tsqueries": [r["tsquery"] for r in parsed],
            # Most configurations read most words alike: each distinct reading once.
            "any_q": " | ".join(f"({q})" for q in sorted({r["tsquery"] for r in parsed})),
            "language": query.language,
            "first": query.first_day,
            "last": query.last_day,
            "archive": query.archive,
            "member": query.member,
            "slot": query.slot,
            "model": query.model,
            "speaker": query.speaker,
            "voice": query.voice,
            "limit": query.limit,
            "offset": query.offset,
            "candidates": CANDIDATES,
            "headline": f"HighlightAll=true, StartSel={OPEN}, StopSel={CLOSE}",
        }

    def settle(self) -> None:
        """What autovacuum would do after a bulk load, now: the full-text index's pending list
        merged and the planner's statistics fresh (search-scale, before it times queries)."""

        def settle(cur: psycopg.Cursor[Any]) -> None:
            cur.execute("SELECT gin_clean_pending_list('segments_tsv'::regclass)")
            cur.execute("ANALYZE segments, audio_files")

        self._db.transaction(settle, "settle segments")

    def storage(self) -> Storage:
        (row,) = self._db.query(
            "SELECT count(*) AS n, pg_total_relation_size('segments') - pg_relation_size('segments_tsv')"
            " AS table_bytes, pg_relation_size('segments_tsv') AS index_bytes FROM segments"
        )
        return Storage(int(row["n"]), int(row["table_bytes"]), int(row["index_bytes"]))

    def searchable(self, day: dt.date) -> Searchable:
        (row,) = self._db.query(
            "SELECT count(searchable_segments) AS members,"
            " coalesce(sum(searchable_segments), 0) AS segments,"
            " count(*) FILTER (WHERE searchable_segments IS NULL) AS unindexed"
            " FROM audio_files WHERE day = %s AND status = 'done'",
            (day,),
        )
        return Searchable(int(row["members"]), int(row["segments"]), int(row["unindexed"]))

    def unindexed(self, day: dt.date, after: tuple[str, str], limit: int) -> list[Unindexed]:
        """The day's done members without recorded segments, in (archive, member) order after
        `after` (keyset pages: each page is committed before the next is read)."""
        rows = self._db.query(
            "SELECT archive, member, remote_path FROM audio_files"
            " WHERE day = %s AND status = 'done' AND searchable_segments IS NULL"
            " AND remote_path IS NOT NULL AND (archive, member) > (%s, %s)"
            " ORDER BY archive, member LIMIT %s",
            (day, *after, limit),
        )
        return [Unindexed(r["archive"], r["member"], r["remote_path"]) for r in rows]

    def index(self, archive: str, records: Sequence[MemberRecord]) -> list[MemberRecord]:
        """Segments read back from the destination for done members that have none recorded, one
        transaction; a member another `index` filled meanwhile is left as it is. Returns the
        records this call filled."""
        update = """
            UPDATE audio_files SET searchable_segments = %s
            WHERE archive = %s AND member = %s AND status = 'done' AND searchable_segments IS NULL
        """

        def fill(cur: psycopg.Cursor[Any]) -> list[MemberRecord]:
            filled = []
            for r in records:
                cur.execute(update, (r.searchable_segments, archive, r.member))
                if cur.rowcount:
                    filled.append(r)
            self.write(cur, archive, filled)
            return filled

        return self._db.transaction(fill, "index segments")


# Every configuration a language maps to: a query without --language is parsed with each.
_USED_CONFIGS = frozenset({"simple", *CONFIGS.values()})


def _hit(row: dict[str, Any], query: str) -> SearchHit:
    text = row["text"]
    highlight = highlight_unspaced(text, query) if row["bigrams"] else row["highlight"]
    start = float(row["start_s"])
    at = word_time(text, row["words"], first_match(highlight))
    return SearchHit(
        day=row["day"],
        slot=row["slot"],
        archive=row["archive"],
        member=row["member"],
        language=row["language"],
        start=round(start, 2),
        end=round(float(row["end_s"]), 2),
        at=round(at if at is not None else start, 2),
        text=text,
        highlight=highlight,
        remote_path=row["remote_path"],
        rank=round(float(row["rank"]), 4),
        member_id=int(row["member_id"]),
        speaker=row["speaker"],
    )
