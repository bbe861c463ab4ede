"""Slurm: submitting days as job arrays (split at MaxArraySize) plus a finalize job per day (a
stopped worker requeues itself: run/job.py).

Everything that submits to Slurm is here; the hpc/*.sh scripts only resolve their
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

from ..config import PipelineConfig, config_env
from ..day_specs import days_label
from ..errors import ConfigError, PipelineError
from ..redaction import dsn_password, redact
from ..status.text import plural
from .executor import DayBook
from .plan import DayArchive, DayPlan

log = logging.getLogger(__name__)

WORKER_SCRIPT = "process_single_tar_streaming.sh"
FINALIZE_SCRIPT = "finalize_day_streaming.sh"
# Workers get USR1 this many seconds before their time limit, to stop cleanly and requeue.
SIGNAL_LEAD_S = 120

Runner = Callable[..., subprocess.CompletedProcess[str]]


DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default: task indices 0..1000


@dataclass(frozen=True)
class ArrayJob:
    job_id: str
    manifest: Path
    tasks: int
    days: tuple[dt.date, ...]


@dataclass(frozen=True)
class Submission:
    arrays: list[ArrayJob]
    finalize: dict[dt.date, str]  # day -> its finalize job

    @property
    def tasks(self) -> int:
        return sum(a.tasks for a in self.arrays)

    def arrays_of(self, day: dt.date) -> list[str]:
        return [a.job_id for a in self.arrays if day in a.days]


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

    def max_array_size(self) -> int:
        """The cluster's MaxArraySize (`scontrol show config`): an array holds at most this many
        tasks (indices 0..MaxArraySize-1)."""
        for line in self._call(["scontrol", "show", "config"]).splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "MaxArraySize" and value.strip().isdigit():
                return int(value.strip())
        log.warning("MaxArraySize not in `scontrol show config`; assuming %d", DEFAULT_MAX_ARRAY_SIZE)
        return DEFAULT_MAX_ARRAY_SIZE


def hpc_dir(configured: Path | None) -> Path:
    """Where the hpc/*.sh scripts are: the flag/variable, else this checkout's hpc/ folder."""
    candidates = [configured] if configured else [Path(__file__).resolve().parents[3] / "hpc", Path("hpc")]
    for candidate in candidates:
        if candidate and (candidate / WORKER_SCRIPT).is_file():
            return candidate.resolve()
    raise ConfigError(f"cannot find {WORKER_SCRIPT}: set --hpc-dir or PIPELINE_HPC_DIR")


def write_manifest(log_dir: Path, label: str, archives: Sequence[DayArchive], part: int = 0) -> Path:
    """An array's task list, one `DATE<TAB>SLOT<TAB>PATH` line per task: task i reads line i + 1.

    Written before submission (a task can start before sbatch returns), on the log dir, which
    compute nodes must see anyway. `part` numbers a day's arrays when it has more archives than
    MaxArraySize: each array has a manifest of its own, never another's (the two used to share a
    name, so the second overwrote the first and its tasks past the second's length found none).
    """
    folder = log_dir / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = folder / f"{label}_{stamp}_{os.getpid()}_{part}.tsv"
    if path.exists():
        raise PipelineError(f"manifest {path} exists already: it would be overwritten")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{a.key.day}\t{a.slot}\t{a.path}\n" for a in archives), encoding="utf-8")
    tmp.rename(path)
    return path


def submit_days(
    config: PipelineConfig,
    todo: Sequence[DayArchive],
    *,
    scripts: Path,
    client: SlurmClient,
) -> Submission:
    """Job arrays of workers for `todo` (any number of days, in day order) and a finalize job
    per day after the arrays that hold its archives.

    Each array holds at most the cluster's MaxArraySize tasks. The arrays run one after another
    (each depends on the previous one, afterany), each at most `max_parallel` at a time: one
    throttle for the whole submission, whatever its size, at the cost of the previous array's
    tail (its last tasks) running below the throttle.
    """
    log_dir = config.log_dir.resolve()
    (log_dir / "slurm").mkdir(parents=True, exist_ok=True)
    size = client.max_array_size()
    arrays: list[ArrayJob] = []
    for first in range(0, len(todo), size):
        chunk = list(todo[first : first + size])
        days = tuple(sorted({a.key.day for a in chunk}))
        label = days[0].isoformat() if len(days) == 1 else f"{days[0]}..{days[-1]}"
        manifest = write_manifest(log_dir, label, chunk, part=len(arrays))
        options = [
            f"--array=0-{len(chunk) - 1}%{config.max_parallel}",
            f"--job-name=stream_tar_{label}",
            # Slurm's own file holds only what happens before the script opens its log.
            f"--output={log_dir}/slurm/stream_tar_%A_%a.out",
            "--open-mode=append",
            "--requeue",
            f"--signal=B:USR1@{SIGNAL_LEAD_S}",
            "--export=ALL",
        ]
        if arrays:
            options.append(f"--dependency=afterany:{arrays[-1].job_id}")
        options += shlex.split(config.worker_sbatch_args)  # last: they override the script's #SBATCH lines
        job_id = client.sbatch(options, scripts / WORKER_SCRIPT, ["--manifest", str(manifest)])
        log.info("submitted %d archives (%s) as job array %s", len(chunk), label, job_id)
        arrays.append(ArrayJob(job_id, manifest, len(chunk), days))
    finalize: dict[dt.date, str] = {}
    for day in sorted({a.key.day for a in todo}):
        after = ":".join(a.job_id for a in arrays if day in a.days)
        finalize_options = [
            f"--job-name=stream_day_{day}_finalize",
            f"--dependency=afterany:{after}",
            f"--output={log_dir}/stream_day_{day}_finalize_%j.out",
            "--export=ALL",
        ]
        finalize[day] = client.sbatch(finalize_options, scripts / FINALIZE_SCRIPT, [day.isoformat()])
        log.info("finalize job %s for %s runs after %s", finalize[day], day, after)
    return Submission(arrays, finalize)


class SlurmExecutor:
    """The days' archives as job arrays and a finalize job per day (`submit_days`); returns once
    they are submitted. The finalize jobs record each day's outcome. Runs in the controller's thread."""

    name = "slurm"

    def __init__(self, config: PipelineConfig, env: Mapping[str, str]) -> None:
        self.config = config
        self.env = env

    def preflight(self, archive: Path) -> None:
        """Nothing here: each node's checks are the worker's own (and `doctor`'s)."""

    def run(self, plans: list[DayPlan], book: DayBook) -> int:
        config = self.config
        # The controller's own job variables must not leak into its workers' submissions; the
        # settings travel as PIPELINE_* variables, which sbatch exports to the jobs.
        clean_env = {k: v for k, v in self.env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
        client = SlurmClient({**clean_env, **config_env(config)}, secrets=(dsn_password(config.dsn),))
        todo = [archive for plan in plans for archive in plan.todo]
        sub = submit_days(config, todo, scripts=hpc_dir(config.hpc_dir), client=client)
        now = dt.datetime.now(dt.UTC)
        for plan in plans:
            book.taken(
                plan,
                self.name,
                array_job_id=",".join(sub.arrays_of(plan.day)),
                finalize_job_id=sub.finalize[plan.day],
                at=now,
            )
        logs = config.log_dir.resolve()
        days = [plan.day for plan in plans]
        jobs = ",".join([a.job_id for a in sub.arrays] + list(sub.finalize.values()))
        pattern = f"stream_tar_{days[0]}_*.out" if len(days) == 1 else "stream_tar_*.out"
        print(
            f"submitted {plural(len(sub.arrays), 'job array')} "
            + ", ".join(f"{a.job_id} ({a.tasks} tasks)" for a in sub.arrays)
            + f": {sub.tasks} archives of {plural(len(days), 'day')}, at most {config.max_parallel} at a"
            " time in all; finalize: "
            + ", ".join(f"{job} ({day})" for day, job in sub.finalize.items())
            + f"\n  squeue -j {jobs}\n  tail -f {logs}/{pattern}"
            + f"\n  streaming-pipeline status {days_label(days)}"
        )
        return 0
