"""A model folder's manifest: `MANIFEST.sha256` (the format `sha256sum -c` reads), which
`get-model` writes last, once every file is in and checked. A worker loads a folder whose
manifest names a file it lacks as an error, not as a model (`missing_files`: no checksums, so
a worker's start stays quick); `verify` recomputes every checksum (`get-model`, `doctor`)."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .package_index import sha256_of

MANIFEST = "MANIFEST.sha256"


class ModelFolderError(ConfigError):
    """A folder is not a complete model, or a model cannot be staged into one."""


def read_manifest(folder: Path) -> dict[str, str]:
    """name -> sha256 from `folder`'s manifest; {} where there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        sha, _, name = line.partition("  ")
        if len(sha) == 64 and name:
            out[name] = sha
    return out


def missing_files(folder: Path) -> list[str]:
    """The files `folder`'s manifest names that it lacks."""
    return [name for name in read_manifest(folder) if not (folder / name).is_file()]


def verify(folder: Path) -> dict[str, str]:
    """`folder`'s manifest, each file's sha256 recomputed and equal; ModelFolderError saying
    which file is missing or changed."""
    listed = read_manifest(folder)
    if not listed:
        raise ModelFolderError(f"{folder} has no {MANIFEST}: not a folder get-model finished")
    for name, sha in listed.items():
        path = folder / name
        if not path.is_file():
            raise ModelFolderError(f"{folder} lacks {name} (an incomplete copy: run get-model again)")
        if sha256_of(path) != sha:
            raise ModelFolderError(f"{folder}/{name} differs from its manifest (a damaged or partial file)")
    return listed


__all__ = ["MANIFEST", "ModelFolderError", "missing_files", "read_manifest", "verify"]
