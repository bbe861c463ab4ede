"""Hundreds of workers on one PostgreSQL, simulated on one machine (`streaming-pipeline scale-sim`).

What is real: PostgreSQL (started with a small `max_connections`), PgBouncer in transaction mode
in front of it (Debian's `pgbouncer`), N worker processes, and in each the pipeline's own claim,
lease, heartbeat, fencing and record code (state/lease.py, state/store.py), through one
connection per worker. What is SYNTHETIC: the archives and their stage work. An archive is a row
and a list of member names; "converting, transcribing and uploading" a batch of members is a
sleep. The point is the database side of a few hundred workers, not audio.

Workers loop: claim the next archive not done whose lease is free or expired, record its members
in batches (`uploading`, then `done` after the synthetic upload), finish it, release it; they
exit when every archive is done. A tenth of them are SIGKILLed mid-run: their archives stay
leased until the lease expires, then others take them over and finish them.

Exactly-once is checked by the simulation's own instrumentation (not part of the product schema):
a trigger logs every transition of a member to `done`; each member must appear there once.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..errors import ConfigError, LeaseLost
from ..state.embedded_pg import EmbeddedPostgres, free_port
from ..state.lease import Lease
from ..state.records import Owner
from ..state.simulation import ScaleAudit, SimulatedQueue
from ..state.states import MemberStatus
from ..state.store import ArchiveKey, MemberRecord, ProgressStore

log = logging.getLogger(__name__)

FIRST_DAY = dt.date(2001, 1, 1)  # synthetic days, far from real ones
ARCHIVES_PER_DAY = 50


@dataclass(frozen=True)
class ScaleConfig:
    workers: int = 300
    archives: int = 600
    members: int = 50
    batch: int = 10  # members recorded per transaction, as a worker's stream batch
    stage_s: float = 0.1  # synthetic work per batch and stage (convert+transcribe, upload)
    kill_share: float = 0.1
    lease_s: float = 5.0
    max_connections: int = 40  # the PostgreSQL server's
    pool_size: int = 20  # PgBouncer's server connections for the database
    direct: bool = False  # no PgBouncer: workers past max_connections wait for a slot


@dataclass
class ScaleResult:
    wall_s: float
    members_done: int
    done_transitions: int
    duplicates: int
    archives_done: int
    taken_over: int
    killed: int
    worker_failures: dict[int, int]
    peak_server_connections: int
    max_connections: int
    pool_size: int

    def problems(self, config: ScaleConfig) -> list[str]:
        """What broke the guarantees (empty: every member done once, nobody starved)."""
        members = config.archives * config.members
        found = []
        if self.members_done != members or self.done_transitions != members:
            found.append(
                f"{self.members_done} members done, {self.done_transitions} transitions, not {members}"
            )
        if self.duplicates:
            found.append(f"{self.duplicates} members recorded done twice")
        if self.archives_done != config.archives:
            found.append(f"{self.archives_done} of {config.archives} archives done")
        if self.worker_failures:
            found.append(f"workers failed: {self.worker_failures}")
        if self.pool_size and self.peak_server_connections >= self.max_connections:
            found.append(f"peak connections {self.peak_server_connections} reached the server's limit")
        if self.killed and self.taken_over < self.killed:
            found.append(f"only {self.taken_over} of {self.killed} killed workers' archives were taken over")
        return found

    @property
    def members_per_s(self) -> float:
        return self.done_transitions / self.wall_s if self.wall_s > 0 else 0.0

    def lines(self, config: ScaleConfig) -> list[str]:
        return [
            f"workers {config.workers} ({self.killed} SIGKILLed mid-run), archives {config.archives} x "
            f"{config.members} synthetic members, lease {config.lease_s:.0f} s",
            f"PostgreSQL max_connections {self.max_connections}, "
            + (f"PgBouncer transaction mode, pool {self.pool_size}" if self.pool_size else "no PgBouncer"),
            f"wall {self.wall_s:.1f} s, {self.members_per_s:.0f} members recorded per second",
            f"members done {self.members_done}, done transitions {self.done_transitions}, "
            f"recorded twice {self.duplicates}",
            f"archives done {self.archives_done}, taken over after a kill {self.taken_over}",
            f"workers failed {len(self.worker_failures)}, peak server connections "
            f"{self.peak_server_connections} of {self.max_connections}",
        ]


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found is None:
        raise ConfigError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    return found


@dataclass
class PgBouncer:
    """A private PgBouncer in transaction mode in front of one PostgreSQL database."""

    state_dir: Path
    server_port: int
    _: KW_ONLY
    pool_size: int
    max_client_conn: int
    dbname: str = "postgres"
    server_host: str = "127.0.0.1"
    port: int = field(default=0, init=False)  # once started
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def start(self) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        ini = self.state_dir / "pgbouncer.ini"
        (self.state_dir / "userlist.txt").write_text('"postgres" ""\n')
        ini.write_text(
            "[databases]\n"
            f"{self.dbname} = host={self.server_host} port={self.server_port} dbname={self.dbname}"
            " user=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.state_dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {self.max_client_conn}\ndefault_pool_size = {self.pool_size}\n"
            f"max_db_connections = {self.pool_size}\nreserve_pool_size = 0\n"
            f"logfile = {self.state_dir / 'pgbouncer.log'}\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        argv = [pgbouncer_binary(), str(ini)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.state_dir, pw.pw_uid, pw.pw_gid)
            for path in self.state_dir.iterdir():
                os.chown(path, pw.pw_uid, pw.pw_gid)
            argv = ["runuser", "-u", "postgres", "--", *argv]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                    raise ConfigError(f"pgbouncer did not start: {err.strip()[:500]}") from None
                time.sleep(0.1)
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={self.dbname}"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _keys(config: ScaleConfig) -> list[ArchiveKey]:
    keys = []
    for i in range(config.archives):
        day = FIRST_DAY + dt.timedelta(days=i // ARCHIVES_PER_DAY)
        slot = f"{i % ARCHIVES_PER_DAY:02d}_00"
        keys.append(ArchiveKey(f"{day.isoformat()}/{slot}.tar.xz", day, slot))
    return keys


def _days(config: ScaleConfig) -> list[dt.date]:
    return sorted({k.day for k in _keys(config)})


def worker_main(dsn: str, config: ScaleConfig, number: int) -> int:
    """One simulated worker (a forked process): the real claim/lease/record code, synthetic stages."""
    store = ProgressStore(dsn, patience=600.0)
    owner = Owner(f"sim_{number}", socket.gethostname(), os.getpid())
    days = _days(config)
    names = [f"member_{j:04d}.wav" for j in range(config.members)]
    queue = SimulatedQueue(store)
    try:
        while True:
            claimed = queue.claim_next(days, owner=owner, lease_s=config.lease_s)
            if claimed is None:
                if queue.unfinished(days) == 0:
                    return 0
                time.sleep(random.uniform(0.5, 1.5))  # the rest are held: wait for a lease to expire
                continue
            key, token = claimed
            lease = Lease(store, key.archive, owner=owner, lease_s=config.lease_s)
            lease.adopt(token)
            try:
                _process(store, key, names, config, owner)
            except LeaseLost:
                pass  # another worker has it; nothing more was written
            finally:
                lease.release()
    finally:
        store.close()


def _process(
    store: ProgressStore, key: ArchiveKey, names: list[str], config: ScaleConfig, owner: Owner
) -> None:
    started = time.monotonic()
    run_id = store.archives.start(key, path=f"/synthetic/{key.archive}", bytes_total=0, owner=owner)
    done = store.members.done(key.archive)
    todo = [n for n in names if n not in done]
    for first in range(0, len(todo), config.batch):
        batch = todo[first : first + config.batch]
        time.sleep(config.stage_s)  # SYNTHETIC: extract + convert + transcribe
        remote = [(m, f"/synthetic/out/{key.archive}/{m}.flac") for m in batch]
        store.members.record(
            key, [MemberRecord(m, MemberStatus.UPLOADING, duration_s=1.0, remote_path=r) for m, r in remote]
        )
        time.sleep(config.stage_s)  # SYNTHETIC: the upload
        store.members.mark_done(key.archive, remote)
        store.archives.progress(key.archive, bytes_read=0, members_seen=len(done) + first + len(batch))
    wall = time.monotonic() - started
    store.archives.finish(
        key.archive, state="done", error=None, wall_s=wall, run_id=run_id, audio_s=len(todo)
    )


def watch_server_connections(audit: ScaleAudit, stop: threading.Event, peak: list[int]) -> None:
    """The most client backends the server had at once, sampled every 50 ms until `stop`, into
    `peak[0]`."""
    while not stop.wait(0.05):
        peak[0] = max(peak[0], audit.client_backends())


def simulate(config: ScaleConfig, state_dir: Path | None = None, *, say: Any = print) -> ScaleResult:
    """Start PostgreSQL and PgBouncer, run the workers, kill some, check the outcome."""
    root = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="streaming-pipeline-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # the servers run as `postgres` when started by root
    server = EmbeddedPostgres(root / "pg", settings={"max_connections": str(config.max_connections)})
    direct = server.start()
    bouncer = PgBouncer(root / "pgbouncer", int(server.port_file.read_text()), pool_size=config.pool_size,
                        max_client_conn=config.workers + 100)  # fmt: skip
    try:
        pooled = direct if config.direct else bouncer.start()
        setup = ProgressStore(direct)
        setup.init_schema()
        with psycopg.connect(direct, autocommit=True) as conn:
            ScaleAudit(conn).reset()
        keys = _keys(config)
        for day in _days(config):
            setup.days.register_archives(
                day, [(k, f"/synthetic/{k.archive}", 0) for k in keys if k.day == day]
            )
        setup.close()
        say(f"scale-sim: PostgreSQL max_connections={config.max_connections} at {direct}; "
            + ("workers connect to it directly" if config.direct
               else f"PgBouncer (transaction mode, pool {config.pool_size}) at {pooled}"))  # fmt: skip
        return _run(config, direct, pooled, say)
    finally:
        bouncer.stop()
        server.stop()
        if state_dir is None:
            shutil.rmtree(root, ignore_errors=True)


def _run(config: ScaleConfig, direct: str, pooled: str, say: Any) -> ScaleResult:
    # Workers fork from a small forkserver process that has imported this module, not from the
    # caller (a test runner holding the model libraries forks ten times slower).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    # The observer's connection is opened first: without PgBouncer the workers fill the server.
    observer = psycopg.connect(direct, autocommit=True)
    audit = ScaleAudit(observer)
    stop = threading.Event()
    peak = [0]
    monitor = threading.Thread(target=watch_server_connections, args=(audit, stop, peak), daemon=True)
    monitor.start()
    started = time.monotonic()
    workers = [
        ctx.Process(target=_worker_process, args=(pooled, config, n), name=f"scale-sim-{n}", daemon=True)
        for n in range(config.workers)
    ]
    for worker in workers:
        worker.start()
    say(f"scale-sim: {config.workers} workers started in {time.monotonic() - started:.1f} s")
    pids = {w.pid: n for n, w in enumerate(workers) if w.pid is not None}
    killed = _kill_some_mid_run(config, audit, pids, say)
    failures: dict[int, int] = {}
    for number, worker in enumerate(workers):
        worker.join()
        if worker.exitcode != 0 and worker.pid not in killed:
            failures[number] = worker.exitcode if worker.exitcode is not None else -1
    wall = time.monotonic() - started
    stop.set()
    monitor.join()
    observer.close()
    return _check(config, direct, wall, killed, failures, peak[0])


def _worker_process(dsn: str, config: ScaleConfig, number: int) -> None:
    code = worker_main(dsn, config, number)
    if code:
        raise SystemExit(code)


def _kill_some_mid_run(config: ScaleConfig, audit: ScaleAudit, pids: dict[int, int], say: Any) -> set[int]:
    """Once about a third of the members are done, SIGKILL a share of the workers, each in the
    middle of an archive (its run started, its lease live: the lease stands until it expires).

    A worker seen holding an archive may finish it before the signal lands, so candidates are
    frozen first (SIGSTOP), and killed only if, frozen, they still hold a started archive; the
    others are let go (SIGCONT)."""
    total = config.archives * config.members
    count = round(config.workers * config.kill_share)
    if count == 0:
        return set()
    while True:
        done = audit.done_transitions()
        if done >= total // 3:
            break
        time.sleep(0.1)
    victims: set[int] = set()
    tried: set[int] = set()
    for _ in range(20):
        if len(victims) >= count:
            break
        holders = list(audit.holding(list(set(pids) - tried)))
        random.shuffle(holders)
        frozen = holders[: count - len(victims)]
        if not frozen:
            break
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        tried.update(frozen)
        time.sleep(0.3)  # a COMMIT already sent lands; a stopped worker sends nothing more
        still = audit.holding(frozen)
        for pid in frozen:
            os.kill(pid, signal.SIGKILL if pid in still else signal.SIGCONT)
        victims |= still
    say(f"scale-sim: SIGKILLed {len(victims)} workers in the middle of an archive, {done} members done")
    return victims


def _check(
    config: ScaleConfig, dsn: str, wall: float, killed: set[int], failures: dict[int, int], peak: int
) -> ScaleResult:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tally = ScaleAudit(conn).tally(list(killed))
    return ScaleResult(
        wall_s=wall,
        **asdict(tally),
        killed=len(killed),
        worker_failures=failures,
        peak_server_connections=peak,
        max_connections=config.max_connections,
        pool_size=0 if config.direct else config.pool_size,
    )
