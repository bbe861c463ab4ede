"""The web view's routes: search, a member's page and files, the days and a day as it runs.

Handlers are plain functions, so Starlette runs each in its thread pool; each borrows a
read-only store from the pool for its queries. Pages are Jinja2 templates with autoescaping:
whatever comes from an archive or a transcript is text in them, never markup.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from ..errors import ConfigError, StoreError
from ..member_files import FileKind
from ..state.browse import Choices, SegmentView, TimedText
from ..state.store import SCHEMA_VERSION, ProgressStore
from ..status.day import day_report
from ..status.report import collect, render
from ..transcript import Transcript
from . import views
from .files import FileSource

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATEMENT_TIMEOUT_MS = 5000
BORROW_TIMEOUT_S = 30.0  # a request waits this long for a free connection, then is answered 503
CHOICES_TTL_S = 60.0  # the search form's choices over every day are read at most this often
SLOT_PAGE = 50  # members a page of a slot
# What each page takes in its query string (anything else is a 400 that says so).
TAKES = {
    "home": frozenset(),
    "search": frozenset({"q", "days", "from", "to", "slot", "language", "model", "page"}),
    "member": frozenset({"t", "play", "speaker", "q"}),
    "member_file": frozenset({"download"}),
    "day": frozenset(),
    "slot": frozenset({"sort", "page"}),
    "day_report": frozenset(),
    "day_json": frozenset(),
}


class StorePool:
    """Read-only stores for the request threads: a store is one connection running one
    transaction at a time, so each request borrows one of `size`."""

    def __init__(self, dsn: str, size: int = 4) -> None:
        options = {"read_only_ms": STATEMENT_TIMEOUT_MS, "attempts": 2, "patience": 5.0}
        self._all = [ProgressStore(dsn, **options) for _ in range(size)]
        self._free: queue.Queue[ProgressStore] = queue.Queue()
        for store in self._all:
            self._free.put(store)

    def check(self) -> None:
        """A wrong DSN, a missing database or an old schema: one clear line, before serving."""
        with self.borrow() as store:
            store.check()
            version = store.schema_version()
        if version < SCHEMA_VERSION:
            raise ConfigError(
                f"schema at version {version}, not {SCHEMA_VERSION}: run streaming-pipeline init-db"
            )

    @contextmanager
    def borrow(self) -> Iterator[ProgressStore]:
        try:
            store = self._free.get(timeout=BORROW_TIMEOUT_S)
        except queue.Empty:
            raise StoreError(f"every database connection was busy for {BORROW_TIMEOUT_S:.0f} s") from None
        try:
            yield store
        finally:
            self._free.put(store)

    def close(self) -> None:
        for store in self._all:
            store.close()


class MediaResponse(FileResponse):
    """A file for the page's audio element: an open-ended Range is answered with a chunk
    (views.capped_range), so seeking in an hour-long member fetches that chunk, not the rest of
    the file in flight. It carries ETag and Last-Modified: an If-None-Match that names it is a
    304, with or without a Range."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.set_stat_headers(os.stat(self.path))
        # Not kept by the browser: Chromium reads a cacheable FLAC ahead (a seek to 30:00 of an
        # hour fetched 5.6 MiB with `no-cache`, 671 KiB with `no-store`); revalidation with
        # If-None-Match is still answered for clients that keep a copy themselves.
        self.headers["cache-control"] = "no-store"
        asked = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"if-none-match"), "")
        tags = {t.strip().removeprefix("W/") for t in asked.split(",")}
        if self.headers["etag"] in tags or "*" in tags:
            kept = {k: self.headers[k] for k in ("etag", "last-modified", "cache-control")}
            await Response(status_code=304, headers=kept)(scope, receive, send)
            return
        headers = [
            (k, views.capped_range(v.decode("latin-1")).encode() if k == b"range" else v)
            for k, v in scope["headers"]
        ]
        await super().__call__({**scope, "headers": headers}, receive, send)


class HashedStatic(StaticFiles):
    """The CSS, scripts and icon, linked as `/static/NAME?v=HASH` (`static_url`): a link with
    the file's current hash may be kept for a year, since a changed file gets a new link; any
    other request is checked again each time."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory)
        self.hashes = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in directory.iterdir()
            if p.is_file()
        }

    def url(self, name: str) -> str:
        return f"/static/{name}?v={self.hashes[name]}"

    def file_response(
        self, full_path: Any, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        given = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("v")
        current = self.hashes.get(Path(str(full_path)).name)
        lasting = given is not None and given == current
        response.headers["cache-control"] = "public, max-age=31536000, immutable" if lasting else "no-cache"
        return response


@dataclass(frozen=True)
class Where:
    """How the pages name the destination (its spec, or where it is mounted): never a password."""

    label: str


class WebView:
    """The routes over a store pool and the member files (request threads)."""

    def __init__(self, pool: StorePool, files: FileSource, where: Where) -> None:
        self.pool = pool
        self.files = files
        self.where = where
        self.templates = Jinja2Templates(directory=HERE / "templates")
        env = self.templates.env
        env.filters["clock"] = views.clock
        env.filters["marked"] = views.marked
        env.globals["play_from"] = views.play_from
        env.globals["PAGE"] = views.PAGE
        self.static = HashedStatic(HERE / "static")
        env.globals["static"] = self.static.url
        self._all_choices: tuple[float, Choices | None] = (-CHOICES_TTL_S, None)

    def app(self) -> Starlette:
        routes = [
            Route("/", self.home),
            Route("/search", self.search),
            Route("/member/{member_id:int}", self.member),
            Route("/member/{member_id:int}/{kind:str}", self.member_file),
            Route("/days/{day:str}", self.day),
            Route("/days/{day:str}/report", self.day_report),
            Route("/days/{day:str}/slots/{slot:str}", self.slot),
            Route("/api/days/{day:str}", self.day_json),
            Mount("/static", self.static, name="static"),
        ]
        handlers = {StoreError: self._store_down, HTTPException: self._http_error}
        return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]

    @staticmethod
    def _params(request: Request, page: str) -> dict[str, str]:
        """The page's query parameters, checked (views.read_params): a wrong one is a 400 that
        says what was wrong, before any of it reaches the database."""
        try:
            return views.read_params(request.scope.get("query_string", b""), TAKES[page])
        except views.BadInput as exc:
            raise HTTPException(400, str(exc)) from None

    def _page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return self.templates.TemplateResponse(request, name, {"where": self.where, **context}, status)

    # -- search ----------------------------------------------------------------------------------
    def home(self, request: Request) -> Response:
        self._params(request, "home")
        with self.pool.borrow() as store:
            days = store.browse.days()
            choices = self._choices(store)
        return self._page(request, "home.html", form=views.SearchForm(), days=days, choices=choices)

    def search(self, request: Request) -> Response:
        form = views.SearchForm.of(self._params(request, "search"))
        found = None
        with self.pool.borrow() as store:
            span = form.span() if form.problem is None else (None, None)
            # every day's choices come from the minute's cache; a range's are read for it
            choices = store.browse.choices(*span) if span != (None, None) else self._choices(store)
            if form.problem is None and (unknown := form.unknown_choice(choices)):
                form = replace(form, problem=unknown)
            if form.text and form.problem is None:
                found = store.segments.search_members(form.query(), views.HITS_PER_MEMBER)
        pages = max(1, -(-found.member_count // views.PAGE)) if found else 1
        return self._page(
            request, "search.html", form=form, found=found, pages=pages, choices=choices,
            status=400 if form.problem else 200,
        )  # fmt: skip

    def _choices(self, store: ProgressStore) -> Choices:
        """The search form's choices over every day: a scan of every member, so read once a
        minute, not per page."""
        read_at, choices = self._all_choices
        if choices is None or time.monotonic() - read_at > CHOICES_TTL_S:
            choices = store.browse.choices()
            self._all_choices = (time.monotonic(), choices)
        return choices

    # -- a member ----------------------------------------------------------------------------------
    def member(self, request: Request) -> Response:
        params = self._params(request, "member")
        with self.pool.borrow() as store:
            member = store.browse.member(request.path_params["member_id"])
            if member is None:
                raise HTTPException(404, "no such member")
            segments = store.browse.segments(member.archive, member.member) if member.indexed else []
            history = store.transcripts.history(member.archive, member.member)
            speakers = store.browse.speakers(member.archive, member.member, member.day)
            query = views.member_query(params.get("q", ""), member.archive, member.member)
            hits = store.segments.search(query).hits if query is not None else []
        audio = member.remote_path is not None and self.files.has(member.remote_path, FileKind.FLAC)
        if not member.indexed and member.remote_path is not None:
            segments = self._segments_from_json(member.remote_path)
        kinds = {k.value for k in FileKind}
        downloads = [k for k in ("flac", "json", *member.subtitles) if k in kinds] if audio else []
        named = list(
            dict.fromkeys([*(v.speaker for v in speakers), *(s.speaker for s in segments if s.speaker)])
        )
        only = params.get("speaker")
        if only is not None:
            if only not in named:
                have = ", ".join(named) or "none"
                raise HTTPException(400, f"this member has no speaker {only!r} (its speakers: {have})")
            segments = [s for s in segments if s.speaker == only]
        return self._page(
            request, "member.html", member=member, segments=segments, history=history, audio=audio,
            downloads=downloads, words=any(s.words for s in segments), status=200 if audio else 404,
            speakers=speakers, named={n: i % 8 + 1 for i, n in enumerate(named)}, only=only,
            moment=views.start_moment(params.get("t"), member.duration_s), play=params.get("play") == "1",
            query=params.get("q", ""), hits=views.hit_marks(hits),
        )  # fmt: skip

    def _segments_from_json(self, remote_path: str) -> list[SegmentView]:
        """A member done before segments were recorded: its transcript read from its JSON."""
        path = self.files.path(remote_path, FileKind.JSON)
        if path is None:
            return []
        try:
            transcript = Transcript.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: its JSON cannot be read: %s", remote_path, exc)
            return []
        return [
            SegmentView(s.start, s.end, s.text, s.language,
                        tuple(TimedText(w.start, w.end, w.word) for w in s.words or ()), s.speaker)
            for s in transcript.segments
        ]  # fmt: skip

    def member_file(self, request: Request) -> Response:
        params = self._params(request, "member_file")
        try:
            kind = FileKind(request.path_params["kind"])
        except ValueError:
            raise HTTPException(404, "no such file") from None
        with self.pool.borrow() as store:
            member = store.browse.member(request.path_params["member_id"])
        if member is None or member.remote_path is None:
            raise HTTPException(404, "no such member")
        path = self.files.path(member.remote_path, kind)
        if path is None:
            raise HTTPException(404, f"the member's {kind} file is not there")
        if "download" in params:
            name = views.download_name(member.day, member.slot, member.member, kind.suffix)
            return FileResponse(path, media_type=kind.media_type, filename=name)
        return MediaResponse(path, media_type=kind.media_type)

    # -- days --------------------------------------------------------------------------------------
    def day(self, request: Request) -> Response:
        self._params(request, "day")
        day = self._day(request)
        with self.pool.borrow() as store:
            report = day_report(store, day, transcripts=False)
        if not report.archives:
            raise HTTPException(404, f"no archives recorded for {day}")
        return self._page(request, "day.html", day=views.day_json(report))

    def slot(self, request: Request) -> Response:
        """A slot's members, a page at a time, by name or duration: browsing without a search."""
        params = self._params(request, "slot")
        day = self._day(request)
        try:
            slot = views.check_text("the slot", request.path_params["slot"])
        except views.BadInput as exc:
            raise HTTPException(400, str(exc)) from None
        listing = views.SlotListing.of(params)
        if listing.problem:
            raise HTTPException(400, listing.problem)
        with self.pool.borrow() as store:
            found = store.browse.slot_members(
                day, slot, listing.sort, SLOT_PAGE, (listing.page - 1) * SLOT_PAGE
            )
        if found.total == 0:
            raise HTTPException(404, f"no members recorded for {day} {slot}")
        pages = max(1, -(-found.total // SLOT_PAGE))
        if listing.page > pages:
            raise HTTPException(404, f"page {listing.page} is past the last ({pages}) of {day} {slot}")
        return self._page(
            request, "slot.html", day=day.isoformat(), slot=slot, listing=listing, found=found, pages=pages,
        )  # fmt: skip

    def day_json(self, request: Request) -> Response:
        self._params(request, "day_json")
        day = self._day(request)
        with self.pool.borrow() as store:
            report = day_report(store, day, transcripts=False)
        return JSONResponse(views.day_json(report))

    def day_report(self, request: Request) -> Response:
        """The day's HTML report, made now. Its scripts are inline, so this page's policy allows
        exactly those (by their hashes) and nothing else."""
        self._params(request, "day_report")
        day = self._day(request)
        with self.pool.borrow() as store:
            page = render(collect(store, [day]))
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
            for body in re.findall(r"<script>(.*?)</script>", page, flags=re.S)
        )
        policy = f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:"
        return HTMLResponse(page, headers={"content-security-policy": policy})

    @staticmethod
    def _day(request: Request) -> dt.date:
        day = views.parse_day(request.path_params["day"])
        if day is None:
            raise HTTPException(404, "not a day")
        return day

    def _http_error(self, request: Request, exc: HTTPException) -> Response:
        return self._page(request, "error.html", status=exc.status_code, message=exc.detail)

    def _store_down(self, request: Request, exc: Exception) -> Response:
        log.error("%s: %s", request.url.path, exc)
        message = "The progress database cannot be read now."
        return self._page(request, "error.html", status=503, message=message)
