"""Where this process runs: the Slurm job (if any), how often it was requeued, the host, the pid.

Read once from the environment, as submitit's `job_environment.py` does, so that no other module
reads SLURM_* variables: the lease's owner, the requeue cap and the runs' rows all come from here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from ..state.records import Owner


@dataclass(frozen=True)
class JobEnvironment:
    job_id: (
        str | None
    )  # `<array job>_<task>` as squeue shows an array task, or the job id; None outside Slurm
    restarts: int  # SLURM_RESTART_COUNT: how often this job was requeued
    host: str
    pid: int

    @classmethod
    def of(cls, env: Mapping[str, str] | None = None) -> JobEnvironment:
        env = os.environ if env is None else env
        restarts = env.get("SLURM_RESTART_COUNT") or "0"
        if not restarts.isdigit():
            raise ConfigError(f"SLURM_RESTART_COUNT: {restarts!r} is not a number")
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job_id: str | None = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        else:
            job_id = env.get("SLURM_JOB_ID") or None
        return cls(job_id, int(restarts), socket.gethostname(), os.getpid())

    @property
    def in_slurm(self) -> bool:
        """Only a Slurm job requeues itself, so only its restarts are capped."""
        return self.job_id is not None

    @property
    def owner(self) -> Owner:
        """This process as a lease's holder."""
        return Owner(self.job_id, self.host, self.pid)

    @property
    def scratch_name(self) -> str:
        """A folder name no other run of the same slot on any node uses."""
        return f"run-{self.host}-{self.pid}"
