"""doctor, test_streaming_setup.sh, the worker's apptainer command, and the image definition."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.state.embedded_pg import free_port
from streaming_pipeline.tools.doctor import PROBE_DIR

from ..conftest import DAY, REPO, RsyncDaemon

NOT_THERE_DSN = "host=127.0.0.1 port={port} user=pipeline password=do-not-print-me dbname=x connect_timeout=2"


def _lines(text: str) -> dict[str, str]:
    """check name -> status, from doctor's output."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^(PASS|FAIL|SKIP)\s+(\S+)", text, re.M)}


def _doctor_args(dsn: str, remote: str, model: Path | str, tmp_path: Path) -> list[str]:
    return [
        "doctor", "--offline", "--dsn", dsn, "--remote", remote, "--model", str(model),
        "--scratch-dir", str(tmp_path / "scratch"), "--device", "cpu",
    ]  # fmt: skip


def test_doctor_passes_here_and_leaves_nothing_on_the_destination(
    tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path, capsys
) -> None:
    assert main(["init-db", "--dsn", pg_dsn]) == 0
    rc = main(_doctor_args(pg_dsn, rsync_daemon.url, tiny_model, tmp_path))
    out = capsys.readouterr().out
    assert rc == 0, out
    status = _lines(out)
    for name in ("deps", "model", "speakers", "database", "destination", "scratch", "xz", "rsync"):
        assert status[name] == "PASS", out
    assert status["gpu"] in ("SKIP", "PASS") and status["container"] == "SKIP"
    assert "all checks passed" in out and "GiB free" in out
    assert list((rsync_daemon.data / PROBE_DIR).iterdir()) == []  # the probe came back and was removed


def test_doctor_names_each_failing_check_and_hides_the_password(
    tmp_path: Path, rsync_daemon: RsyncDaemon, capsys
) -> None:
    dsn = NOT_THERE_DSN.format(port=free_port())
    unreachable = f"rsync://127.0.0.1:{free_port()}/archive"
    args = _doctor_args(dsn, unreachable, tmp_path / "no-model", tmp_path)
    corrupt = tmp_path / "campplus.onnx"
    corrupt.write_bytes(b"not a graph")
    rc = main([*args, "--require-gpu", "--speaker-model", str(corrupt)])
    out = capsys.readouterr().out
    assert rc == 1
    status = _lines(out)
    assert status["model"] == status["speakers"] == status["database"] == status["destination"] == "FAIL", out
    assert f"the speaker model {corrupt} cannot be loaded" in out
    assert "does not exist" in out and "init-db" not in out
    assert status["deps"] == status["scratch"] == "PASS"
    assert "FAILED: " in out and "database" in out.splitlines()[-1]
    assert "do-not-print-me" not in out and "hint:" in out
    if status["gpu"] != "PASS":
        assert status["gpu"] == "FAIL"  # --require-gpu on a CPU-only machine


def test_doctor_says_when_the_schema_is_behind(
    tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path, capsys
) -> None:
    args = [*_doctor_args(pg_dsn, rsync_daemon.url, tiny_model, tmp_path), "--skip", "model,destination"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert _lines(out)["database"] == "FAIL" and "run: streaming-pipeline init-db" in out
    assert _lines(out)["model"] == "SKIP"


def _setup_env(tmp_path: Path, dsn: str, remote: str, model: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PIPELINE_DSN": dsn,
        "PIPELINE_REMOTE": remote,
        "PIPELINE_MODEL": str(model),
        "PIPELINE_DEVICE": "cpu",
        "PIPELINE_SCRATCH": str(tmp_path / "scratch"),
        "PIPELINE_WORKER_SBATCH_ARGS": "--gres=none --cpus-per-task=1 --mem=1G",
    }


@pytest.mark.slurm
def test_setup_script_passes_on_this_node_and_fails_for_a_wrong_dsn(
    slurm: dict[str, str], tmp_path: Path, pg_dsn: str, rsync_daemon: RsyncDaemon, tiny_model: Path
) -> None:
    assert main(["init-db", "--dsn", pg_dsn]) == 0
    env = {
        **_setup_env(tmp_path, pg_dsn, rsync_daemon.url, tiny_model),
        **{"SLURM_CONF": slurm.get("SLURM_CONF", "")},
    }
    ok = subprocess.run([str(REPO / "test_streaming_setup.sh")], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all checks passed" in ok.stdout and "PASS  sbatch" in ok.stdout and "node ready" in ok.stdout

    env["PIPELINE_DSN"] = NOT_THERE_DSN.format(port=free_port())
    bad = subprocess.run([str(REPO / "test_streaming_setup.sh")], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAIL  database" in bad.stdout and "node NOT ready" in bad.stdout
    assert "do-not-print-me" not in bad.stdout + bad.stderr


def test_worker_runs_in_the_image_with_binds_and_nv(tmp_path: Path) -> None:
    """Apptainer is not in Debian's archive: a stand-in on PATH records the command it is given
    (the one fake here, because the real one cannot be installed on this machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "apptainer-argv"
    fake = bin_dir / "apptainer"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    archive = tmp_path / "input" / DAY / "12_30.tar.xz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PIPELINE_CONTAINER": str(tmp_path / "streaming.sif"),
        "PIPELINE_SCRATCH": str(tmp_path / "scratch"),
        "PIPELINE_LOG_DIR": str(tmp_path / "logs"),
        "PIPELINE_MODEL": str(tmp_path),
        "PIPELINE_CONTAINER_BINDS": "/models:/models:ro",
    }
    script = REPO / "hpc" / "process_single_tar_streaming.sh"
    run = subprocess.run(
        ["bash", str(script), DAY, str(archive), "12_30"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    argv = record.read_text().splitlines()
    binds = f"{archive.parent},{tmp_path / 'scratch'},{tmp_path / 'logs'},{tmp_path},/models:/models:ro"
    assert argv == [
        "exec", "--nv", "--bind", binds, str(tmp_path / "streaming.sif"),
        "streaming-pipeline", "process-tar", DAY, str(archive), "12_30",
    ]  # fmt: skip
    (log,) = (tmp_path / "logs").glob(f"stream_tar_{DAY}_12_30_local-*.out")
    assert "=== start" in log.read_text() and "exit 0" in log.read_text()


def test_image_definition_has_what_the_cluster_needs() -> None:
    text = (REPO / "containers" / "streaming_audio_processing.def").read_text()
    sections = set(re.findall(r"^%(\w+)", text, re.M))
    assert {"post", "environment", "runscript", "test", "help", "labels", "files", "arguments"} <= sections
    base = re.search(r"^From:\s*(\S+)", text, re.M)
    assert base and re.match(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu", base.group(1))
    assert "libcudnn.so.9" in text and "python3.11" in text and "rsync" in text and "xz-utils" in text
    assert "HF_HUB_OFFLINE=1" in text and "PYTHONUNBUFFERED=1" in text
    # the speaker model is in the image (jobs run offline) and named for every command
    assert (
        "assemble(Path('/opt/campplus'))" in text
        and "PIPELINE_SPEAKER_MODEL=/opt/campplus/campplus.onnx" in text
    )
    assert 'exec streaming-pipeline "$@"' in text and "doctor --offline" in text
    assert (REPO / "containers" / "no-model").is_dir()  # MODEL_DIR's default
    if shutil.which("apptainer", path="/usr/bin:/bin"):
        return  # a real build takes a network and minutes; the script's own error path is below
    build = subprocess.run(
        ["bash", str(REPO / "containers" / "build_streaming_containers.sh")],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 1 and "apptainer is not installed" in build.stderr
