"""How transcript text becomes searchable, and how a hit finds its second: pure functions, no
database (state/segments.py runs them against PostgreSQL's full-text search).

A segment is indexed with the text-search configuration of its member's detected language where
PostgreSQL has one (`pg_ts_config`: stemming and stop words), else `simple`. Chinese, Japanese and
the other languages written without spaces have no word boundaries PostgreSQL can see and no
tokenizer extension is assumed, so their text is indexed as overlapping character bigrams
("東京都" -> "東京 京都") under `simple`, and a query's runs of those scripts become phrases of the
same bigrams: a word of two or more characters is found wherever it occurs, inside longer words
too (a single character is found only where it stands alone).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Whisper's language codes -> PostgreSQL's configurations of the standard distribution.
CONFIGS = {
    "ar": "arabic", "hy": "armenian", "eu": "basque", "ca": "catalan", "da": "danish", "nl": "dutch",
    "en": "english", "fi": "finnish", "fr": "french", "de": "german", "el": "greek", "hi": "hindi",
    "hu": "hungarian", "id": "indonesian", "ga": "irish", "it": "italian", "lt": "lithuanian",
    "ne": "nepali", "no": "norwegian", "nn": "norwegian", "pt": "portuguese", "ro": "romanian",
    "ru": "russian", "sr": "serbian", "es": "spanish", "sv": "swedish", "ta": "tamil", "tr": "turkish",
    "yi": "yiddish",
}  # fmt: skip
# Written without spaces between words: indexed as character bigrams.
BIGRAM_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km", "bo"})
# Han, kana, Thai, Lao, Tibetan, Myanmar, Khmer and half-width katakana: the characters bigrammed.
_UNSPACED = re.compile(
    "[\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]+"
)
OPEN, CLOSE = "\u00ab", "\u00bb"  # « » around a match in a highlighted segment


def has_unspaced(text: str) -> bool:
    """Whether `text` holds a script written without spaces (read in bigrams)."""
    return _UNSPACED.search(text) is not None


# Migration 0013's copies of the configurations that read accented letters as plain ones.
UNACCENT = "unaccent_"


def preferred(config: str, available: Iterable[str]) -> str:
    """`config`'s accent-blind copy where the server has it (migration 0013), else `config`."""
    return UNACCENT + config if UNACCENT + config in set(available) else config


def language_of(config: str) -> str:
    """A configuration's name as the pages say it: `unaccent_english` -> english."""
    return config.removeprefix(UNACCENT)


def search_config(language: str | None, available: Iterable[str]) -> tuple[str, bool]:
    """(configuration, bigrams) for a segment in `language`; `available` is what the server has."""
    have = set(available)
    lang = (language or "").lower()
    if lang in BIGRAM_LANGUAGES:
        return "simple", True
    config = CONFIGS.get(lang, "simple")
    return preferred(config if config in have else "simple", have), False


def bigrams(text: str) -> str:
    """`text` with each run of unspaced script split into its overlapping character pairs."""

    def pairs(m: re.Match[str]) -> str:
        run = m.group(0)
        return " " + (" ".join(run[i : i + 2] for i in range(len(run) - 1)) if len(run) > 1 else run) + " "

    return " ".join(_UNSPACED.sub(pairs, text).split())


# What websearch_to_tsquery does not read, read here: `print*` (words that start so) and
# `bible NEAR/3 printed` (the two at most N words apart, either order; NEAR alone is NEAR/5).
NEAR_DEFAULT = 5
NEAR_MAX = 20
_TERM = r"[^\s\"*()|&!<>:-][^\s\"*()|&!<>:]*\*?"
_NEAR = re.compile(rf"({_TERM})\s+NEAR(?:/(\d+))?\s+({_TERM})")
_PREFIX = re.compile(r"(?<![^\s\"])(-?)([^\s\"*()|&!<>:-][^\s\"*()|&!<>:]*)\*(?=[\s\"]|$)")


def _lexeme(term: str) -> str:
    """A term as to_tsquery reads one quoted value (its configuration normalises it), `:*` for a prefix."""
    word, prefix = (term[:-1], ":*") if term.endswith("*") else (term, "")
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'" + prefix


def operators(query: str) -> tuple[str, str]:
    """`query` as (what websearch_to_tsquery reads, a to_tsquery expression for the rest): each
    NEAR and each prefix taken out of the first and written, quoted, into the second; both
    ANDed by the search. A query without them is `(query, "")`."""
    parts: list[str] = []

    def near(m: re.Match[str]) -> str:
        n = max(1, min(NEAR_MAX, int(m[2]) if m[2] else NEAR_DEFAULT))
        a, b = _lexeme(m[1]), _lexeme(m[3])
        ways = [f"{x} <{k}> {y}" for k in range(1, n + 1) for x, y in ((a, b), (b, a))]
        parts.append("(" + " | ".join(ways) + ")")
        return " "

    def prefix(m: re.Match[str]) -> str:
        if _inside_quotes(rest, m.start()):
            return m[2]  # a phrase's words are words: the star dropped
        parts.append(("!" if m[1] else "") + _lexeme(m[2] + "*"))
        return " "

    rest = _NEAR.sub(near, query)
    rest = _PREFIX.sub(prefix, rest)  # `prefix` reads `rest` as it was before this substitution
    return " ".join(rest.split()), " & ".join(parts)


def plain_words(query: str) -> str:
    """`query` with NEAR and `*` read as plain words (the bigram reading takes them so)."""
    return " ".join(re.sub(r"\bNEAR(?:/\d+)?\b|\*", " ", query).split())


def bigram_query(query: str) -> str:
    """A user's query for bigram-indexed text: each run of unspaced script becomes a quoted phrase
    of its bigrams (inside a phrase the user quoted, just its bigrams)."""

    def phrase(m: re.Match[str]) -> str:
        run = m.group(0)
        grams = " ".join(run[i : i + 2] for i in range(len(run) - 1)) if len(run) > 1 else run
        before = query[m.start() - 1] if m.start() else " "
        after = query[m.end()] if m.end() < len(query) else " "
        text = grams if _inside_quotes(query, m.start()) else f'"{grams}"'
        return (" " if before not in ' -"' else "") + text + (" " if after not in ' "' else "")

    return _UNSPACED.sub(phrase, query)


def _inside_quotes(text: str, at: int) -> bool:
    return text.count('"', 0, at) % 2 == 1


def highlight_unspaced(text: str, query: str) -> str:
    """`text` with each occurrence of the query's unspaced-script runs marked (PostgreSQL's
    ts_headline cannot mark what it indexed as bigrams)."""
    runs = sorted({m.group(0) for m in _UNSPACED.finditer(query)}, key=len, reverse=True)
    if not runs:
        return text
    pattern = re.compile("|".join(re.escape(r) for r in runs))
    return pattern.sub(lambda m: f"{OPEN}{m.group(0)}{CLOSE}", text)


def first_match(highlighted: str) -> int | None:
    """The character offset, in the plain segment text, of the first marked match."""
    at = highlighted.find(OPEN)
    return None if at < 0 else at


def word_time(text: str, words: Sequence[Sequence[object]] | None, offset: int | None) -> float | None:
    """The start of the word of `text` at character `offset`, from the segment's timed words
    ([start, end, word] each, in order; their text is the segment's text up to spacing)."""
    if not words or offset is None:
        return None
    cursor = 0
    for start, _end, word in words:
        token = str(word).strip()
        if not token:
            continue
        at = text.find(token, cursor)
        if at < 0:
            continue
        cursor = at + len(token)
        if cursor > offset:
            return float(start) if isinstance(start, int | float) else None
    return None


def player_command(url: str, seconds: float) -> list[str]:
    """What a person pastes to hear the hit: `ffplay -ss 73.2 URL` (shlex-joined by the caller)."""
    return ["ffplay", "-ss", f"{max(0.0, seconds):.1f}", url]
