"""The controller's runs of days: plan each day, then submit what is not done to Slurm (all days
at once) or run it here with the local executor (day by day); a day with nothing left to do is
finalized now. `retranscribe` plans its days from the stale transcripts and goes the same way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import PipelineConfig, config_env
from ..days import days_label
from ..errors import ConfigError
from ..redaction import dsn_password
from ..run.control import EXIT_INTERRUPTED, StopSignals
from ..run.job_environment import JobEnvironment
from ..stages.asr.options import DecodeOptions
from ..stages.asr.provenance import planned
from ..state.records import ArchiveKey
from ..state.store import ProgressStore
from ..status.day import day_report
from ..status.text import format_report
from .day import DayArchive, DayPlan, NoArchives, discover, finalize_day, plan_day
from .local_executor import LocalExecutor
from .slurm import SlurmClient, hpc_dir, submit_days

# What the caller does once a day run here is finalized (the CLI writes its HTML report).
DayFinished = Callable[[dt.date], None]


@dataclass(frozen=True)
class Controller:
    """Runs days for one set of settings, in the caller's thread, from `env` (the environment
    the jobs or processes start from)."""

    config: PipelineConfig
    store: ProgressStore
    env: Mapping[str, str]
    executor: str = "slurm"
    on_day_finished: DayFinished = lambda day: None
    preflight: Callable[[Path], None] = lambda archive: None  # this machine's checks, for local runs

    def run_days(self, found: dict[dt.date, list[DayArchive]]) -> int:
        """`process-day`: register each day's archives (`find_days`), then submit or run what
        is not done."""
        if self.executor == "local":
            self.preflight(next(iter(found.values()))[0].path)
        plans = []
        for day, archives in found.items():
            plan = plan_day(self.store, day, archives)
            print(plan.describe(), flush=True)
            plans.append(plan)
        return self.run_plans(plans)

    def retranscribe_days(self, days: list[dt.date], *, dry_run: bool) -> int:
        """`retranscribe`: the archives with members whose transcript was made another way go to
        workers as in process-day; each re-decodes those members from their FLACs."""
        made = planned(DecodeOptions.of(self.config))
        plans, total_members, total_hours = [], 0, 0.0
        for day in days:
            stale = self.store.transcripts.stale_archives(
                day, key=made.key, only_model=self.config.only_model
            )
            members, hours = sum(a.members for a in stale), sum(a.audio_hours for a in stale)
            total_members, total_hours = total_members + members, total_hours + hours
            print(
                f"{day}: {members} members ({hours:.3f} h of audio) in {plural(len(stale), 'archive')} "
                f"to re-transcribe with {made.model} ({made.key})",
                flush=True,
            )
            if dry_run:
                for a in stale:
                    print(f"  {a.slot}: {a.members} members, {a.audio_hours:.3f} h")
            todo = [DayArchive(ArchiveKey(a.archive, a.day, a.slot), Path(a.path), 0) for a in stale]
            if todo:
                plans.append(DayPlan(day, todo, todo=todo))
        if dry_run:
            print(f"dry run: {total_members} members, {total_hours:.3f} h of audio; nothing done")
            return 0
        return self.run_plans(plans) if plans else 0

    def run_plans(self, plans: list[DayPlan]) -> int:
        if self.executor == "local":
            return self._run_local_days(plans)
        rc = 0
        job_id = JobEnvironment.of(self.env).job_id  # this process finalizes: within Slurm, its job
        for plan in plans:
            if not plan.todo:
                rc = rc or self._settle(plan, job_id=job_id)
        if any(plan.todo for plan in plans):
            return self._submit_slurm([p for p in plans if p.todo])
        return rc

    def _submit_slurm(self, plans: list[DayPlan]) -> int:
        config = self.config
        # The controller's own job variables must not leak into its workers' submissions; the
        # settings travel as PIPELINE_* variables, which sbatch exports to the jobs.
        clean_env = {k: v for k, v in self.env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
        client = SlurmClient({**clean_env, **config_env(config)}, secrets=(dsn_password(config.dsn),))
        todo = [archive for plan in plans for archive in plan.todo]
        sub = submit_days(config, todo, scripts=hpc_dir(config.hpc_dir), client=client)
        now = dt.datetime.now(dt.UTC)
        for plan in plans:
            self.store.days.record(
                plan.day,
                state="submitted",
                archives=len(plan.archives),
                submitted=len(plan.todo),
                executor="slurm",
                array_job_id=",".join(sub.arrays_of(plan.day)),
                finalize_job_id=sub.finalize[plan.day],
                submitted_at=now,
                finalized_at=None,
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

    def _settle(self, plan: DayPlan, *, job_id: str | None = None) -> int:
        """A day with nothing to submit: finalized now, unless workers elsewhere still hold some
        of its archives (they record the outcome; finalizing now would call it incomplete)."""
        if plan.busy:
            print(format_report(day_report(self.store, plan.day)))
            return 0
        report = finalize_day(self.store, plan.day, job_id=job_id)
        print(format_report(report))
        return 0 if report.totals.complete else 1

    def _run_local_days(self, plans: list[DayPlan]) -> int:
        """Day after day on this machine; a stop signal ends the run after the day it interrupted."""
        rc = 0
        for plan in plans:
            code = self._run_local(plan) if plan.todo else self._settle(plan)
            if code == EXIT_INTERRUPTED:
                return code
            rc = rc or code
        return rc

    def _run_local(self, plan: DayPlan) -> int:
        day = plan.day
        executor = LocalExecutor(self.config, self.env)
        StopSignals(lambda _reason: executor.stop(), on_second=executor.signal_workers).install()
        self.store.days.record(
            day,
            state="submitted",
            archives=len(plan.archives),
            submitted=len(plan.todo),
            executor="local",
            submitted_at=dt.datetime.now(dt.UTC),
            finalized_at=None,
        )
        print(f"logs: {self.config.log_dir.resolve()}/stream_tar_{day}_*_{executor.job_id}.out", flush=True)
        codes = executor.run(day, plan.todo)
        report = finalize_day(self.store, day, job_id=None)
        print(format_report(report))
        self.on_day_finished(day)
        if report.totals.complete:
            return 0
        return EXIT_INTERRUPTED if EXIT_INTERRUPTED in codes.values() else 1


def find_days(input_root: Path | None, days: list[dt.date]) -> dict[dt.date, list[DayArchive]]:
    """Each day's archives; a day without any is skipped, unless it is the only one."""
    found: dict[dt.date, list[DayArchive]] = {}
    for day in days:
        try:
            found[day] = discover(input_root, day)
        except NoArchives as exc:
            if len(days) == 1:
                raise
            print(f"{day}: skipped: {exc}", flush=True)
    if not found:
        raise ConfigError(f"no archives for any of the {len(days)} days under {input_root}")
    return found


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
