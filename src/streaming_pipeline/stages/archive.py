"""Stream members out of a .tar.xz without seeking, listing or extracting it whole.

Modelled on webdataset's tariterators: one pass over tarfile's stream mode, members handed out
in batches, and tarfile's member cache cleared as we go so memory does not grow with the member
count. Extracted files get index-based names in the scratch dir, so no member name ever becomes a
path on disk before it has been validated.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import lzma
import os
import posixpath
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Self, cast

from ..errors import ArchiveError, ScratchFullError
from ..member_files import SUFFIXES

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
# A rejected member's name is its key in PostgreSQL: longer escaped names are cut (the whole
# name goes to `full_name`), as are duplicates' (a unique key cannot repeat).
MAX_KEY_CHARS = 1000
COPY_CHUNK = 1024 * 1024
_SAFE_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Member:
    index: int
    name: str  # as recorded: the member path, or for a rejected member its escaped name (`escape_name`)
    size: int
    path: Path | None = None
    reject_reason: str | None = None
    output_stem: str = ""  # path of its .flac and .json under DATE/SLOT/, without the suffix
    full_name: str | None = None  # the whole escaped name, where `name` had to be cut or keyed


def escape_name(raw: str) -> str:
    """A lossless, printable, PostgreSQL-safe form of any member name: backslash as \\\\, control
    characters (NUL included) and bytes that are not UTF-8 (tarfile's surrogate escapes) as
    \\xNN. Names the pipeline accepts contain none of these, so they are stored unchanged."""
    out = []
    for char in raw:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def output_stems(name: str) -> Iterator[str]:
    """Candidate output paths (without .flac) for a member, in order of preference: its path
    without the extension (`talk.wav` -> `talk`), then with it (`talk.wav`), then numbered
    (`talk.wav~2`, ...). The reader gives each member the first one no earlier member took."""
    path = PurePosixPath(name)
    yield str(path.with_suffix("")) if path.suffix else name
    if path.suffix:
        yield name
    n = 2
    while True:
        yield f"{name}~{n}"
        n += 1


class OutputNames:
    """The output paths an archive's members were given so far. A member's files (FLAC, JSON,
    subtitles) may be neither another member's file nor a folder that another's path needs:
    `a.wav` is written as `a.flac`, so `a.flac/x.wav` goes to `a.flac~2/x.flac`."""

    SUFFIXES = SUFFIXES

    def __init__(self) -> None:
        self._files: set[int] = set()  # digests, as for names: ~100 bytes a member
        self._folders: set[int] = set()

    def take(self, name: str) -> str:
        name = self._clear_folders(name)
        for stem in output_stems(name):
            files = [_digest(stem + suffix) for suffix in self.SUFFIXES]
            if not any(f in self._files or f in self._folders for f in files):
                break
        self._files.update(files)
        self._folders.update(_digest(f) for f in _folders(name))
        return stem

    def _clear_folders(self, name: str) -> str:
        """`name` with each folder that is another member's file renamed `<folder>~2` (never a
        file: every file ends in one of SUFFIXES)."""
        while clash := next((f for f in _folders(name) if _digest(f) in self._files), None):
            name = f"{clash}~2{name[len(clash) :]}"
        return name


def _folders(name: str) -> list[str]:
    """The folders a path lies in, outermost first."""
    return [str(p) for p in reversed(PurePosixPath(name).parents) if str(p) != "."]


@dataclass
class Batch:
    number: int
    directory: Path
    members: list[Member] = field(default_factory=list)
    rejected: list[Member] = field(default_factory=list)
    skipped: int = 0
    compressed_bytes_read: int = 0


class _CountingReader:
    """Counts compressed bytes consumed, for progress without knowing the member count."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self._raw.close()


class _EndOfStream:
    """The decompressed stream, ending in an error once it is spent. tarfile skips a member it
    does not extract by reading past it, block by block, and a spent stream answers every read
    with nothing: a 1 KB archive whose member declares 2**66 bytes kept the reader spinning for
    ever. A stream that has answered nothing this many times in a row is past its end."""

    EMPTY_READS = 8

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._empty = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data or size == 0:
            self._empty = 0
            return data
        self._empty += 1
        if self._empty > self.EMPTY_READS:
            raise EOFError(
                "the compressed stream ended inside a member (its declared size runs past the end)"
            )
        return data

    def close(self) -> None:
        self._raw.close()


# Why tarfile's stream reader stopped: CPython's tarfile defines these, its stubs do not.
_EMPTY_HEADER: type[tarfile.HeaderError] = vars(tarfile)["EmptyHeaderError"]
_EOF_HEADER: type[tarfile.HeaderError] = vars(tarfile)["EOFHeaderError"]
_TRUNCATED_HEADER: type[tarfile.HeaderError] = vars(tarfile)["TruncatedHeaderError"]


class _Header(tarfile.TarInfo):
    """A header that tells the stream why it ended: tarfile's `next()` takes a zero block, a bad
    checksum and a stream cut inside a header alike for the end of the archive, and only the
    first is one."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:  # the outermost call (a pax header's) is recorded last
            if isinstance(tar, _TarStream):
                tar.header_error = exc
            raise


class _TarStream(tarfile.TarFile):
    header_error: tarfile.HeaderError | None = None
    members: list[tarfile.TarInfo]  # tarfile's cache of the headers read (not in its stubs)

    def end_problem(self) -> str | None:
        """Why the stream, where tarfile stopped, is not at the real end of the archive (None when
        it is): the end-of-archive blocks with nothing but zeros after them, or the end of the
        stream right after a member."""
        error = self.header_error
        if error is None or isinstance(error, _EMPTY_HEADER):
            return None
        if isinstance(error, _EOF_HEADER):
            while data := self.fileobj.read(COPY_CHUNK):
                if data.strip(b"\0"):
                    return f"data after the end-of-archive block at offset {self.offset}"
            return None
        if isinstance(error, _TRUNCATED_HEADER):
            return f"the stream ends inside the header at offset {self.offset}"
        return f"bad header at offset {self.offset} ({error})"


def _open_stream(fileobj: BinaryIO) -> _TarStream:
    """tarfile's stream reader over `fileobj`; the first header is read here, so whatever it
    raises is damage too (a ValueError from a broken GNU sparse map, say), not a traceback."""
    try:
        return _TarStream.open(fileobj=fileobj, mode="r|", tarinfo=_Header)
    except (tarfile.TarError, EOFError, lzma.LZMAError, OSError):
        raise
    except Exception as exc:
        raise tarfile.HeaderError(f"malformed first header ({type(exc).__name__}: {exc})") from exc


def _read_past(stream: tarfile.TarFile, info: tarfile.TarInfo) -> None:
    """Read a member's data that is not kept, to its declared end: data that ends first is
    damage (tarfile's "unexpected end of data"), where tarfile's own skip would take the end of
    the stream for the end of the archive and call a truncated archive complete."""
    if not info.isreg() or info.issparse():
        return
    source = stream.extractfile(info)
    while source is not None and source.read(COPY_CHUNK):
        pass


def check_member(info: tarfile.TarInfo, max_member_bytes: int) -> str | None:
    """Why this member must not be written to disk, or None when it is safe."""
    if info.issym():
        return f"symbolic link to {info.linkname!r}"
    if info.islnk():
        return f"hard link to {info.linkname!r}"
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "FIFO"
    if info.issparse():
        return "sparse member (audio is never sparse)"
    if not info.isreg():
        return f"unsupported member type {info.type!r}"
    name = info.name
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if "\x00" in name:
        return "name contains NUL"
    if control := _CONTROL.search(name):
        return f"name contains control character U+{ord(control.group()):04X}"
    if "\\" in name:
        return "name contains a backslash"
    if name.startswith("/") or posixpath.isabs(name):
        return "absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        return "empty name"
    if ".." in parts:
        return "path escapes the archive root ('..')"
    if any(p.startswith("-") for p in parts):
        return "path component starts with '-'"
    if len(encoded) > MAX_NAME_BYTES or any(len(p.encode()) > MAX_COMPONENT_BYTES for p in parts):
        return "name too long"
    if info.size > max_member_bytes:
        return f"declared size {info.size} exceeds the cap of {max_member_bytes} bytes"
    return None


def normalise_name(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


class ArchiveReader:
    """One pass over an archive, yielding batches of extracted members.

    `is_done(name)` lets a resumed run skip members already uploaded without extracting them
    (the stream must still be read through: xz offers no seeking). `on_extracted(member, batch)`
    is called as each member lands on disk, so its conversion can start while the rest of its
    batch is still being read.
    """

    def __init__(
        self,
        path: Path,
        scratch_dir: Path,
        *,
        batch_size: int,
        max_member_bytes: int,
        max_members: int = 1_000_000,
        is_done: Callable[[str], bool] = lambda _name: False,
        on_extracted: Callable[[Member, Batch], None] | None = None,
    ) -> None:
        self.path = path
        self.scratch_dir = scratch_dir
        self.batch_size = batch_size
        self.max_member_bytes = max_member_bytes
        self.max_members = max_members
        self.is_done = is_done
        self.on_extracted = on_extracted
        self.compressed_size = path.stat().st_size
        self.members_seen = 0
        self.completed = False

    def batches(self) -> Iterator[Batch]:
        """Yield batches; after a damaged stream, yield what was read, then raise ArchiveError."""
        raw = open(self.path, "rb")  # noqa: SIM115 - closed in finally, shared with tarfile
        counter = _CountingReader(raw)
        # Digests, not names: duplicate detection costs ~100 bytes a member, not the names.
        names: set[int] = set()
        outputs = OutputNames()
        number = 0
        batch = self._new_batch(number)
        error: BaseException | None = None
        try:
            # lzma.open decompresses in bounded chunks; tarfile's own "r|xz" re-slices its whole
            # decompressed buffer per 512-byte read, quadratic on compressible input (silence).
            with (
                lzma.open(cast(BinaryIO, counter)) as decompressed,  # it reads, and counts
                _open_stream(cast(BinaryIO, _EndOfStream(cast(BinaryIO, decompressed)))) as stream,
            ):
                headers = iter(stream)
                while (info := self._next_header(headers)) is not None:
                    self._take(stream, info, batch, names, outputs)
                    stream.members = []  # tarfile keeps every TarInfo otherwise
                    batch.compressed_bytes_read = counter.bytes_read
                    if len(batch.members) + len(batch.rejected) + batch.skipped >= self.batch_size:
                        yield batch
                        number += 1
                        batch = self._new_batch(number)
                if (problem := stream.end_problem()) is not None:
                    raise tarfile.ReadError(problem)
            self.completed = True
        except (tarfile.TarError, EOFError, lzma.LZMAError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise
            error = exc
        finally:
            raw.close()
        batch.compressed_bytes_read = counter.bytes_read
        if batch.members or batch.rejected or batch.skipped:
            yield batch
        else:
            shutil.rmtree(batch.directory, ignore_errors=True)
        if error is not None:
            raise ArchiveError(
                f"archive {self.path} is damaged after {self.members_seen} members: "
                f"{type(error).__name__}: {error}"
            ) from error

    @staticmethod
    def _next_header(headers: Iterator[tarfile.TarInfo]) -> tarfile.TarInfo | None:
        """The next member's header. tarfile raises more than TarError on malformed headers (a
        ValueError from a damaged GNU sparse map, UnicodeError...): any of them means the archive
        is damaged here, which the caller reports as such."""
        try:
            return next(headers, None)
        except (tarfile.TarError, EOFError, lzma.LZMAError, OSError):
            raise
        except Exception as exc:
            raise tarfile.HeaderError(f"malformed member header ({type(exc).__name__}: {exc})") from exc

    def _new_batch(self, number: int) -> Batch:
        directory = self.scratch_dir / f"batch-{number:06d}"
        (directory / "in").mkdir(parents=True, exist_ok=True)
        return Batch(number=number, directory=directory)

    def _take(
        self,
        stream: tarfile.TarFile,
        info: tarfile.TarInfo,
        batch: Batch,
        names: set[int],
        outputs: OutputNames,
    ) -> None:
        if info.isdir():
            return
        self.members_seen += 1
        index = self.members_seen - 1
        reason = check_member(info, self.max_member_bytes)
        if reason is None and self.members_seen > self.max_members:
            reason = f"more than {self.max_members} members in the archive (the cap)"
        if reason is None and _digest(normalise_name(info.name)) in names:
            reason = "duplicate member name"
        if reason is not None:
            # Its own row even where its name is another member's (a symlink and a file of one name).
            member = _rejected(index, info, reason, taken=_digest(escape_name(info.name)) in names)
            names.add(_digest(member.name))
            batch.rejected.append(member)
            _read_past(stream, info)
            return
        name = normalise_name(info.name)
        member = Member(index=index, name=name, size=info.size)
        names.add(_digest(name))
        member.output_stem = outputs.take(name)
        if self.is_done(name):
            batch.skipped += 1
            _read_past(stream, info)
            return
        suffix = PurePosixPath(name).suffix.lower()
        target = batch.directory / "in" / f"{index:08d}{suffix if _SAFE_SUFFIX.match(suffix) else ''}"
        source = stream.extractfile(info)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise ArchiveError(f"no data for member {name!r}")
        try:
            with open(target, "xb") as out:
                shutil.copyfileobj(source, out, COPY_CHUNK)
        except OSError as exc:
            target.unlink(missing_ok=True)
            if exc.errno == errno.ENOSPC:
                free = shutil.disk_usage(batch.directory).free
                raise ScratchFullError(
                    f"scratch directory {self.scratch_dir} is full: member {name!r} needs "
                    f"{info.size} bytes, {free} free"
                ) from exc
            raise
        except BaseException:
            target.unlink(missing_ok=True)  # never leave a partial member behind
            raise
        member.path = target
        batch.members.append(member)
        if self.on_extracted is not None:
            self.on_extracted(member, batch)


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _rejected(index: int, info: tarfile.TarInfo, reason: str, *, taken: bool = False) -> Member:
    """A rejected member, recorded under its escaped name. Where that cannot be its key (too long
    for an index, or a name an earlier member has: a duplicate, `taken`) the key is the escaped
    name cut to MAX_KEY_CHARS plus `\\#<member index>` (no escaped name contains `\\#`), and
    the whole escaped name goes to `full_name`."""
    escaped = escape_name(info.name)
    member = Member(index=index, name=escaped, size=info.size, reject_reason=reason)
    if len(escaped) > MAX_KEY_CHARS or reason == "duplicate member name" or taken:
        member.name = f"{escaped[:MAX_KEY_CHARS]}\\#{index}"
        member.full_name = escaped
    return member


def ensure_writable_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
