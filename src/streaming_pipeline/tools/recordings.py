"""The recordings the `realmodel` tests and the measurements read: what each file is, where it came
from, under which licence, and its sha256 (`recordings.tsv` beside this module), so that anyone can
get the same three sets and know they have the same bytes.

The audio is not in the repository: many of its licences allow evaluation, not redistribution, and
most files are derived (re-encoded, trimmed, mixed, assembled into programmes). So
`scripts/get-test-recordings.sh DIR` copies the sets from a copy a team keeps (`--from`: a path,
`host:path` or `rsync://`) and checks every file against the manifest; without a copy it fetches
the files that are byte-for-byte a public repository's file at a pinned commit (`verbatim`), checks
them the same way, and lists the derived ones it cannot make.

    python -m streaming_pipeline.tools.recordings fetch DIR [--from COPY]
    python -m streaming_pipeline.tools.recordings check DIR
    python -m streaming_pipeline.tools.recordings write SETS_DIR   # rewrite the manifest from the sets
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..package_index import sha256_of

MANIFEST = Path(__file__).with_name("recordings.tsv")
SETS = ("realspeech", "broadcast-dev", "speakers-dev")
COLUMNS = ("set", "file", "bytes", "sha256", "verbatim", "source", "licence", "made")
FETCH_TIMEOUT_S = 60
RAW = "https://raw.githubusercontent.com"  # where a repository's file at a commit is served

# Where realspeech's manifest names no licence: the repository's, and the audio's origin where the
# set's notes name it.
REPOSITORY_LICENCES = {
    "SYSTRAN/faster-whisper": "MIT (repository)",
    "cmusphinx/pocketsphinx": "BSD-2-Clause (repository)",
    "speechbrain/speechbrain": "Apache-2.0 (repository)",
    "Uberi/speech_recognition": "BSD-3-Clause (repository)",
    "snakers4/silero-vad": "MIT (repository)",
    "wenet-e2e/wenet": "Apache-2.0 (repository)",
}
ORIGINS = {
    "LibriVox": "LibriVox: public domain",
    "librivox": "LibriVox: public domain",
    "LJSpeech": "LJSpeech: public domain",
    "JFK": "JFK's 1961 inaugural address: public domain",
    "jfk": "JFK's 1961 inaugural address: public domain",
    "AISHELL-1": "AISHELL-1: Apache-2.0",
    "LibriSpeech": "LibriSpeech: CC BY 4.0",
    "librispeech": "LibriSpeech: CC BY 4.0",
}


@dataclass(frozen=True)
class Recording:
    """One file of a set, as the manifest describes it."""

    set: str
    file: str  # relative to the set's folder
    bytes: int
    sha256: str
    verbatim: bool  # the bytes of `source`, unchanged
    source: str  # `owner/repo@commit:path`, several joined by "; ", or what made it
    licence: str
    made: str

    def url(self) -> str | None:
        """Where a verbatim file can be fetched: the repository's raw file at its pinned commit."""
        if not self.verbatim or ";" in self.source or "@" not in self.source:
            return None
        repo, _, rest = self.source.partition("@")
        commit, _, path = rest.partition(":")
        return f"{RAW}/{repo}/{commit}/{path}"


def read_manifest(path: Path = MANIFEST) -> list[Recording]:
    with path.open(encoding="utf-8", newline="") as f:
        return [
            Recording(
                set=row["set"],
                file=row["file"],
                bytes=int(row["bytes"]),
                sha256=row["sha256"],
                verbatim=row["verbatim"] == "yes",
                source=row["source"],
                licence=row["licence"],
                made=row["made"],
            )
            for row in csv.DictReader(f, delimiter="\t")
        ]


def problem(recording: Recording, root: Path) -> str | None:
    """What is wrong with this recording's file under `root` (the folder holding the sets), if anything."""
    path = root / recording.set / recording.file
    if not path.is_file():
        return f"{recording.set}/{recording.file}: missing"
    size = path.stat().st_size
    if size != recording.bytes:
        return f"{recording.set}/{recording.file}: {size} bytes, the manifest says {recording.bytes}"
    if sha256_of(path) != recording.sha256:
        return f"{recording.set}/{recording.file}: sha256 differs from the manifest's"
    return None


def check(root: Path, recordings: Iterable[Recording]) -> list[str]:
    """Every problem with the sets under `root`; empty when each file is the manifest's."""
    return [p for r in recordings if (p := problem(r, root)) is not None]


def copy_sets(source: str, root: Path, sets: Iterable[str] = SETS) -> None:
    """rsync each set from a copy (a path, `host:path` or `rsync://host/module/path`) into `root`."""
    rsync = shutil.which("rsync")
    if rsync is None:
        raise ConfigError("rsync is not installed")
    for name in sets:
        (root / name).mkdir(parents=True, exist_ok=True)
        origin = f"{source.rstrip('/')}/{name}/"
        done = subprocess.run([rsync, "-a", "--", origin, f"{root / name}/"], stdin=subprocess.DEVNULL)
        if done.returncode:
            raise ConfigError(f"rsync from {origin} exited {done.returncode}")


def fetch_verbatim(root: Path, recordings: Iterable[Recording]) -> list[Recording]:
    """Download each verbatim recording not already right under `root`, checked before it is put in
    place (written beside it, then renamed); returns the derived ones, which no URL gives."""
    derived = []
    for r in recordings:
        url = r.url()
        if url is None:
            derived.append(r)
            continue
        if problem(r, root) is None:
            continue
        path = root / r.set / r.file
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response, part.open("wb") as out:
            shutil.copyfileobj(response, out)
        got = sha256_of(part)
        if got != r.sha256:
            part.unlink()
            raise ConfigError(f"{url}: sha256 {got}, the manifest says {r.sha256}")
        os.replace(part, path)
    return derived


def _realspeech_licence(source: str, notes: str) -> str:
    repo = source.partition("@")[0]
    origins = sorted({text for key, text in ORIGINS.items() if key in notes or key in source})
    return "; ".join([REPOSITORY_LICENCES.get(repo, "not stated"), *(origins or ["audio origin not stated"])])


def _described(sets_root: Path) -> dict[tuple[str, str], tuple[bool, str, str, str]]:
    """(set, file) -> (verbatim, source, licence, made), read from each set's own manifest."""

    def rows(path: Path) -> list[dict[str, str]]:
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))

    out: dict[tuple[str, str], tuple[bool, str, str, str]] = {}
    for row in rows(sets_root / "realspeech" / "manifest.tsv"):
        derived = "DERIVED" in row["notes"]
        notes = row["notes"].replace("DERIVED by this helper", "derived by the set's build")
        made = notes if derived else "copied unchanged" + (f"; {notes}" if notes else "")
        licence = _realspeech_licence(row["source"], row["notes"])
        out["realspeech", f"audio/{row['file']}"] = (not derived, row["source"], licence, made)
    for row in rows(sets_root / "broadcast-dev" / "manifest.tsv"):
        out["broadcast-dev", row["file"]] = (False, row["source"], row["license"], row["how_made"])
    for row in rows(sets_root / "speakers-dev" / "manifest.tsv"):
        made = f"assembled by the set's build ({row['kinds']}; build_log.json says how)"
        out["speakers-dev", row["file"]] = (False, row["sources"], row["licences"], made)
    return out


def write_manifest(sets_root: Path, out: Path = MANIFEST) -> int:
    """Describe every file of the three sets under `sets_root` (audio, references, scorers) into `out`."""
    described = _described(sets_root)
    lines = ["\t".join(COLUMNS)]
    for name in SETS:
        base = sets_root / name
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = path.relative_to(base).as_posix()
            verbatim, source, licence, made = described.get(
                (name, rel), (False, "the set's own", "the set's", "written with the set")
            )
            cells = [name, rel, str(path.stat().st_size), sha256_of(path), "yes" if verbatim else "no"]
            cells += [source, licence, made]
            lines.append("\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streaming_pipeline.tools.recordings")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="get the three sets into DIR and check them")
    fetch.add_argument("dir", type=Path)
    fetch.add_argument("--from", dest="copy", help="a copy of the sets: a path, host:path or rsync://")
    sub.add_parser("check", help="check the sets in DIR against the manifest").add_argument("dir", type=Path)
    sub.add_parser("write", help="rewrite the manifest from the sets in DIR").add_argument("dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "write":
        print(f"{MANIFEST}: {write_manifest(args.dir)} files")
        return 0
    recordings = read_manifest()
    derived: list[Recording] = []
    if args.command == "fetch":
        try:
            if args.copy:
                copy_sets(args.copy, args.dir)
            else:
                derived = fetch_verbatim(args.dir, recordings)
        except (ConfigError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    problems = check(args.dir, recordings)
    for name in SETS:
        held = [r for r in recordings if r.set == name]
        bad = [p for p in problems if p.startswith(f"{name}/")]
        print(f"{args.dir / name}: {len(held) - len(bad)} of {len(held)} files as the manifest says")
    if derived and problems:
        print(
            f"{len(problems)} files are not there; {len(derived)} of the manifest's are derived"
            " (re-encoded, cut, mixed: its `made` column says how) and come only from a copy of the"
            " sets: run again with --from COPY"
        )
    elif problems:
        print("\n".join(problems))
    else:
        print(
            "set PIPELINE_TEST_REALSPEECH, PIPELINE_TEST_BROADCAST_SET and PIPELINE_TEST_SPEAKERS_SET"
            f" to {args.dir}/realspeech, …/broadcast-dev and …/speakers-dev"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
