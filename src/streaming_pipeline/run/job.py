"""One worker run in this process as a job: the stop signals, the watchdog, what a lost or busy
lease means, and the requeue of a stopped Slurm job (submitit's job environment does the same
for its jobs). The CLI's `process-tar` and `process-dataset` end here."""

from __future__ import annotations

import logging
import subprocess

from ..errors import LeaseLost
from ..state.lease import ArchiveBusy
from ..state.store import ProgressStore
from .control import EXIT_INTERRUPTED, StopSignals
from .job_environment import JobEnvironment
from .skeleton import StagedRun

log = logging.getLogger(__name__)

# Only the time limit's warning (`#SBATCH --signal=B:USR1@120`) asks the job back: a SIGTERM is
# `scancel`, someone stopping it (a preemption that requeues is Slurm's own doing), and SIGINT is
# a person at a terminal. Their archive stays `interrupted` for a rerun to resume.
REQUEUE_SIGNAL = "SIGUSR1"


def requeues(reason: str | None) -> bool:
    """Whether a run stopped for `reason` (StopControl's) puts its Slurm job back in the queue."""
    return reason is not None and reason.startswith(f"stopped by {REQUEUE_SIGNAL}")


def run_as_job(worker: StagedRun, store: ProgressStore, job: JobEnvironment, *, requeue: bool = True) -> int:
    """`worker.run()` under stop signals and the watchdog: exit 0 (done, or another holds the
    work), 1 (failures), EXIT_INTERRUPTED (stopped; a Slurm job stopped by its time limit's
    SIGUSR1 requeues itself when `requeue`)."""
    StopSignals(worker.request_stop).install()

    def stuck(reason: str) -> None:  # the watchdog's, when the stop did not end the run in time
        worker.record_stuck(reason)
        if requeue and requeues(worker.control.reason):
            requeue_job(job)

    worker.control.on_stuck = stuck
    worker.control.on_request = worker.record_stopping
    worker.control.watch()
    try:
        result = worker.run()
    except ArchiveBusy as busy:
        print(f"{busy}; not starting a second worker")
        return 0
    except LeaseLost as lost:  # its new holder finishes the work
        print(f"{lost}: stopped without writing more")
        return 0
    finally:
        store.close()
    print(result.summary_line())
    worker.control.over()
    if result.interrupted:
        if requeue and requeues(worker.control.reason):
            requeue_job(job)
        return EXIT_INTERRUPTED
    return 0 if result.ok else 1


def requeue_job(job: JobEnvironment) -> None:
    """A stopped Slurm job goes back to the queue (`scontrol requeue`: Slurm ends this run and
    starts the job again later, which resumes); elsewhere a rerun does."""
    if job.job_id is None:
        return
    log.info("requeueing job %s", job.job_id)
    try:
        proc = subprocess.run(
            ["scontrol", "requeue", job.job_id], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("could not requeue job %s: %s", job.job_id, exc)
        return
    if proc.returncode != 0:
        log.error(
            "scontrol requeue %s failed (exit %d): %s", job.job_id, proc.returncode, proc.stderr.strip()
        )
