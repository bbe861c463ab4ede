"""Slurm: submitting a day as one job array plus a finalize job, and requeueing a stopped worker.

Everything that knows about sbatch/scontrol is here; the hpc/*.sh scripts only resolve their
arguments and call the package. Commands are argument lists; settings reach the jobs through the
environment sbatch exports (PIPELINE_*), so a DSN's password never shows in `squeue` or `ps`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import PipelineConfig, redact
from ..errors import ConfigError, PipelineError
from .day import DayArchive

log = logging.getLogger(__name__)

WORKER_SCRIPT = "process_single_tar_streaming.sh"
FINALIZE_SCRIPT = "finalize_day_streaming.sh"
# Workers get USR1 this many seconds before their time limit, to stop cleanly and requeue.
SIGNAL_LEAD_S = 120

Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Submission:
    array_job_id: str
    finalize_job_id: str
    manifest: Path
    tasks: int


class SlurmClient:
    def __init__(self, env: Mapping[str, str], runner: Runner = subprocess.run, secrets: Sequence[str] = ()):
        self.env = dict(env)
        self._run = runner
        self._secrets = tuple(secrets)

    def _call(self, argv: list[str]) -> str:
        try:
            proc = self._run(argv, env=self.env, capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError:
            raise ConfigError(f"{argv[0]} not found: is this a Slurm node? (use --executor local)") from None
        except subprocess.TimeoutExpired:
            raise PipelineError(f"{argv[0]} did not answer within 120 s") from None
        if proc.returncode != 0:
            message = redact(" ".join((proc.stderr or proc.stdout).split()), self._secrets)
            raise PipelineError(f"{argv[0]} failed (exit {proc.returncode}): {message}")
        return proc.stdout.strip()

    def sbatch(self, options: Sequence[str], script: Path, script_args: Sequence[str]) -> str:
        """Submit; returns the job id (`--parsable` prints `id[;cluster]`)."""
        out = self._call(["sbatch", "--parsable", *options, "--", str(script), *script_args])
        return out.split(";", 1)[0]

    def requeue(self, job_id: str) -> None:
        self._call(["scontrol", "requeue", job_id])


def hpc_dir(configured: Path | None) -> Path:
    """Where the hpc/*.sh scripts are: the flag/variable, else this checkout's hpc/ folder."""
    candidates = [configured] if configured else [Path(__file__).resolve().parents[3] / "hpc", Path("hpc")]
    for candidate in candidates:
        if candidate and (candidate / WORKER_SCRIPT).is_file():
            return candidate.resolve()
    raise ConfigError(f"cannot find {WORKER_SCRIPT}: set --hpc-dir or PIPELINE_HPC_DIR")


def write_manifest(log_dir: Path, day: dt.date, archives: Sequence[DayArchive]) -> Path:
    """The array's task list, one `SLOT<TAB>PATH` line per task: task i reads line i + 1.

    Written before submission (a task can start before sbatch returns), on the log dir, which
    compute nodes must see anyway.
    """
    folder = log_dir / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = folder / f"{day}_{stamp}_{os.getpid()}.tsv"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{a.slot}\t{a.path}\n" for a in archives), encoding="utf-8")
    tmp.rename(path)
    return path


def submit_day(
    config: PipelineConfig,
    day: dt.date,
    todo: Sequence[DayArchive],
    *,
    scripts: Path,
    client: SlurmClient,
) -> Submission:
    """One job array of workers (at most `max_parallel` at a time) and a finalize job after it."""
    log_dir = config.log_dir.resolve()
    (log_dir / "slurm").mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(log_dir, day, todo)
    worker_options = [
        f"--array=0-{len(todo) - 1}%{config.max_parallel}",
        f"--job-name=stream_tar_{day}",
        # Slurm's own file holds only what happens before the script opens its log.
        f"--output={log_dir}/slurm/stream_tar_{day}_%A_%a.out",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{SIGNAL_LEAD_S}",
        "--export=ALL",
        *shlex.split(config.worker_sbatch_args),  # last: they override the script's #SBATCH lines
    ]
    array_id = client.sbatch(
        worker_options, scripts / WORKER_SCRIPT, [day.isoformat(), "--manifest", str(manifest)]
    )
    log.info("submitted %d archives of %s as job array %s", len(todo), day, array_id)
    finalize_options = [
        f"--job-name=stream_day_{day}_finalize",
        f"--dependency=afterany:{array_id}",
        f"--output={log_dir}/stream_day_{day}_finalize_%j.out",
        "--export=ALL",
    ]
    finalize_id = client.sbatch(finalize_options, scripts / FINALIZE_SCRIPT, [day.isoformat()])
    log.info("finalize job %s runs after array %s", finalize_id, array_id)
    return Submission(array_id, finalize_id, manifest, len(todo))


def requeue_self(job_id: str, client: SlurmClient) -> None:
    """`scontrol requeue` this job: Slurm ends this run and starts the job again later."""
    log.info("requeueing job %s", job_id)
    client.requeue(job_id)
