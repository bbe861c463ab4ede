"""One interface for where a day's archives are processed, as submitit's `Executor` is: Slurm
job arrays (`slurm.SlurmExecutor`) or worker processes on this machine
(`local_executor.LocalExecutor`).

The controller plans the days and settles those with nothing to do; an executor takes the days
with work, records each one it takes through the `DayBook` (so the `submitted` row is written by
one rule whichever ran it), and returns the run's exit status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..state.store import ProgressStore
from ..status.day import DayReport
from ..status.text import format_report
from .plan import DayPlan, finalize_day

# What the caller does once a day run here is finalized (the CLI writes its HTML report).
DayFinished = Callable[[dt.date], None]


@dataclass(frozen=True)
class DayBook:
    """What executors write of the days they take (in the controller's thread): the day's
    `submitted` row, and, for a day run to its end here, its outcome."""

    store: ProgressStore
    on_day_finished: DayFinished = lambda day: None

    def taken(
        self,
        plan: DayPlan,
        executor: str,
        *,
        array_job_id: str | None = None,
        finalize_job_id: str | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        """The day is submitted: its archives, how many go to workers, and the jobs that hold them."""
        jobs = {"array_job_id": array_job_id, "finalize_job_id": finalize_job_id}
        self.store.days.record(
            plan.day,
            state="submitted",
            archives=len(plan.archives),
            submitted=len(plan.todo),
            executor=executor,
            submitted_at=at or dt.datetime.now(dt.UTC),
            finalized_at=None,
            **{k: v for k, v in jobs.items() if v is not None},
        )

    def finish(self, day: dt.date) -> DayReport:
        """A day whose workers all ended here: its outcome recorded and printed, then the caller's hook."""
        report = finalize_day(self.store, day, job_id=None)
        print(format_report(report), flush=True)
        self.on_day_finished(day)
        return report


class Executor(Protocol):
    """Runs the archives of planned days that have work to do; called from the controller's thread."""

    name: str  # as the day's row records it: "slurm" or "local"

    def preflight(self, archive: Path) -> None:
        """What this executor needs of the machine, checked on one archive before anything is planned."""
        ...

    def run(self, plans: list[DayPlan], book: DayBook) -> int:
        """Every plan has archives to do; each day taken is recorded with `book.taken`."""
        ...
