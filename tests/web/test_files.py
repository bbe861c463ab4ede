"""Where a member's files are read from: a local root that no relative path can leave, and an
rsync destination's bounded cache (a real rsync daemon on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

from streaming_pipeline.destination import Destination, Rsync
from streaming_pipeline.web.files import LocalFiles, RsyncCache, inside


def test_no_relative_path_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.flac").write_bytes(b"a")
    (tmp_path / "secret.flac").write_bytes(b"s")
    (root / "d" / "out.flac").symlink_to(tmp_path / "secret.flac")
    assert inside(root, "d/a.flac") == (root / "d" / "a.flac").resolve()
    for bad in ("../secret.flac", "/etc/passwd", "d/../../secret.flac", "d/out.flac", "", ".", "d/\0x"):
        assert inside(root, bad) is None, bad
    files = LocalFiles(Destination.parse(str(root)), root)
    assert files.path(f"{root}/d/a.flac", "flac") == (root / "d" / "a.flac").resolve()
    assert files.path(f"{root}/d/a.flac", "json") is None  # not there
    assert files.path(f"{root}/../secret.flac", "flac") is None
    assert files.path("/elsewhere/d/a.flac", "flac") is None  # not under the destination


def test_an_rsync_destination_is_cached_least_recently_used_first(tmp_path: Path, rsync_daemon) -> None:
    for name in ("a", "b", "c"):
        (rsync_daemon.data / "day").mkdir(exist_ok=True)
        (rsync_daemon.data / "day" / f"{name}.flac").write_bytes(name.encode() * 400)
    destination = Destination.parse(rsync_daemon.url)
    rsync = Rsync(destination, timeout=30, retries=2)
    cache = RsyncCache(destination, tmp_path / "cache", 1000, rsync)
    url = destination.url

    a = cache.path(url("day/a.flac"), "flac")
    assert a is not None and a.read_bytes() == b"a" * 400 and a.is_relative_to(tmp_path / "cache")
    assert cache.path(url("day/b.flac"), "flac") is not None
    assert cache.path(url("day/a.flac"), "flac") == a  # a used again: b is now the oldest
    assert cache.path(url("day/c.flac"), "flac") is not None
    assert cache.size <= 1000
    assert a.exists() and not (tmp_path / "cache" / "day" / "b.flac").exists()
    assert cache.path(url("day/missing.flac"), "flac") is None
    assert cache.has(url("day/b.flac"), "flac") and not cache.has(url("day/missing.flac"), "flac")
    assert cache.path(url("../etc/passwd"), "flac") is None
    # A server started again finds what it had, in the order it was used.
    again = RsyncCache(destination, tmp_path / "cache", 1000, rsync)
    assert again.size == cache.size
