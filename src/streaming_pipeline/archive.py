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
from typing import BinaryIO

from .errors import ArchiveError, ScratchFullError

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255
COPY_CHUNK = 1024 * 1024
_SAFE_SUFFIX = re.compile(r"^\.[a-z0-9]{1,8}$")


@dataclass
class Member:
    index: int
    name: str
    size: int
    path: Path | None = None
    reject_reason: str | None = None

    @property
    def output_stem(self) -> str:
        """Member path without its extension: the name of its .flac and .json on the remote."""
        return str(PurePosixPath(self.name).with_suffix(""))


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
    if not info.isreg():
        return f"unsupported member type {info.type!r}"
    name = info.name
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if "\x00" in name or "\\" in name:
        return "name contains NUL or backslash"
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
        outputs: dict[int, int] = {}
        number = 0
        batch = self._new_batch(number)
        error: BaseException | None = None
        try:
            # lzma.open decompresses in bounded chunks; tarfile's own "r|xz" re-slices its whole
            # decompressed buffer per 512-byte read, quadratic on compressible input (silence).
            with (
                lzma.open(counter) as decompressed,  # type: ignore[arg-type]
                tarfile.open(fileobj=decompressed, mode="r|") as stream,
            ):
                for info in stream:
                    self._take(stream, info, batch, names, outputs)
                    stream.members = []  # tarfile keeps every TarInfo otherwise
                    batch.compressed_bytes_read = counter.bytes_read
                    if len(batch.members) + len(batch.rejected) + batch.skipped >= self.batch_size:
                        yield batch
                        number += 1
                        batch = self._new_batch(number)
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
        outputs: dict[int, int],
    ) -> None:
        if info.isdir():
            return
        self.members_seen += 1
        index = self.members_seen - 1
        reason = check_member(info, self.max_member_bytes)
        if reason is None and self.members_seen > self.max_members:
            reason = f"more than {self.max_members} members in the archive (the cap)"
        name = normalise_name(info.name) if reason is None else _printable(info.name)
        member = Member(index=index, name=name, size=info.size)
        name_key, stem_key = _digest(name), _digest(member.output_stem)
        if reason is None and name_key in names:
            reason = "duplicate member name"
        if reason is None and stem_key in outputs:
            reason = f"output name {member.output_stem}.flac collides with member #{outputs[stem_key]}"
        if reason is not None:
            member.reject_reason = reason
            batch.rejected.append(member)
            return
        names.add(name_key)
        outputs[stem_key] = index
        if self.is_done(name):
            batch.skipped += 1
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


def _printable(name: str) -> str:
    """A loggable, storable form of a hostile name (surrogates escaped, length capped)."""
    safe = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= 1024 else safe[:1024] + "..."


def ensure_writable_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
