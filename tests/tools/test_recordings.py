"""The test recordings' manifest and its checks (tools/recordings.py): every file has a sha256, a
source and a licence; the checks pass on the team's copy of the sets and name a missing, cut or
changed file; a copy made with rsync from that copy checks out; a verbatim file is fetched, checked
before it is put in place, and refused when its bytes differ. The fetch is served by a local HTTP
server standing in for GitHub's raw files (the tests have no network)."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming_pipeline.errors import ConfigError
from streaming_pipeline.tools import recordings
from streaming_pipeline.tools.recordings import SETS, Recording, check, read_manifest

from ..conftest import SHARED


@pytest.fixture(scope="module")
def manifest() -> list[Recording]:
    return read_manifest()


@pytest.fixture(scope="module")
def sets() -> Path:
    if not all((SHARED / name).is_dir() for name in SETS):
        pytest.skip(f"the test recordings are not at {SHARED} (scripts/get-test-recordings.sh DIR)")
    return SHARED


def test_every_recording_has_a_checksum_a_source_and_a_licence(manifest: list[Recording]) -> None:
    assert {r.set for r in manifest} == set(SETS)
    for r in manifest:
        assert re.fullmatch(r"[0-9a-f]{64}", r.sha256), r.file
        assert r.bytes > 0 and r.source and r.licence and r.made, r.file
    audio = [r for r in manifest if r.file.endswith((".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"))]
    assert all(r.source != "the set's own" for r in audio), "each recording names where it came from"
    for r in (r for r in manifest if r.verbatim):
        url = r.url()
        assert url and re.fullmatch(
            r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+", url
        )
    assert sum(r.verbatim for r in manifest) >= 40, "realspeech's copies of public files can be fetched"


def test_the_checks_pass_on_the_sets_and_name_what_is_wrong(
    tmp_path: Path, manifest: list[Recording], sets: Path
) -> None:
    assert check(sets, manifest) == []
    small = sorted((r for r in manifest if r.set == "realspeech"), key=lambda r: r.bytes)[:3]
    for r in small:
        (tmp_path / r.set / r.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sets / r.set / r.file, tmp_path / r.set / r.file)
    assert check(tmp_path, small) == []
    changed, cut, gone = (tmp_path / r.set / r.file for r in small)
    data = bytearray(changed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-1])
    gone.unlink()
    problems = check(tmp_path, small)
    assert problems == [
        f"realspeech/{small[0].file}: sha256 differs from the manifest's",
        f"realspeech/{small[1].file}: {small[1].bytes - 1} bytes, the manifest says {small[1].bytes}",
        f"realspeech/{small[2].file}: missing",
    ]


def test_a_copy_made_with_rsync_checks_out(tmp_path: Path, manifest: list[Recording], sets: Path) -> None:
    recordings.copy_sets(str(sets), tmp_path, sets=("speakers-dev",))
    assert check(tmp_path, [r for r in manifest if r.set == "speakers-dev"]) == []


@pytest.fixture
def raw_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP server in GitHub's raw layout (repo/commit/path), standing in for the network."""
    root = tmp_path / "raw"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(recordings, "RAW", f"http://127.0.0.1:{server.server_port}")
    yield root
    server.shutdown()
    server.server_close()


def _serve(root: Path, r: Recording, data: bytes) -> None:
    repo, _, rest = r.source.partition("@")
    commit, _, path = rest.partition(":")
    (root / repo / commit / path).parent.mkdir(parents=True, exist_ok=True)
    (root / repo / commit / path).write_bytes(data)


def test_a_verbatim_file_is_fetched_checked_and_put_in_place(
    tmp_path: Path, manifest: list[Recording], sets: Path, raw_files: Path
) -> None:
    verbatim = [r for r in manifest if r.verbatim][:2]
    derived = next(r for r in manifest if not r.verbatim)
    for r in verbatim:
        _serve(raw_files, r, (sets / r.set / r.file).read_bytes())
    dest = tmp_path / "sets"
    assert recordings.fetch_verbatim(dest, [*verbatim, derived]) == [derived]
    assert check(dest, verbatim) == []

    wrong = next(r for r in manifest if r.verbatim and r not in verbatim)
    _serve(raw_files, wrong, b"not the recording")
    with pytest.raises(ConfigError, match="sha256"):
        recordings.fetch_verbatim(dest, [wrong])
    assert not (dest / wrong.set / wrong.file).exists(), "nothing is left where a checked file belongs"
    assert not list(dest.rglob("*.part"))
