"""The controller's runs of days: plan each day, then hand what is not done to its executor
(Slurm: all days at once; local: day by day, controller/executor.py); a day with nothing left to
do is finalized now. `retranscribe` plans its days from the stale transcripts and goes the same way."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import PipelineConfig
from ..errors import ConfigError
from ..run.control import EXIT_INTERRUPTED
from ..run.job_environment import JobEnvironment
from ..stages.asr.options import DecodeOptions
from ..stages.asr.provenance import planned
from ..stages.speakers import SpeakerOptions, with_speakers
from ..state.records import ArchiveKey
from ..state.store import ProgressStore
from ..status.day import day_report
from ..status.text import format_report, plural
from .executor import DayBook, DayFinished, Executor
from .local_executor import LocalExecutor
from .plan import DayArchive, DayPlan, NoArchives, discover, finalize_day, plan_day
from .slurm import SlurmExecutor

EXECUTORS = ("slurm", "local")


@dataclass(frozen=True)
class Controller:
    """Runs days for one set of settings through one executor, in the caller's thread."""

    config: PipelineConfig
    store: ProgressStore
    executor: Executor
    env: Mapping[str, str]  # the environment the controller (and a job it finalizes in) runs in
    on_day_finished: DayFinished = lambda day: None

    @classmethod
    def of(
        cls,
        config: PipelineConfig,
        store: ProgressStore,
        env: Mapping[str, str],
        executor: str,
        *,
        on_day_finished: DayFinished = lambda day: None,
        preflight: Callable[[Path], None] = lambda archive: None,
    ) -> Controller:
        """`executor`: "slurm" (job arrays) or "local" (processes here, after `preflight`)."""
        if executor == "local":
            chosen: Executor = LocalExecutor(config, env, preflight=preflight)
        elif executor == "slurm":
            chosen = SlurmExecutor(config, env)
        else:
            raise ConfigError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
        return cls(config, store, chosen, env, on_day_finished)

    def run_days(self, found: dict[dt.date, list[DayArchive]]) -> int:
        """`process-day`: register each day's archives (`find_days`), then submit or run what
        is not done."""
        self.executor.preflight(next(iter(found.values()))[0].path)
        plans = []
        for day, archives in found.items():
            plan = plan_day(self.store, day, archives)
            print(plan.describe(), flush=True)
            plans.append(plan)
        return self.run_plans(plans)

    def retranscribe_days(self, days: list[dt.date], *, dry_run: bool) -> int:
        """`retranscribe`: the archives with members whose transcript was made another way go to
        workers as in process-day; each re-decodes those members from their FLACs."""
        decode = self.config.decode
        if self.config.speakers_only and not decode.speakers:
            raise ConfigError("--speakers-only adds speakers: it cannot run with --no-speakers")
        made = with_speakers(planned(DecodeOptions.of(decode)), SpeakerOptions.of(decode))
        how = (
            f"speakers of {made.speaker_model}" if self.config.speakers_only else f"{made.model} ({made.key})"
        )
        plans, total_members, total_hours = [], 0, 0.0
        for day in days:
            stale = self.store.transcripts.stale_archives(
                day, key=made.key, only_model=self.config.only_model,
                speaker_model=made.speaker_model if self.config.speakers_only else None,
            )  # fmt: skip
            members, hours = sum(a.members for a in stale), sum(a.audio_hours for a in stale)
            total_members, total_hours = total_members + members, total_hours + hours
            print(
                f"{day}: {members} members ({hours:.3f} h of audio) in {plural(len(stale), 'archive')} "
                f"to re-transcribe with {how}",
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
        """Days with nothing to do are settled here; the others go to the executor."""
        rc = 0
        job_id = JobEnvironment.of(self.env).job_id  # this process finalizes: within Slurm, its job
        for plan in plans:
            if not plan.todo:
                rc = rc or self._settle(plan, job_id=job_id)
        todo = [plan for plan in plans if plan.todo]
        if not todo:
            return rc
        code = self.executor.run(todo, DayBook(self.store, self.on_day_finished))
        return code if code == EXIT_INTERRUPTED else rc or code

    def _settle(self, plan: DayPlan, *, job_id: str | None = None) -> int:
        """A day with nothing to submit: finalized now, unless workers elsewhere still hold some
        of its archives (they record the outcome; finalizing now would call it incomplete)."""
        if plan.busy:
            print(format_report(day_report(self.store, plan.day)))
            return 0
        report = finalize_day(self.store, plan.day, job_id=job_id)
        print(format_report(report))
        return 0 if report.totals.complete else 1


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
