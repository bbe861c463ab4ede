"""Where a worker runs: the Slurm job, its restarts, the host and the pid, read once."""

from __future__ import annotations

import os
import socket

import pytest

from streaming_pipeline.errors import ConfigError
from streaming_pipeline.run.job_environment import JobEnvironment
from streaming_pipeline.state.records import Owner


def test_the_job_id_is_the_array_task_as_squeue_names_it() -> None:
    assert JobEnvironment.of({}).job_id is None
    assert not JobEnvironment.of({}).in_slurm
    assert JobEnvironment.of({"SLURM_JOB_ID": "41"}).job_id == "41"
    env = {"SLURM_JOB_ID": "43", "SLURM_ARRAY_JOB_ID": "42", "SLURM_ARRAY_TASK_ID": "7"}
    assert JobEnvironment.of(env).job_id == "42_7"


def test_restarts_come_from_slurm_and_must_be_a_number() -> None:
    assert JobEnvironment.of({}).restarts == 0
    assert JobEnvironment.of({"SLURM_RESTART_COUNT": "2"}).restarts == 2
    with pytest.raises(ConfigError, match="SLURM_RESTART_COUNT"):
        JobEnvironment.of({"SLURM_RESTART_COUNT": "two"})


def test_the_owner_of_a_lease_is_this_process_in_its_job() -> None:
    job = JobEnvironment.of({"SLURM_JOB_ID": "9"})
    assert job.owner == Owner("9", socket.gethostname(), os.getpid())
    assert job.scratch_name == f"run-{socket.gethostname()}-{os.getpid()}"
