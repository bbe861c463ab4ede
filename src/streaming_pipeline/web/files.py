"""Where a member's files are read from: the destination's folder (or where it is mounted), or,
for `host:path` and `rsync://` destinations, a bounded cache filled by rsync on demand.

No part of a URL reaches the filesystem: a file is named by the member's row (its recorded
`remote_path`) and a suffix from a fixed set, and the path must stay inside the root."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from ..destination import Destination, Rsync
from ..errors import UploadError
from ..member_files import FileKind, MemberFiles

log = logging.getLogger(__name__)

# rsync's exit when a listed file is not there ("some files could not be transferred").
_MISSING = 23


class FileSource(Protocol):
    """Where the web view gets a member's files: a local path, or an rsync cache."""

    def path(self, remote_path: str, kind: FileKind) -> Path | None:
        """The local file of the member whose FLAC is `remote_path`, of `kind`, or
        None when it is not there (or would lie outside the root)."""
        ...

    def has(self, remote_path: str, kind: FileKind) -> bool:
        """Whether that file is there, without fetching it."""
        ...


def inside(root: Path, relpath: str) -> Path | None:
    """`root/relpath` when it stays inside `root` after resolving links and `..`."""
    if not relpath or relpath.startswith("/") or "\0" in relpath:
        return None
    base = root.resolve()
    path = (base / relpath).resolve()
    return path if path.is_relative_to(base) and path != base else None


def sibling(relpath: str, kind: FileKind) -> str:
    """The relative path of the member's `kind` file, from its FLAC's."""
    return MemberFiles.of_flac(relpath).name(FileKind(kind))


class LocalFiles:
    """A destination on a local path, or mounted here at `root` (--audio-root). Holds no state:
    any request thread."""

    def __init__(self, destination: Destination, root: Path) -> None:
        self._destination = destination
        self._root = root

    def path(self, remote_path: str, kind: FileKind) -> Path | None:
        try:
            relpath = self._destination.relpath(remote_path)
        except UploadError:
            return None
        path = inside(self._root, sibling(relpath, kind))
        return path if path is not None and path.is_file() else None

    def has(self, remote_path: str, kind: FileKind) -> bool:
        return self.path(remote_path, kind) is not None


class RsyncCache:
    """Files of a remote destination fetched into `folder` when asked for, at most `limit_bytes`
    kept: the least recently used go first. Any request thread; one fetch per file at a time."""

    def __init__(self, destination: Destination, folder: Path, limit_bytes: int, rsync: Rsync) -> None:
        self._destination = destination
        self._folder = folder
        self._limit = limit_bytes
        self._rsync = rsync
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        folder.mkdir(parents=True, exist_ok=True)
        # What an earlier server left, oldest use first.
        found = [p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder))]
        found.sort(key=lambda p: p.stat().st_atime)
        self._sizes: OrderedDict[str, int] = OrderedDict(
            (str(p.relative_to(folder)), p.stat().st_size) for p in found
        )

    @property
    def size(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def path(self, remote_path: str, kind: FileKind) -> Path | None:
        try:
            relpath = sibling(self._destination.relpath(remote_path), kind)
        except UploadError:
            return None
        target = inside(self._folder, relpath)
        if target is None:
            return None
        with self._lock:
            if relpath in self._sizes and target.is_file():
                self._sizes.move_to_end(relpath)
                return target
            fetching = self._fetching.setdefault(relpath, threading.Lock())
        with fetching:  # a second request for the same file waits for the first's fetch
            fetched = target.is_file() or self._fetch(relpath)
            with self._lock:
                self._fetching.pop(relpath, None)
                if not fetched:
                    return None
                self._sizes[relpath] = target.stat().st_size
                self._sizes.move_to_end(relpath)
                self._evict(keep=relpath)
        return target

    def has(self, remote_path: str, kind: FileKind) -> bool:
        try:
            relpath = sibling(self._destination.relpath(remote_path), kind)
        except UploadError:
            return False
        with self._lock:
            if relpath in self._sizes:
                return True
        with tempfile.TemporaryDirectory(dir=self._folder, prefix=".check-") as work:
            try:
                return relpath in self._rsync.existing([relpath], Path(work))
            except UploadError as exc:
                log.warning("could not list %s: %s", relpath, exc)
                return False

    def _fetch(self, relpath: str) -> bool:
        try:
            self._rsync.fetch([relpath], self._folder, label=f"web view: {relpath}")
        except UploadError as exc:
            if exc.returncode != _MISSING:
                log.warning("could not fetch %s: %s", relpath, exc)
            return False
        return (self._folder / relpath).is_file()

    def _evict(self, keep: str) -> None:
        """Least recently used first, until the cache fits (the file just fetched stays)."""
        total = sum(self._sizes.values())
        for relpath in list(self._sizes):
            if total <= self._limit:
                break
            if relpath == keep:
                continue
            total -= self._sizes.pop(relpath)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._folder / relpath)  # a response reading it keeps its open file
            log.info("web view cache: %s evicted", relpath)


def _hidden(relpath: Path) -> bool:
    """rsync's partial files and this cache's work folders."""
    return any(part.startswith(".") for part in relpath.parts)
