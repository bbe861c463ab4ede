"""A month of transcripts, generated, to measure `search` (`streaming-pipeline search-scale`).

What is real: PostgreSQL with the product's schema, the members written through the workers' own
`members.record` (their segments in the same transaction) and `mark_done`, and the queries through
`store.segments.search`, the code `search` runs. What is SYNTHETIC: the text. Segments are
sentences of pseudo-words drawn from a Zipf distribution (like words in speech, a few are very
common and most are rare), 80 % English, 10 % French, 5 % German, 5 % Chinese (characters drawn
the same way), 20 segments per member, spread over `days` days.

Queries, a top-20 each, by kind: a word of each frequency tier (ranks 1-10: in a large share of
all segments; 100-1000; beyond 1000: a name or a place), a two-word phrase taken from a segment, a
`word or word` query, and a Chinese word. Reported: median and p95 latency per kind and over all,
the insert rate, and the sizes of the table and of its full-text index per million segments.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..state.embedded_pg import EmbeddedPostgres
from ..state.segments import SearchQuery
from ..state.states import MemberStatus
from ..state.store import ArchiveKey, MemberRecord, Owner, ProgressStore
from ..transcript import Segment
from .web_scale import WebScaleResult, add_members, measure, measure_seek, serving, write_hour_flac

FIRST_DAY = dt.date(2001, 1, 1)  # synthetic days, far from real ones
SEGMENTS_PER_MEMBER = 20
MEMBERS_PER_ARCHIVE = 100
BATCH = 200  # members per `record` transaction
LANGUAGES = (("en", 0.80), ("fr", 0.10), ("de", 0.05), ("zh", 0.05))
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["an", "er", "is", "or", "un"]


@dataclass
class SearchScaleResult:
    segments: int
    days: int
    insert_s: float
    table_bytes: int
    index_bytes: int
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    hits: dict[str, list[int]] = field(default_factory=dict)
    # members.record of one BATCH, the same members with and without their segments, interleaved
    record_ms: dict[str, list[float]] = field(default_factory=dict)
    web: WebScaleResult | None = None  # --http: the same month through `serve`
    kinds: dict[str, list[str]] = field(default_factory=dict)  # the queries of each kind

    def lines(self) -> list[str]:
        per_million = 1_000_000 / max(1, self.segments)
        out = [
            f"{self.segments} segments over {self.days} days inserted in {self.insert_s:.0f} s "
            f"({self.segments / self.insert_s:.0f} segments/s through members.record)",
            f"per million segments: table {self.table_bytes * per_million / 2**20:.0f} MiB, "
            f"full-text index {self.index_bytes * per_million / 2**20:.0f} MiB",
            f"{'query kind':<24} {'n':>4} {'median ms':>10} {'p95 ms':>8} {'hits returned':>14}",
        ]
        every: list[float] = []
        for kind, times in self.latencies_ms.items():
            every += times
            out.append(
                f"{kind:<24} {len(times):>4} {statistics.median(times):>10.1f} {_p95(times):>8.1f} "
                f"{statistics.median(self.hits[kind]):>14.0f}"
            )
        out.append(f"{'all':<24} {len(every):>4} {statistics.median(every):>10.1f} {_p95(every):>8.1f}")
        if self.record_ms:
            bare, timed = (statistics.median(self.record_ms[k]) for k in ("without", "with"))
            out.append(
                f"recording a batch of {BATCH} members (median of {len(self.record_ms['with'])}): "
                f"{bare:.1f} ms without segments, {timed:.1f} ms with {SEGMENTS_PER_MEMBER} each "
                f"(+{(timed - bare) / BATCH:.2f} ms a member)"
            )
        if self.web is not None:
            out += self.web.lines()
        return out


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


class _Text:
    """Pseudo-words and Chinese characters by Zipf rank."""

    def __init__(self, rng: np.random.Generator, vocabulary: int = 50_000) -> None:
        self.rng = rng
        words: set[str] = set()
        while len(words) < vocabulary:
            n = int(rng.integers(2, 5))
            words.add("".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), n)))
        self.words = sorted(words, key=lambda w: (len(w), w))  # rank 0: the most frequent
        self.cdf = _zipf_cdf(vocabulary)
        self.hanzi = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
        self.hanzi_cdf = _zipf_cdf(len(self.hanzi))

    def sentence(self, language: str) -> str:
        if language == "zh":
            return "".join(self.hanzi[i] for i in np.searchsorted(self.hanzi_cdf, self.rng.random(14)))
        n = int(self.rng.integers(6, 18))
        return " ".join(self.words[i] for i in np.searchsorted(self.cdf, self.rng.random(n)))


def _record_cost(store: ProgressStore, text: _Text, rounds: int) -> dict[str, list[float]]:
    """What segments add to a worker's `members.record`: the same English members recorded with
    and without theirs, in turn, into archives of a day before the searched month."""
    day = FIRST_DAY - dt.timedelta(days=1)
    times: dict[str, list[float]] = {"with": [], "without": []}
    for r in range(rounds):
        segments = [
            [
                Segment(float(s * 5), float(s * 5 + 4.5), text.sentence("en"))
                for s in range(SEGMENTS_PER_MEMBER)
            ]
            for _ in range(BATCH)
        ]
        order = ("with", "without") if r % 2 else ("without", "with")
        for kind in order:
            key = ArchiveKey(f"{day}/{kind}{r:02d}.tar.xz", day, f"{kind}{r:02d}")
            store.archives.start(key, path=f"/in/{key.archive}", bytes_total=0, owner=Owner(None, "h", 0))
            records = [
                MemberRecord(
                    f"m{m:04d}.wav", MemberStatus.UPLOADING, language="en",
                    remote_path=f"/remote/{key.archive}/m{m}",
                    searchable_segments=len(segs) if kind == "with" else None,
                    segments=segs if kind == "with" else (),
                )
                for m, segs in enumerate(segments)
            ]  # fmt: skip
            t0 = time.perf_counter()
            store.members.record(key, records)
            times[kind].append((time.perf_counter() - t0) * 1000)
    return times


def _zipf_cdf(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1)
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


def run_search_scale(
    segments: int = 1_000_000,
    days: int = 31,
    queries: int = 40,
    dsn: str | None = None,
    seed: int = 7,
    http: bool = False,
) -> SearchScaleResult:
    """Generate, insert and query; an embedded PostgreSQL in a temporary folder unless `dsn`.
    `http`: then the same queries, member pages and a seek through `serve` (web_scale.py)."""
    with tempfile.TemporaryDirectory(prefix="streaming-pipeline-search-scale-") as tmp:
        server = None
        if dsn is None:
            Path(tmp).chmod(0o755)  # the server runs as `postgres`
            server = EmbeddedPostgres(Path(tmp) / "pg")
            dsn = server.start()
        try:
            store = ProgressStore(dsn)
            store.init_schema()
            remote = Path(tmp) / "remote" if http else None
            result = _run(store, segments, days, queries, np.random.default_rng(seed), remote)
            if remote is not None:
                result.web = _web(store, dsn, remote, result.kinds, Path(tmp))
            store.close()
            return result
        finally:
            if server is not None:
                server.stop()


def _web(
    store: ProgressStore, dsn: str, remote: Path, kinds: dict[str, list[str]], tmp: Path
) -> WebScaleResult:
    write_hour_flac(tmp / "hour.flac")
    hour_id, members = add_members(store, remote, tmp / "hour.flac", sample=40)
    store.segments.settle()
    with serving(dsn, remote, tmp / "serve.log") as host:
        day = f"/days/{FIRST_DAY}"
        pages = {
            "days (/)": "/",
            "a day": day,
            "a slot": f"{day}/slots/0000",
            "a day's report": f"{day}/report",
            "grouped search": "/search?" + urllib.parse.urlencode({"q": next(iter(kinds.values()))[0]}),
        }
        web = measure(host, kinds, members, hour_id, pages=pages)
        web.hour_flac_bytes = next(remote.rglob("programme.flac")).stat().st_size
        measure_seek(host, hour_id, web, tmp)
    return web


def _fill(
    store: ProgressStore,
    text: _Text,
    total: int,
    days: int,
    queries: int,
    rng: np.random.Generator,
    remote: Path | None = None,
) -> list[str]:
    """`total` segments over `days` days, recorded as a worker records them; English phrases
    taken from them for the phrase queries."""
    langs = [lang for lang, _ in LANGUAGES]
    lang_cdf = np.cumsum([share for _, share in LANGUAGES])
    members = total // SEGMENTS_PER_MEMBER
    per_day = -(-members // days)
    phrases: list[str] = []
    for d in range(days):
        day = FIRST_DAY + dt.timedelta(days=d)
        todo = min(per_day, members - d * per_day)
        for a in range(-(-todo // MEMBERS_PER_ARCHIVE)):
            key = ArchiveKey(f"{day}/{a:04d}.tar.xz", day, f"{a:04d}")
            store.archives.start(key, path=f"/in/{key.archive}", bytes_total=0, owner=Owner(None, "h", 0))
            names = [f"m{m:04d}.wav" for m in range(min(MEMBERS_PER_ARCHIVE, todo - a * MEMBERS_PER_ARCHIVE))]
            for i in range(0, len(names), BATCH):
                records = []
                for name in names[i : i + BATCH]:
                    language = langs[int(np.searchsorted(lang_cdf, rng.random()))]
                    segs = [
                        Segment(float(s * 5), float(s * 5 + 4.5), text.sentence(language))
                        for s in range(SEGMENTS_PER_MEMBER)
                    ]
                    if language == "en" and len(phrases) < queries:
                        phrases.append(" ".join(segs[0].text.split()[2:4]))
                    records.append(
                        MemberRecord(
                            name, MemberStatus.UPLOADING, language=language,
                            remote_path=f"{remote or '/remote'}/{day}/{key.slot}/{name[:-4]}.flac",
                            searchable_segments=len(segs), segments=segs,
                        )
                    )  # fmt: skip
                store.members.record(key, records)
                store.members.mark_done(key.archive, [(r.member, r.remote_path or "") for r in records])
    return phrases


def _query_kinds(
    text: _Text, phrases: list[str], queries: int, rng: np.random.Generator
) -> dict[str, list[str]]:
    return {
        "word, ranks 1-10": [text.words[int(i)] for i in rng.integers(0, 10, queries)],
        "word, ranks 100-1000": [text.words[int(i)] for i in rng.integers(100, 1000, queries)],
        "word, ranks > 1000": [text.words[int(i)] for i in rng.integers(1000, len(text.words), queries)],
        '"two-word phrase"': [f'"{p}"' for p in phrases],
        "word or word": [
            f"{text.words[int(i)]} or {text.words[int(j)]}"
            for i, j in zip(rng.integers(100, 5000, queries), rng.integers(100, 5000, queries), strict=True)
        ],
        "Chinese two characters": [
            "".join(text.hanzi[int(i)] for i in rng.integers(0, 50, 2)) for _ in range(queries)
        ],
    }


def _run(
    store: ProgressStore,
    total: int,
    days: int,
    queries: int,
    rng: np.random.Generator,
    remote: Path | None = None,
) -> SearchScaleResult:
    text = _Text(rng)
    started = time.monotonic()
    phrases = _fill(store, text, total, days, queries, rng, remote)
    insert_s = time.monotonic() - started
    store.segments.settle()
    size = store.segments.storage()
    result = SearchScaleResult(size.segments, days, insert_s, size.table_bytes, size.index_bytes)
    kinds = result.kinds = _query_kinds(text, phrases, queries, rng)
    for kind, texts in kinds.items():
        result.latencies_ms[kind], result.hits[kind] = [], []
        for q in texts:
            t0 = time.perf_counter()
            hits = store.segments.search(SearchQuery(q, limit=20)).hits
            result.latencies_ms[kind].append((time.perf_counter() - t0) * 1000)
            result.hits[kind].append(len(hits))
    result.record_ms = _record_cost(store, text, rounds=10)
    return result
