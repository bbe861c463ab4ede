"""`streaming-pipeline doctor`: can this node run the pipeline? Each check says PASS, FAIL or SKIP,
why, and how to fix it, so that an admin learns what is wrong before a day's GPU hours are spent.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import PipelineConfig
from ..errors import PipelineError
from ..redaction import describe_error, dsn_password

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
PROBE_DIR = ".streaming-pipeline-doctor"
DEPENDENCIES = (
    "faster_whisper",
    "ctranslate2",
    "tokenizers",
    "soundfile",
    "soxr",
    "numpy",
    "psycopg",
    "tenacity",
)


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status}  {self.name:<12} {self.detail}"
        return text + (f"\n      hint: {self.hint}" if self.hint and self.status != PASS else "")


CHECK_NAMES = (
    "deps", "gpu", "model", "speakers", "database", "destination", "scratch", "tools", "slurm", "container",
)  # fmt: skip


def run_checks(
    config: PipelineConfig,
    *,
    offline: bool,
    require_gpu: bool,
    skip: frozenset[str] = frozenset(),
    which: Callable[[str], str | None] = shutil.which,
) -> list[Check]:
    unknown = skip - set(CHECK_NAMES)
    if unknown:
        raise PipelineError(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECK_NAMES)}")
    runs: dict[str, Callable[[], list[Check]]] = {
        "deps": lambda: [_dependencies()],
        "gpu": lambda: [_gpu(require_gpu)],
        "model": lambda: [_model(config, offline)],
        "speakers": lambda: [_speakers(config, offline)],
        "database": lambda: [_database(config)],
        "destination": lambda: [_destination(config)],
        "scratch": lambda: [_scratch(config)],
        "tools": lambda: _tools(which),
        "slurm": lambda: [_slurm(which)],
        "container": lambda: [_container(config, which)],
    }
    checks: list[Check] = []
    for name in CHECK_NAMES:
        checks.extend([Check(name, SKIP, "skipped (--skip)")] if name in skip else runs[name]())
    return checks


def _guard(name: str, hint: str, body: Callable[[], Check], secrets: tuple[str, ...] = ()) -> Check:
    try:
        return body()
    except Exception as exc:  # noqa: BLE001 - a check reports any failure as FAIL, never crashes
        return Check(name, FAIL, describe_error(exc, secrets), hint)


def _dependencies() -> Check:
    versions, missing = [], []
    for name in DEPENDENCIES:
        try:
            importlib.import_module(name)
            versions.append(f"{name} {importlib.metadata.version(name.replace('_', '-'))}")
        except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
            missing.append(f"{name} ({describe_error(exc)})")
    if missing:
        return Check(
            "python deps", FAIL, "cannot import " + ", ".join(missing), "pip install streaming-pipeline"
        )
    return Check("deps", PASS, ", ".join(versions))


def _gpu(require_gpu: bool) -> Check:
    def body() -> Check:
        import ctranslate2

        count = ctranslate2.get_cuda_device_count()
        if count == 0:
            status = FAIL if require_gpu else SKIP
            return Check(
                "gpu", status, "CTranslate2 sees no CUDA device (CPU-only node?)",
                "run under --gres=gpu:1, with `apptainer exec --nv`, and a CUDA 12 + cuDNN 9 runtime",
            )  # fmt: skip
        types = sorted(ctranslate2.get_supported_compute_types("cuda"))
        return Check("gpu", PASS, f"{count} CUDA device(s); compute types {', '.join(types)}")

    return _guard("gpu", "CTranslate2 4.x needs CUDA 12 and cuDNN 9 libraries", body)


def _model(config: PipelineConfig, offline: bool) -> Check:
    from dataclasses import replace

    from ..stages.asr.factory import decode_all, open_decoder
    from ..stages.asr.loader import Transcriber
    from ..stages.asr.options import DecodeOptions, LoadOptions

    def body() -> Check:
        started = time.monotonic()
        transcriber = Transcriber(LoadOptions.of(replace(config.decode, offline=offline or config.offline)))
        t = np.arange(16000, dtype=np.float32) / 16000
        audio = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        # Without VAD, so that the tone reaches the model through the configured decoder.
        options = DecodeOptions.of(replace(config.decode, vad=False, temperatures="0", max_new_tokens=16))
        decoder = open_decoder(transcriber, options)
        try:
            (result,) = decode_all(decoder, [audio], ["1s-tone"], archive="doctor")
        finally:
            decoder.close()
        return Check(
            "model", PASS,
            f"{transcriber.model_name} on {transcriber.device.device} ({transcriber.device.compute_type}): "
            f"1 s of audio through the {options.decoder} decoder, language {result.language}, "
            f"{time.monotonic() - started:.1f}s",
        )  # fmt: skip

    return _guard("model", "set PIPELINE_MODEL to a CTranslate2 model directory bound into the job", body)


def _speakers(config: PipelineConfig, offline: bool) -> Check:
    """The speaker model loads and embeds 1.5 s of audio, where speakers are on: a missing or
    corrupt model would otherwise fail the first day's run, not this node's check."""
    from dataclasses import replace

    from ..stages.speakers import SpeakerOptions, SpeakerStage
    from ..stages.speakers.policy import Window

    options = SpeakerOptions.of(replace(config.decode, offline=offline or config.offline))
    if options is None:
        return Check("speakers", SKIP, "speakers are off (--no-speakers)")

    def body() -> Check:
        stage = SpeakerStage(options)
        t = np.arange(24000, dtype=np.float32) / 16000
        audio = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        (vector,) = stage.model.embed(audio, [Window(0.0, 1.5)])
        if not np.isfinite(vector).all():
            raise PipelineError(f"the speaker model {options.model} gives non-finite embeddings")
        return Check(
            "speakers", PASS,
            f"{options.model} (sha256 {stage.model.info.sha256[:16]}): a {stage.model.dim}-value "
            f"embedding on {stage.model.provider}",
        )  # fmt: skip

    return _guard(
        "speakers",
        "run `streaming-pipeline get-model speakers DIR` where the network is; set PIPELINE_SPEAKER_MODEL",
        body,
    )


def _database(config: PipelineConfig) -> Check:
    from ..state.store import SCHEMA_VERSION, ProgressStore

    if not config.dsn:
        return Check("database", FAIL, "no DSN", "set PIPELINE_DSN (or DB_CREDS)")

    def body() -> Check:
        store = ProgressStore(config.dsn, attempts=1, patience=0, connect_timeout=5)
        try:
            version = store.schema_version()
        finally:
            store.close()
        where = config.redacted_dsn()
        if version < SCHEMA_VERSION:
            detail = f"reachable ({where}) but schema at version {version}, not {SCHEMA_VERSION}"
            return Check("database", FAIL, detail, "run: streaming-pipeline init-db")
        return Check("database", PASS, f"reachable ({where}), schema version {version}")

    hint = "check host, port, user and password in PIPELINE_DSN; is the server up?"
    return _guard("database", hint, body, secrets=(dsn_password(config.dsn),))


def _destination(config: PipelineConfig) -> Check:
    """A real round trip: upload a small file, read it back, compare, remove it."""
    from ..destination import Destination, Rsync
    from ..stages.upload import Uploads, UploadState

    def body() -> Check:
        destination = Destination.parse(config.remote)
        destination.prepare()
        probe_id = f"{socket.gethostname()}-{os.getpid()}"
        payload = f"streaming-pipeline doctor {probe_id} {time.time()}\n".encode()
        timeout = min(config.upload_timeout, 30.0)
        with tempfile.TemporaryDirectory(prefix="doctor-", dir=_writable_tmp(config)) as tmp:
            stage = Path(tmp) / "stage"
            (stage / PROBE_DIR / probe_id).mkdir(parents=True)
            (stage / PROBE_DIR / probe_id / "probe.txt").write_bytes(payload)
            secret = config.rsync_password_file if destination.is_daemon else None
            auth = [f"--password-file={secret}"] if secret is not None else []
            client = Rsync(destination, timeout=timeout, retries=1, password_file=secret)
            uploader = Uploads(client, max_concurrent=1)
            try:
                job = uploader.submit(stage, label="doctor probe", on_finish=lambda _job: None)
                uploader.wait(timeout=timeout * 2)
            finally:
                uploader.close()
            if job.state is not UploadState.DONE:
                return Check(
                    "destination", FAIL, f"upload to {destination.spec} failed: {job.error}", _HINT_DEST
                )
            back = Path(tmp) / "back.txt"
            remote_probe = destination.url(f"{PROBE_DIR}/{probe_id}/probe.txt")
            _rsync([*auth, "--", remote_probe, str(back)], timeout)
            if back.read_bytes() != payload:
                return Check("destination", FAIL, f"read back from {destination.spec} differs", _HINT_DEST)
            # Remove our probe folder, and nothing else: an empty PROBE_DIR synced with --delete,
            # filtered down to that one folder.
            (stage / PROBE_DIR / probe_id / "probe.txt").unlink()
            (stage / PROBE_DIR / probe_id).rmdir()
            only_ours = [f"--include=/{PROBE_DIR}/", f"--include=/{PROBE_DIR}/{probe_id}/***", "--exclude=*"]
            _rsync(
                [*auth, "--recursive", "--delete", *only_ours, "--", f"{stage}/", destination.url()], timeout
            )
        return Check(
            "destination", PASS, f"{destination.spec}: a small file went there, came back and was removed"
        )

    return _guard("destination", _HINT_DEST, body)


_HINT_DEST = "check PIPELINE_REMOTE, that the rsync daemon / ssh host is up, and write permission there"


def _rsync(args: list[str], timeout: float) -> None:
    proc = subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=timeout * 2, check=False)
    if proc.returncode != 0:
        raise PipelineError(f"rsync exit {proc.returncode}: {' '.join(proc.stderr.split())}")


def _writable_tmp(config: PipelineConfig) -> str | None:
    return str(config.scratch_dir) if config.scratch_dir.is_dir() else None


def _scratch(config: PipelineConfig) -> Check:
    from ..stages.archive import ensure_writable_dir

    def body() -> Check:
        ensure_writable_dir(config.scratch_dir)
        free = shutil.disk_usage(config.scratch_dir).free
        return Check("scratch", PASS, f"{config.scratch_dir} writable, {free / 1024**3:.1f} GiB free")

    return _guard("scratch", "set PIPELINE_SCRATCH to a local, writable directory (node-local SSD)", body)


def _tools(which: Callable[[str], str | None]) -> list[Check]:
    checks = []
    for tool in ("xz", "rsync"):
        path = which(tool)
        checks.append(
            Check(tool, PASS, path)
            if path
            else Check(tool, FAIL, "not on PATH", f"install {tool} (apt: xz-utils, rsync)")
        )
    return checks


def _slurm(which: Callable[[str], str | None]) -> Check:
    tools = {tool: which(tool) for tool in ("sbatch", "squeue")}
    if all(tools.values()):
        return Check("slurm", PASS, ", ".join(str(p) for p in tools.values()))
    return Check("slurm", SKIP, "sbatch/squeue not on PATH: not a Slurm node (use --executor local)")


def _container(config: PipelineConfig, which: Callable[[str], str | None]) -> Check:
    if not config.container:
        return Check("container", SKIP, "PIPELINE_CONTAINER not set: workers run in this environment")
    image = Path(config.container)
    if not image.is_file():
        return Check(
            "container",
            FAIL,
            f"image {image} not found",
            "build it: containers/build_streaming_containers.sh",
        )
    if which("apptainer") is None:
        return Check(
            "container", FAIL, f"{image} present, but apptainer is not on PATH", "module load apptainer"
        )
    return Check("container", PASS, f"{image} ({image.stat().st_size / 1024**3:.2f} GiB)")


def report(checks: list[Check]) -> tuple[str, int]:
    failed = [c.name for c in checks if c.status == FAIL]
    lines = [c.line() for c in checks]
    lines.append(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    return "\n".join(lines), 1 if failed else 0
