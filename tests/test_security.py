"""Security properties: no shell, parameterised SQL, no password anywhere a person or process can
read it, and nothing from an archive on a command line as an option."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from streaming_pipeline.cli import main
from streaming_pipeline.destination import Destination, Rsync
from streaming_pipeline.stages.upload import Uploads

from .conftest import DAY, REPO, SLOW_DECODING, make_day, query

SOURCES = sorted((REPO / "src" / "streaming_pipeline").rglob("*.py"))
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM|CREATE|ALTER|DROP)\b")
# The only values interpolated into SQL text: column lists built from constant tuples (and the
# matching placeholders); every value travels as a bound parameter.
SQL_INTERPOLATIONS = {"cols", "updates", "placeholders", "', %s' * len(values)"}


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_no_subprocess_gets_a_shell_or_a_string() -> None:
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            name = ast.unparse(call.func)
            assert name not in ("os.system", "os.popen"), f"{path.name}:{call.lineno}: {name}"
            if name.startswith("subprocess."):
                assert not any(k.arg == "shell" for k in call.keywords), f"{path.name}:{call.lineno}: shell="
                if call.args:
                    first = call.args[0]
                    assert not isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp), (
                        f"{path.name}:{call.lineno}: a command given as a string"
                    )


def test_sql_text_interpolates_only_constant_column_lists() -> None:
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if SQL.search(text):
                    used = {ast.unparse(v.value) for v in node.values if isinstance(v, ast.FormattedValue)}
                    assert used <= SQL_INTERPOLATIONS, f"{path.name}:{node.lineno}: {used}"
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Mod)
                and isinstance(node.left, ast.Constant)
                and SQL.search(str(node.left.value))
            ):
                raise AssertionError(f"{path.name}:{node.lineno}: SQL built with %")
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(".format"):
                target = node.func.value  # type: ignore[attr-defined]
                if isinstance(target, ast.Constant) and SQL.search(str(target.value)):
                    raise AssertionError(f"{path.name}:{node.lineno}: SQL built with .format")


# SQL outside state/, each with its reason; everything else the package asks PostgreSQL is in state/.
SQL_OUTSIDE_STATE = {
    "cli/tooling.py": "the psql command the demo prints for the user to run",
}


def test_sql_lives_in_state() -> None:
    package = REPO / "src" / "streaming_pipeline"
    for path in SOURCES:
        rel = path.relative_to(package).as_posix()
        if rel.startswith("state/") or rel in SQL_OUTSIDE_STATE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found = re.search(
                    r"\bSELECT\s|\bINSERT INTO\b|\bUPDATE \w+ SET\b|\bDELETE FROM\b", node.value
                )
                assert found is None, f"{rel}:{node.lineno}: SQL outside state/: {node.value[:60]!r}"


def test_rsync_never_takes_a_path_as_an_option(tmp_path: Path) -> None:
    """The commands the manager runs (recorded by a stand-in runner: only the argv matters here)."""
    seen: list[list[str]] = []

    def record(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    rsync = Rsync(Destination.parse("rsync://127.0.0.1:1/module/path"), timeout=5, retries=1, runner=record)
    manager = Uploads(rsync, max_concurrent=1)
    stage = tmp_path / "-stage"  # even a scratch dir that starts with '-'
    stage.mkdir()
    manager.submit(stage, label="x", on_finish=lambda _job: None)
    manager.wait()
    rsync.fetch(["-e/evil.flac"], tmp_path / "-fetch", label="x")
    rsync.existing(["-e/evil.flac"], tmp_path / "-check")
    manager.close()
    assert len(seen) == 3
    for cmd in seen:
        split = cmd.index("--")
        assert all(a.startswith("--") for a in cmd[1:split]), cmd  # options, all ours
        assert all(not a.startswith("-") for a in cmd[split + 1 :]), cmd  # paths: absolute or URLs
    listing = (tmp_path / "-check" / "files").read_bytes()
    assert listing == b"-e/evil.flac\0"  # names go through --files-from, never argv


def test_the_password_never_shows(tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys) -> None:
    secret = "Sekr1t-Pa55word"
    dsn = f"{pg_dsn} password={secret}"  # the test server trusts local connections: any password works
    (archive,) = make_day(tmp_path, ["23_00"], members=4)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PIPELINE_DSN": dsn}
    argv = [sys.executable, "-m", "streaming_pipeline", "-v", "process-tar", DAY, str(archive), "23_00",
            "--remote", str(tmp_path / "remote"), "--scratch-dir", str(tmp_path / "scratch"),
            "--model", str(tiny_model), "--device", "cpu", "--num-workers", "1", *SLOW_DECODING]  # fmt: skip
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    titles = ""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        titles += subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        titles += "".join(
            r["application_name"] for r in query(pg_dsn, "SELECT application_name FROM pg_stat_activity")
        )
        time.sleep(0.3)
    assert proc.wait(timeout=120) == 0, log.read_text()
    assert secret not in titles
    assert secret not in log.read_text()

    assert main(["status", DAY, "--dsn", dsn]) == 0
    assert main(["status", DAY, "--json", "--dsn", dsn]) == 0
    bad = dsn.replace("dbname=", "dbname=nonexistent_")
    assert main(["status", DAY, "--dsn", bad]) != 0
    out = capsys.readouterr()
    assert "does not exist" in out.err and secret not in out.out + out.err
