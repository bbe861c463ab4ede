"""One worker per archive: a lease on the archive's row, renewed on a heartbeat.

Claiming is one short transaction on the worker's only connection (lease_table.LeaseTable.claim): the row is
locked, and if its lease is free, expired, or its holder is known to be gone, the lease token is
incremented and the lease set `lease_s` ahead. Every later write of the worker checks the token
(store fencing), so a worker that stalled past its lease (a frozen node, SIGSTOP) and was taken
over writes nothing more; the heartbeat notices the takeover too and stops the worker. Nothing
is held by the session, so PgBouncer in transaction mode carries it, and a killed worker blocks
its archive for at most `lease_s` (at once when a rerun finds it dead, see `holder_is_gone`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from ..errors import LeaseLost, StoreError
from .records import Claim, Holder, Owner
from .store import ArchiveKey, ProgressStore

log = logging.getLogger(__name__)
STOPPING_POLL_S = 2.0  # how often a worker waiting for a stopping holder tries the lease again


class ArchiveBusy(Exception):
    def __init__(self, archive: str, holder: Holder) -> None:
        super().__init__(f"{archive} is being processed by {holder.describe_lease()}")
        self.archive = archive
        self.holder = holder


def holder_is_gone(holder: Holder, me: Owner) -> bool:
    """Whether an unexpired lease's holder is certainly dead, so it can be taken at once.

    The same Slurm job: Slurm runs a job id once at a time, so a requeued run's predecessor is
    over. The same host and a pid that no longer exists: a killed local worker. Anything else
    (another node, a live pid) waits for the lease to expire. Taking over early is never unsafe,
    only wasteful: the old holder, if it lives, is fenced out of every write.
    """
    if me.slurm_job_id and holder.slurm_job_id == me.slurm_job_id:
        return True
    if holder.host == me.host and holder.pid:
        return holder.pid == me.pid or not _pid_exists(holder.pid)
    return False


def upload_gate(store: ProgressStore) -> Callable[[], str | None]:
    """The uploader's gate (stages/upload.py) for a process holding a lease: asked before every
    rsync, it says why not once the lease is lost. A worker that stalled past its lease and was
    taken over resumes with uploads still queued; without the gate they would send files that are
    its successor's now. A database that cannot answer does not stop the upload: the record made
    after it is fenced."""

    def gate() -> str | None:
        try:
            store.confirm_hold()
        except LeaseLost as lost:
            return str(lost)
        except StoreError as exc:
            log.warning("lease not confirmed before an upload (%s); uploading, its record is fenced", exc)
        return None

    return gate


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """A lease already claimed (the scale simulation's queue, a dataset run's start):
    `adopt(token)` fences the store's writes with it and starts the heartbeat; `release()` gives
    it up."""

    def __init__(
        self,
        store: ProgressStore,
        key: str,
        *,
        owner: Owner,
        lease_s: float = 120.0,
        on_lost: Callable[[str], None] | None = None,
        table: str = "archives",
    ) -> None:
        self.store = store
        self.key = key
        self.owner = owner
        self.lease_s = lease_s
        self.table = table
        self._on_lost = on_lost
        self.token: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def adopt(self, token: int) -> None:
        self.token = token
        self.store.hold(self.key, token, on_lost=self._lost, table=self.table)
        log.info(
            "holding %s (%s, lease %d, %.0f s, renewed every %.0f s)",
            self.key,
            self.owner.describe(),
            token,
            self.lease_s,
            self.heartbeat_s,
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 4

    def _beat(self) -> None:
        assert self.token is not None
        while not self._stop.wait(self.heartbeat_s):
            try:
                taken_by = self.store.leases.renew(self.key, self.token, self.lease_s, table=self.table)
            except StoreError as exc:
                # Keep trying: a takeover, if it happens meanwhile, is caught by the fence.
                log.warning("lease on %s not renewed: %s", self.key, exc)
                continue
            if taken_by is not None:
                self.store.lease_is_lost(LeaseLost(self.key, taken_by.describe()))
                return

    def _lost(self, lost: LeaseLost) -> None:
        self._stop.set()
        if self._on_lost is not None:
            self._on_lost(str(lost))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        if self.token is None:
            return
        lost = self.store.lease_lost
        self.store.unhold()
        if lost is None:
            try:
                self.store.leases.release(self.key, self.token, table=self.table)
            except StoreError as exc:  # it expires by itself
                log.warning(
                    "lease on %s not released (it expires in %.0f s): %s", self.key, self.lease_s, exc
                )
        self.token = None


class ArchiveLease(Lease):
    """`with ArchiveLease(store, key, ...):` claims the archive or raises ArchiveBusy; the store
    fences its writes with the lease for as long as it is held."""

    def __init__(
        self,
        store: ProgressStore,
        key: ArchiveKey,
        *,
        path: str,
        owner: Owner,
        lease_s: float = 120.0,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(store, key.archive, owner=owner, lease_s=lease_s, on_lost=on_lost)
        self.archive_key = key
        self._path = path

    def __enter__(self) -> ArchiveLease:
        self.acquire()
        return self

    def acquire(self) -> None:
        """Claim the archive. A holder that was asked to stop (`scancel`, then a rerun at once)
        is waited for, up to one lease: it ends soon, or was killed and its lease runs out."""
        claim = self._claim()
        deadline = time.monotonic() + self.lease_s + STOPPING_POLL_S
        if claim.token is None and claim.stopping:
            log.info("%s: %s is stopping; waiting for its lease", self.key, claim.holder.describe())
        while claim.token is None and claim.stopping and time.monotonic() < deadline:
            time.sleep(STOPPING_POLL_S)
            claim = self._claim()
        if claim.token is None:
            raise ArchiveBusy(self.key, claim.holder)
        if claim.was_leased:
            log.warning("%s: took over from %s, which is gone", self.key, claim.holder.describe())
        self.adopt(claim.token)

    def _claim(self) -> Claim:
        return self.store.leases.claim(
            self.archive_key,
            path=self._path,
            owner=self.owner,
            lease_s=self.lease_s,
            may_take=lambda holder: holder_is_gone(holder, self.owner),
        )
