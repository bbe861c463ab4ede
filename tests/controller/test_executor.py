"""The controller and its executors meet at one interface (controller/executor.py): the
controller plans and settles, an executor runs the days with work and records each day it takes
through the DayBook, whichever executor it is."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.controller.day_runs import Controller
from streaming_pipeline.controller.executor import DayBook
from streaming_pipeline.controller.local_executor import LocalExecutor
from streaming_pipeline.controller.plan import DayPlan, discover
from streaming_pipeline.controller.slurm import SlurmExecutor
from streaming_pipeline.errors import ConfigError
from streaming_pipeline.state.store import ProgressStore

from ..conftest import DAY, make_day, query


class _Recording:
    """An executor that runs nothing: it records what the controller handed it and takes each
    day through the book, as both real executors do (the interface under test, not a fake of one)."""

    name = "recording"

    def __init__(self) -> None:
        self.checked: list[Path] = []
        self.ran: list[list[dt.date]] = []

    def preflight(self, archive: Path) -> None:
        self.checked.append(archive)

    def run(self, plans: list[DayPlan], book: DayBook) -> int:
        self.ran.append([p.day for p in plans])
        for plan in plans:
            book.taken(plan, self.name, array_job_id="42", finalize_job_id="43")
        return 0


def test_days_with_work_go_to_the_executor_which_records_each_once(tmp_path: Path, pg_dsn: str) -> None:
    make_day(tmp_path, ["08_00", "08_30"], members=1)
    day = dt.date.fromisoformat(DAY)
    config = PipelineConfig(dsn=pg_dsn, input_root=tmp_path / "input", log_dir=tmp_path / "logs")
    store = ProgressStore(pg_dsn)
    store.init_schema()
    try:
        executor = _Recording()
        controller = Controller(config, store, executor, env={})
        assert controller.run_days({day: discover(config.input_root, day)}) == 0
        assert executor.ran == [[day]] and len(executor.checked) == 1, "one preflight, then the days"
        (row,) = query(pg_dsn, "SELECT state, archives, submitted, executor, array_job_id FROM days")
        expected = {"state": "submitted", "archives": 2, "submitted": 2, "executor": "recording"}
        assert row == {**expected, "array_job_id": "42"}
    finally:
        store.close()


def test_an_executor_is_chosen_by_name_and_a_wrong_name_is_told(pg_dsn: str) -> None:
    config = PipelineConfig(dsn=pg_dsn)
    store = ProgressStore(pg_dsn)
    try:
        assert isinstance(Controller.of(config, store, {}, "local").executor, LocalExecutor)
        assert isinstance(Controller.of(config, store, {}, "slurm").executor, SlurmExecutor)
        with pytest.raises(ConfigError, match="executor 'pbs' is not one of slurm, local"):
            Controller.of(config, store, {}, "pbs")
    finally:
        store.close()
