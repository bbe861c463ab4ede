"""A private PostgreSQL server in a state directory, for machines where none is configured.

Uses the distribution's server binaries (Debian: postgresql-15). PostgreSQL refuses to run as
root, so as root the cluster is owned by and run as the `postgres` system user.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger(__name__)


def find_bindir() -> Path:
    """Debian's newest server first, then whatever initdb is on PATH."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = shutil.which("initdb")
    for path in [*map(Path, debian), *([Path(on_path).parent] if on_path else [])]:
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    raise ConfigError(
        "no PostgreSQL server binaries found (install the postgresql package, or set PIPELINE_DSN)"
    )


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free (a restarted server keeps its DSN), else any free port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """`settings`: extra server settings (`max_connections`, ...), passed as `-c name=value`."""

    def __init__(self, state_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.settings = dict(settings or {})
        self.data_dir = self.state_dir / "data"
        self.port_file = self.state_dir / "port"
        self.bindir = find_bindir()
        self._as_root = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)

    def dsn(self) -> str:
        port = self.port_file.read_text().strip()
        return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

    def running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run(str(self.bindir / "pg_ctl"), "status", "-D", str(self.data_dir)).returncode == 0

    def start(self) -> str:
        """Initialise on first use, start if needed; returns the DSN."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.state_dir, pw.pw_uid, pw.pw_gid)
        if self._as_root and self._run("test", "-w", str(self.state_dir)).returncode != 0:
            raise ConfigError(
                f"the embedded PostgreSQL runs as user postgres, which cannot reach {self.state_dir}; "
                "choose a state dir whose parents it can traverse"
            )
        if not (self.data_dir / "PG_VERSION").exists():
            proc = self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            )
            if proc.returncode != 0:
                raise ConfigError(f"initdb failed: {proc.stderr.strip()[:500]}")
        if self.running():
            return self.dsn()
        previous = self.port_file.read_text().strip() if self.port_file.exists() else ""
        port = free_port(int(previous) if previous.isdigit() else 0)
        self.port_file.write_text(str(port))
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.state_dir}"
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        proc = self._run(
            str(self.bindir / "pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.state_dir / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
        )
        if proc.returncode != 0:
            raise ConfigError(f"embedded PostgreSQL did not start: {proc.stderr.strip()[:500]}")
        log.info("embedded PostgreSQL running in %s on port %d", self.data_dir, port)
        time.sleep(0.2)
        return self.dsn()

    def server_pid(self) -> int | None:
        """The postmaster's pid while it runs (the first line of its postmaster.pid)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def stop(self) -> None:
        if self.running():
            self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w")
