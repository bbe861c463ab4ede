"""Hundreds of workers on one PostgreSQL behind PgBouncer: the simulation of tools/scale.py.

Real PostgreSQL (max_connections=40), real PgBouncer (transaction mode), 300 real processes
running the pipeline's claim/lease/fencing/record code; the archives and stage work are
synthetic (labelled so in the module)."""

from __future__ import annotations

import shutil

import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.tools.scale import ScaleConfig, simulate

pytestmark = pytest.mark.skipif(
    shutil.which("pgbouncer", path="/usr/sbin:/usr/bin:/sbin:/bin") is None,
    reason="pgbouncer is not installed (scripts/install-deps.sh installs it)",
)


@pytest.mark.slow
def test_300_workers_600_archives_a_tenth_killed_every_member_done_once(capsys) -> None:
    config = ScaleConfig()  # 300 workers, 600 archives x 50 members, a tenth SIGKILLed, lease 5 s
    result = simulate(config)
    print("\n".join(result.lines(config)))
    assert result.problems(config) == []
    assert result.members_done == result.done_transitions == 600 * 50 and result.duplicates == 0
    assert result.killed == 30 and result.taken_over == 30  # their archives, after the lease
    assert not result.worker_failures  # nobody failed for lack of a connection
    assert result.peak_server_connections <= config.pool_size + 2 < config.max_connections


def test_the_command_reports_and_checks_a_small_run(capsys) -> None:
    argv = [
        "scale-sim", "--workers", "12", "--archives", "24", "--members", "20", "--lease-seconds", "2",
        "--stage-seconds", "0.2", "--kill-share", "0.25", "--max-connections", "12", "--pool-size", "4",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "members done 480, done transitions 480, recorded twice 0" in out
    assert "workers 12 (3 SIGKILLed mid-run)" in out and "taken over after a kill 3" in out


@pytest.mark.slow
def test_without_pgbouncer_workers_past_max_connections_wait_instead_of_failing(capsys) -> None:
    """The issue's first try, as a new user would make it: 24 workers straight against a server
    whose slots cannot hold them all. Before leases and patience, 20 of 24 exited at once."""
    config = ScaleConfig(workers=24, archives=24, members=20, stage_s=0.2, kill_share=0, max_connections=10,
                         direct=True, lease_s=5)  # fmt: skip
    result = simulate(config)
    print("\n".join(result.lines(config)))
    assert result.problems(config) == []
    assert result.peak_server_connections == 10  # the server was full ...
    assert not result.worker_failures  # ... and no worker failed for it
    assert result.members_done == result.done_transitions == 24 * 20
