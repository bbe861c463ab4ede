from __future__ import annotations

import io
import lzma
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from streaming_pipeline.errors import ArchiveError
from streaming_pipeline.stages.archive import ArchiveReader
from streaming_pipeline.state.store import MemberRecord

from ..conftest import add_bytes


def _hostile_archive(path: Path) -> Path:
    with tarfile.open(path, "w:xz") as tar:
        add_bytes(tar, "ok/one.wav", b"RIFF-one")
        add_bytes(tar, "../escape.wav", b"evil")
        add_bytes(tar, "/etc/absolute.wav", b"evil")
        add_bytes(tar, "ok/../../up.wav", b"evil")
        add_bytes(tar, "link.wav", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_bytes(tar, "dirlink", b"", type=tarfile.SYMTYPE, linkname="/tmp")
        add_bytes(tar, "dirlink/through.wav", b"evil")  # regular file "under" the symlink
        add_bytes(tar, "hard.wav", b"", type=tarfile.LNKTYPE, linkname="ok/one.wav")
        add_bytes(tar, "dev", b"", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add_bytes(tar, "fifo", b"", type=tarfile.FIFOTYPE)
        add_bytes(tar, "ok/one.wav", b"again")
        add_bytes(tar, "ok/one.flac", b"collides with one.flac output")
        add_bytes(tar, "big.wav", b"x" * 2048)
        add_bytes(tar, "-rf.wav", b"option-like")
        add_bytes(tar, "n" * 300 + ".wav", b"long")
        add_bytes(tar, "ok/two.wav", b"RIFF-two")
    return path


def _read_all(reader: ArchiveReader) -> tuple[list, list]:
    members, rejected = [], []
    for batch in reader.batches():
        members += batch.members
        rejected += batch.rejected
    return members, rejected


def test_hostile_members_are_rejected_and_never_written(tmp_path: Path) -> None:
    archive = _hostile_archive(tmp_path / "hostile.tar.xz")
    scratch = tmp_path / "scratch"
    before = set(os.listdir(tmp_path))
    reader = ArchiveReader(archive, scratch, batch_size=100, max_member_bytes=1024)
    members, rejected = _read_all(reader)

    assert [m.name for m in members] == ["ok/one.wav", "dirlink/through.wav", "ok/one.flac", "ok/two.wav"]
    # Same stem, different members: the first keeps `one.flac`, the later one its extension too.
    assert [m.output_stem for m in members] == ["ok/one", "dirlink/through", "ok/one.flac", "ok/two"]
    reasons = {m.full_name or m.name: m.reject_reason for m in rejected}
    assert "escapes" in reasons["../escape.wav"]
    assert reasons["/etc/absolute.wav"] == "absolute path"
    assert "escapes" in reasons["ok/../../up.wav"]
    assert reasons["link.wav"].startswith("symbolic link")
    assert reasons["dirlink"].startswith("symbolic link")
    assert reasons["hard.wav"].startswith("hard link")
    assert reasons["dev"] == "device file"
    assert reasons["fifo"] == "FIFO"
    assert reasons["ok/one.wav"] == "duplicate member name"
    (duplicate,) = [m for m in rejected if m.reject_reason == "duplicate member name"]
    assert duplicate.name == "ok/one.wav\\#10"  # its own key: the first ok/one.wav has the name
    assert "exceeds the cap" in reasons["big.wav"]
    assert "starts with '-'" in reasons["-rf.wav"]
    assert reasons["n" * 300 + ".wav"] == "name too long"
    # Extracted files carry index names inside the scratch dir, never the member's name.
    for m in members:
        assert m.path is not None and m.path.is_relative_to(scratch)
        assert m.path.name[:8].isdigit()
    assert set(os.listdir(tmp_path)) == before | {"scratch"}
    assert not Path("/tmp/through.wav").exists()
    assert reader.completed


def test_non_utf8_names_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tar.xz"
    with tarfile.open(path, "w:xz", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        add_bytes(tar, "caf\xe9.wav", b"data")
        add_bytes(tar, "plain.wav", b"data")
    members, rejected = _read_all(ArchiveReader(path, tmp_path / "s", batch_size=10, max_member_bytes=99))
    assert [m.name for m in members] == ["plain.wav"]
    assert rejected[0].reject_reason == "name is not valid UTF-8"
    assert rejected[0].name == "caf\\xe9.wav"  # the byte, escaped: storable and lossless


def test_batches_and_resume_skip(tmp_path: Path) -> None:
    path = tmp_path / "many.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for i in range(25):
            add_bytes(tar, f"d/{i:03d}.wav", b"x" * 10)
    done = {f"d/{i:03d}.wav" for i in range(0, 25, 2)}
    reader = ArchiveReader(
        path, tmp_path / "s", batch_size=10, max_member_bytes=99, is_done=done.__contains__
    )
    batches = list(reader.batches())
    assert [len(b.members) + b.skipped for b in batches] == [10, 10, 5]
    assert sum(b.skipped for b in batches) == len(done)
    assert all(m.name not in done for b in batches for m in b.members)
    # Progress is measured on the compressed stream and reaches the whole file.
    assert batches[-1].compressed_bytes_read == path.stat().st_size
    assert batches[0].compressed_bytes_read <= batches[-1].compressed_bytes_read


def test_truncated_archive_yields_members_before_the_damage(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tar.xz"
    with tarfile.open(whole, "w:xz", preset=0) as tar:
        for i in range(40):
            add_bytes(tar, f"m{i:02d}.wav", os.urandom(20_000))
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar.xz"
    cut.write_bytes(data[: len(data) // 2])
    reader = ArchiveReader(cut, tmp_path / "s", batch_size=8, max_member_bytes=10**6)
    got = []
    with pytest.raises(ArchiveError, match="damaged after"):
        for batch in reader.batches():
            got += [m.name for m in batch.members]
    assert 5 < len(got) < 40
    assert got == [f"m{i:02d}.wav" for i in range(len(got))]
    assert not reader.completed


def test_not_xz_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar.xz"
    bogus.write_bytes(b"this is not xz at all" * 100)
    with pytest.raises(ArchiveError, match="damaged after 0 members"):
        list(ArchiveReader(bogus, tmp_path / "s", batch_size=8, max_member_bytes=99).batches())


def test_bad_checksum_is_detected(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        add_bytes(tar, "a.wav", b"a" * 5000)
    blob = bytearray(lzma.compress(raw.getvalue(), check=lzma.CHECK_CRC64))
    blob[-30] ^= 0xFF  # corrupt the stream's tail (check / index)
    path = tmp_path / "crc.tar.xz"
    path.write_bytes(bytes(blob))
    with pytest.raises(ArchiveError):
        list(ArchiveReader(path, tmp_path / "s", batch_size=8, max_member_bytes=10**6).batches())


def test_members_past_the_cap_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "many.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for i in range(5):
            add_bytes(tar, f"m{i}.wav", b"RIFF")
    reader = ArchiveReader(path, tmp_path / "scratch", batch_size=10, max_member_bytes=1024, max_members=3)
    members, rejected = _read_all(reader)
    assert [m.name for m in members] == ["m0.wav", "m1.wav", "m2.wav"]
    assert [m.reject_reason for m in rejected] == ["more than 3 members in the archive (the cap)"] * 2
    assert reader.completed


def _pax_member(tar: tarfile.TarFile, name: str, data: bytes, pax: dict[str, str] | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = dict(pax or {})
    tar.addfile(info, io.BytesIO(data))


def test_names_no_path_or_database_can_hold_are_rejected_escaped(tmp_path: Path) -> None:
    path = tmp_path / "names.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _pax_member(tar, "x", b"empty", {"path": ""})
        _pax_member(tar, ".", b"dot")
        _pax_member(tar, "x", b"nul", {"path": "a\x00b.wav"})
        _pax_member(tar, "tab\there.wav", b"control")
        _pax_member(tar, "x", b"long", {"path": "d/" + "é" * 1200 + ".wav"})
        _pax_member(tar, "ok.wav", b"fine")
    xz = tmp_path / "names.tar.xz"
    xz.write_bytes(lzma.compress(path.read_bytes()))
    reader = ArchiveReader(xz, tmp_path / "scratch", batch_size=100, max_member_bytes=99)
    members, rejected = _read_all(reader)
    assert [m.name for m in members] == ["ok.wav"] and reader.completed
    got = {m.name: m.reject_reason for m in rejected}
    assert got[""] == "empty name"
    assert got["."] == "empty name"
    assert got["a\\x00b.wav"] == "name contains NUL"
    assert got["tab\\x09here.wav"] == "name contains control character U+0009"
    (long,) = [m for m in rejected if m.full_name]
    assert long.reject_reason == "name too long" and long.full_name == "d/" + "é" * 1200 + ".wav"
    assert long.name.endswith("\\#4") and len(long.name) < 1010
    assert all("\x00" not in m.name for m in rejected)


def test_sparse_members_are_rejected_without_being_written(tmp_path: Path) -> None:
    """GNU tar's sparse formats (old GNU and pax 1.0): a member declaring 10 GiB of holes."""
    import shutil
    import subprocess

    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holes.wav", "wb") as fh:
        fh.write(b"RIFF" + b"\0" * 40)
        fh.truncate(10 * 1024**3)
    (src / "fine.wav").write_bytes(b"RIFF-fine")
    for fmt in ("gnu", "pax"):
        archive = tmp_path / f"sparse-{fmt}.tar.xz"
        subprocess.run(
            [
                "tar",
                f"--format={fmt}",
                "--sparse",
                "-cJf",
                str(archive),
                "-C",
                str(src),
                "holes.wav",
                "fine.wav",
            ],
            check=True,
        )
        scratch = tmp_path / f"scratch-{fmt}"
        members, rejected = _read_all(
            ArchiveReader(archive, scratch, batch_size=10, max_member_bytes=20 * 1024**3)
        )
        assert [m.name for m in members] == ["fine.wav"]
        assert [(m.name, m.reject_reason) for m in rejected] == [
            ("holes.wav", "sparse member (audio is never sparse)")
        ]
        assert archive.stat().st_size < 2 * 1024**2


def test_a_malformed_header_of_any_error_type_ends_the_archive_as_damaged(tmp_path: Path) -> None:
    """A damaged GNU sparse map makes tarfile raise ValueError, not TarError: the members before
    it are read, then the archive is reported damaged (no traceback, no crash)."""
    path = tmp_path / "bad-sparse.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _pax_member(tar, "first.wav", b"RIFF-first")
        _pax_member(
            tar,
            "bad.wav",
            b"x" * 10,
            {"GNU.sparse.size": "100", "GNU.sparse.map": "0,abc", "GNU.sparse.name": "b"},
        )
        _pax_member(tar, "after.wav", b"RIFF-after")
    xz = tmp_path / "bad-sparse.tar.xz"
    xz.write_bytes(lzma.compress(path.read_bytes()))
    reader = ArchiveReader(xz, tmp_path / "scratch", batch_size=10, max_member_bytes=99)
    got = []
    with pytest.raises(
        ArchiveError, match=r"damaged after 1 members: HeaderError: malformed member header \(ValueError"
    ):
        for batch in reader.batches():
            got += [m.name for m in batch.members]
    assert got == ["first.wav"] and not reader.completed


def _declaring(size: int, fmt: int) -> bytes:
    """A tar whose second member declares `size` bytes and carries 512."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=fmt) as tar:
        add_bytes(tar, "first.wav", b"RIFF-first")
        info = tarfile.TarInfo("huge.wav")
        info.size = size
        header = info.tobuf(fmt, "utf-8", "surrogateescape")
        tar.fileobj.write(header)  # the header, not the data
        tar.fileobj.write(b"x" * 100 + bytes(412))
        tar.offset += len(header) + 512
    return plain.getvalue()


@pytest.mark.parametrize(
    ("size", "fmt"),
    [
        (2**66, tarfile.GNU_FORMAT),
        (2**66, tarfile.PAX_FORMAT),
        (2**40, tarfile.GNU_FORMAT),
        (None, tarfile.PAX_FORMAT),
    ],
    ids=["2^66-gnu-base256", "2^66-pax", "2^40", "just-past-the-end"],
)
def test_a_member_declaring_more_than_the_stream_holds_ends_the_archive_as_damaged(
    tmp_path: Path, size: int | None, fmt: int
) -> None:
    """A 1 KB archive whose second member declares more bytes than follow: skipping it stops at
    the end of the compressed stream, within seconds, instead of reading nothing for ever, and is
    damage, not the end of the archive; the first member is read and the second recorded."""
    if size is None:  # one byte more than everything after its header (padding and end blocks)
        size = len(_declaring(0, fmt)) - 1536 + 1
    xz = tmp_path / "huge.tar.xz"
    xz.write_bytes(lzma.compress(_declaring(size, fmt)))
    assert xz.stat().st_size < 2048
    reader = ArchiveReader(xz, tmp_path / "scratch", batch_size=10, max_member_bytes=1000)
    members, rejected = [], []
    started = time.monotonic()
    with pytest.raises(ArchiveError, match="damaged after 2 members"):
        for batch in reader.batches():
            members += [m.name for m in batch.members]
            rejected += [m.name for m in batch.rejected]
    assert time.monotonic() - started < 10
    assert members == ["first.wav"] and rejected == ["huge.wav"] and not reader.completed


# -- archives made by GNU tar, then damaged: the stream must reach its real end ---------------


def _gnu_tar(tmp_path: Path, files: dict[str, bytes], *extra: str) -> bytearray:
    """An uncompressed archive made by GNU tar (the format broadcast archives come in)."""
    src = tmp_path / "src"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    out = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--format=gnu", "-cf", str(out), "-C", str(src), *extra, *files], check=True)
    return bytearray(out.read_bytes())


def _xz(tmp_path: Path, data: bytes, name: str = "damaged.tar.xz") -> Path:
    path = tmp_path / name
    path.write_bytes(lzma.compress(bytes(data)))
    return path


def _outcome(path: Path, tmp_path: Path) -> tuple[list[str], list[str], str | None]:
    reader = ArchiveReader(path, tmp_path / f"scratch-{path.name}", batch_size=2, max_member_bytes=10**6)
    members, rejected, error = [], [], None
    try:
        for batch in reader.batches():
            members += [m.name for m in batch.members]
            rejected += [f"{m.name}: {m.reject_reason}" for m in batch.rejected]
    except ArchiveError as exc:
        error = str(exc)
    assert reader.completed == (error is None)
    return members, rejected, error


THREE = {"a.wav": b"A" * 700, "b.wav": b"B" * 300, "c.wav": b"C" * 10}
SECOND_HEADER = 512 + 1024  # a.wav's header and its 700 bytes in two blocks


def test_a_gnu_tar_archive_read_to_its_end_is_complete(tmp_path: Path) -> None:
    members, rejected, error = _outcome(_xz(tmp_path, _gnu_tar(tmp_path, THREE)), tmp_path)
    assert (members, rejected, error) == (["a.wav", "b.wav", "c.wav"], [], None)


def test_a_zeroed_checksum_in_the_second_header_is_damage_not_the_end(tmp_path: Path) -> None:
    """tarfile's stream reader takes a bad checksum after the first member for the end of the
    archive; GNU tar reports it (exit 2). The members after it were silently missing."""
    data = _gnu_tar(tmp_path, THREE)
    data[SECOND_HEADER + 148 : SECOND_HEADER + 156] = bytes(8)
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    assert subprocess.run(["tar", "-tf", str(tmp_path / "bad.tar")], capture_output=True).returncode == 2
    members, _, error = _outcome(_xz(tmp_path, data), tmp_path)
    assert members == ["a.wav"]
    assert (
        error is not None
        and f"damaged after 1 members: ReadError: bad header at offset {SECOND_HEADER}" in error
    )


def test_a_zeroed_second_header_with_members_after_it_is_damage(tmp_path: Path) -> None:
    data = _gnu_tar(tmp_path, THREE)
    data[SECOND_HEADER : SECOND_HEADER + 512] = bytes(512)  # looks like the end-of-archive block
    members, _, error = _outcome(_xz(tmp_path, data), tmp_path)
    assert members == ["a.wav"]
    assert error is not None and f"data after the end-of-archive block at offset {SECOND_HEADER}" in error


def test_a_stream_that_ends_after_a_member_without_end_blocks_is_complete(tmp_path: Path) -> None:
    data = _gnu_tar(tmp_path, THREE)
    end = SECOND_HEADER + 512 + 512 + 512 + 512  # b.wav (1 block), c.wav (1 block)
    assert not data[end:].strip(b"\0")
    members, _, error = _outcome(_xz(tmp_path, data[:end]), tmp_path)
    assert (members, error) == (["a.wav", "b.wav", "c.wav"], None)
    members, _, error = _outcome(_xz(tmp_path, data[: end - 505], "cut.tar.xz"), tmp_path)  # in c.wav
    assert members == ["a.wav", "b.wav"] and error is not None and "damaged after 3 members" in error


def test_a_damaged_sparse_map_in_the_first_member_is_damage_not_a_traceback(tmp_path: Path) -> None:
    """The first header is read by tarfile.open, outside the loop that turned later header
    errors into damage: a ValueError from the sparse map stopped the worker with a traceback."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _pax_member(tar, "bad.wav", b"x" * 10, {"GNU.sparse.size": "100", "GNU.sparse.map": "0,abc"})
        _pax_member(tar, "after.wav", b"RIFF-after")
    members, _, error = _outcome(_xz(tmp_path, plain.getvalue()), tmp_path)
    assert members == []
    assert (
        error is not None
        and "damaged after 0 members: HeaderError: malformed first header (ValueError" in error
    )


def test_a_member_declaring_more_than_two_to_the_63_bytes_is_rejected_with_its_size(tmp_path: Path) -> None:
    members, rejected = [], []
    reader = ArchiveReader(
        _xz(tmp_path, _declaring(2**64 + 5, tarfile.GNU_FORMAT)),
        tmp_path / "s",
        batch_size=9,
        max_member_bytes=99,
    )
    with pytest.raises(ArchiveError, match="damaged after 2 members"):
        for batch in reader.batches():
            members += batch.members
            rejected += batch.rejected
    assert [m.name for m in members] == ["first.wav"]
    (huge,) = rejected
    assert huge.size == 2**64 + 5 and f"declared size {2**64 + 5} exceeds" in str(huge.reject_reason)
    # PostgreSQL's bigint cannot hold it: its row says so in the reason, not in size_bytes.
    assert MemberRecord(huge.name, "rejected", size_bytes=huge.size).size_bytes is None


def test_a_symlink_and_a_file_of_one_name_each_get_their_own_key(tmp_path: Path) -> None:
    for order in (["link", "file"], ["file", "link"]):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for kind in order:
                if kind == "link":
                    add_bytes(tar, "a.wav", b"", type=tarfile.SYMTYPE, linkname="b.wav")
                else:
                    add_bytes(tar, "a.wav", b"RIFF-a")
            add_bytes(tar, "b.wav", b"RIFF-b")
        reader = ArchiveReader(
            _xz(tmp_path, raw.getvalue(), f"{order[0]}.tar.xz"),
            tmp_path / order[0],
            batch_size=9,
            max_member_bytes=99,
        )
        (batch,) = list(reader.batches())
        keys = [m.name for m in batch.members] + [m.name for m in batch.rejected]
        assert len(set(keys)) == 3, keys  # three members seen, three rows
        if order[0] == "link":  # the first of a name keeps it; the file after is a duplicate
            assert [m.name for m in batch.members] == ["b.wav"]
            assert {m.name: m.reject_reason for m in batch.rejected} == {
                "a.wav": "symbolic link to 'b.wav'",
                "a.wav\\#1": "duplicate member name",
            }
        else:
            assert [m.name for m in batch.members] == ["a.wav", "b.wav"]
            assert {m.name: m.reject_reason for m in batch.rejected} == {
                "a.wav\\#1": "symbolic link to 'b.wav'"
            }
