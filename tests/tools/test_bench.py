"""`bench`: every variant does the same work, the figures add up, the samplers see what happens.

Timings are not asserted (a 2-core CI machine is too noisy for that); the README's table comes
from a real run.
"""

from __future__ import annotations

import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from streaming_pipeline.cli import main
from streaming_pipeline.stages.cpu import CPU_STAGES, DECODING, STARTUP
from streaming_pipeline.tools.bench_memory import measure_process, pinned, with_children
from streaming_pipeline.tools.bench_runs import largest_batch_bytes, rate_once_full, repeat_archive

from ..conftest import add_bytes


def _outputs(remote: Path) -> dict[str, str]:
    """Relative path of each uploaded JSON -> its transcript."""
    return {str(p.relative_to(remote)): json.loads(p.read_text())["text"] for p in remote.rglob("*.json")}


@pytest.mark.slow
def test_bench_runs_every_variant_on_the_same_work(
    tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "bench"
    report_path = tmp_path / "report.json"
    rc = main([
        "bench", "--members", "6", "--repeat", "2", "--large-factor", "2", "--feed-factor", "2",
        "--work-dir", str(work), "--json", str(report_path), "--dsn", pg_dsn, "--model", str(tiny_model),
        "--temperatures", "0", "--stream-batch-size", "2",
    ])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())

    for key in ("sequential_wall_s", "streaming_wall_s", "transcribe_only_wall_s", "per_member_wall_s"):
        assert report[key] > 0
    for name in ("sequential", "streaming pipeline (batched decoder)", "batched decoder alone", "per-member"):
        assert name in printed
    assert report["ratio_streaming_sequential"] == pytest.approx(
        report["streaming_wall_s"] / report["sequential_wall_s"]
    )
    assert report["ratio_streaming_transcribe_only"] == pytest.approx(
        report["streaming_wall_s"] / report["transcribe_only_wall_s"]
    )
    assert report["streaming_audio_s_per_wall_s"] == pytest.approx(
        report["audio_s"] / report["streaming_wall_s"]
    )
    # Both streaming rounds processed every member: the second did not resume from the first.
    assert len(report["all_wall_s"]["streaming"]) == 2
    assert report["audio_s"] == pytest.approx(report["sequential_audio_s"], rel=1e-6)
    assert report["audio_s"] == pytest.approx(report["transcribe_only_audio_s"], rel=1e-6)
    assert report["audio_s"] == pytest.approx(report["per_member_audio_s"], rel=1e-6)
    # Re-transcription from the FLACs made every member again, after each streaming round.
    assert report["audio_s"] == pytest.approx(report["retranscribe_audio_s"], rel=1e-3)
    assert len(report["all_wall_s"]["retranscribe"]) == 2 and "re-transcription" in printed
    assert report["ratio_retranscribe_streaming"] == pytest.approx(
        report["retranscribe_wall_s"] / report["streaming_wall_s"]
    )
    assert report["ratio_streaming_per_member_throughput"] == pytest.approx(
        report["streaming_audio_s_per_wall_s"] / report["per_member_audio_s_per_wall_s"]
    )
    floor = report["stage_busy_s"]["transcribe_only"]
    assert floor["decoder_rows"] >= 6 and floor["decoder_rows_per_call"] > 1
    assert report["gpu"] == {} and report["gpu_busy_streaming"] is None  # no GPU here: not guessed
    assert set(report["stage_busy_s"]["sequential"]) == {"extract", "convert", "transcribe", "upload"}
    assert {"extract", "convert", "transcribe", "upload"} <= set(report["stage_busy_s"]["streaming"])

    # Same model, same decoder, same greedy decoding, same converted audio: the pipeline's
    # transcripts are the decoder's alone, member for member.
    sequential = _outputs(work / "sequential" / "remote")
    streaming = _outputs(work / "streaming" / "remote")
    assert len(sequential) == 6
    assert {Path(k).name for k in streaming} == {Path(k).name for k in sequential}
    stage = work / "sequential" / "stage"
    order = [str(p.relative_to(stage).with_suffix("")) for p in sorted(stage.rglob("*.flac"))]
    alone = dict(zip(order, json.loads((work / "transcribe-only.json").read_text()), strict=True))
    assert {k.split("/bench/", 1)[1].removesuffix(".json"): v for k, v in streaming.items()} == alone

    # The process-tar runs: a Python process with CTranslate2 loaded, and scratch was used.
    assert report["peak_pss_mb_large"] > 50 and report["peak_pss_mb_small"] > 50
    assert report["peak_main_pss_mb_small"] <= report["peak_pss_mb_small"] <= report["peak_rss_mb_small"]
    assert report["ratio_pss_large_small"] == pytest.approx(
        report["peak_pss_mb_large"] / report["peak_pss_mb_small"]
    )
    assert report["peak_scratch_bytes"] > 0
    assert report["stream_batch_bytes"] > 0
    cores = len(os.sched_getaffinity(0))
    limits = [0.7, 1.25, 1.35, 1.35, 1.15, 2.0, 150.0] + ([1.7] if cores > 1 else [])
    assert [t["limit"] for t in report["targets"]] == limits

    # The feed ceiling: an archive of 2 copies of each member (--feed-factor) decoded one token a window,
    # on one core and on all; each stage's CPU per audio hour, and the node it sizes.
    feed = report["feed"]
    assert [run["cores"] for run in feed["runs"]] == sorted({1, cores})
    for run in feed["runs"]:
        assert run["audio_s"] == pytest.approx(2 * report["audio_s"], rel=1e-3)
        assert run["audio_s_per_wall_s"] == pytest.approx(run["audio_s"] / run["wall_s"])
        assert run["startup_cpu_s"] > 0
        stages = run["cpu_s_per_audio_hour"]
        assert list(stages) == [s for s in CPU_STAGES if s != STARTUP]
        for stage in (
            "reader",
            "conversion",
            "samples",
            "vad",
            "features",
            "outputs",
            "database",
            "upload",
            DECODING,
        ):
            assert stages[stage] > 0, stage
        assert run["cores_for_gpu_rate"] == pytest.approx(
            300 * (sum(stages.values()) - stages[DECODING]) / 3600
        )
        assert 0 < run["busy_cores"] <= run["cores"] + 0.5  # CPU seconds over wall seconds
        assert run["audio_s_per_wall_s_once_full"] > 0  # from the first batch done to the last
    assert feed["feed_ceiling"] == feed["runs"][-1]["audio_s_per_wall_s"] == report["feed_ceiling"]
    assert feed["feed_ceiling_once_full"] == feed["runs"][-1]["audio_s_per_wall_s_once_full"]
    assert (feed["copies"], report["feed_factor"]) == (2, 2) and feed["audio_s"] == feed["runs"][-1][
        "audio_s"
    ]
    assert "feed ceiling (decoding nearly free" in printed and "cores to keep a GPU decoding 300x" in printed
    for mode in ("none", "segment", "word"):
        assert report[f"timestamps_{mode}_audio_s"] == pytest.approx(report["audio_s"], rel=1e-6)
        assert f"batched decoder alone, --timestamps {mode}" in printed
    assert report["timestamps_segment_wall_s"] == report["transcribe_only_wall_s"], (
        "the default's run, reused"
    )
    assert report["ratio_timestamps_word_none"] == pytest.approx(
        report["timestamps_word_wall_s"] / report["timestamps_none_wall_s"]
    )
    assert report["stage_busy_s"]["timestamps_word"]["decoder_align_s"] > 0
    assert "streaming wall <= 0.7 x sequential" in printed


def test_rate_once_full_leaves_the_start_out() -> None:
    # 10 s until the first batch (120 audio s) was done, then 60 audio s a second.
    progress = [(10.0, 120.0), (12.0, 240.0), (14.0, 360.0), (16.0, 480.0)]
    assert rate_once_full(progress) == pytest.approx(60.0)
    assert rate_once_full(progress[:1]) is None and rate_once_full([]) is None
    assert rate_once_full([(5.0, 1.0), (5.0, 2.0)]) is None  # no time between them


def test_pinned_takes_the_database_server_and_its_children_along() -> None:
    """A shell stands in for the postmaster, its sleep for a backend; both are pinned with this
    process's threads, and all get their own affinity back."""
    import subprocess
    import time

    server = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(with_children(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = with_children(server.pid)
        assert tree[0] == server.pid and len(tree) == 2
        everywhere = os.sched_getaffinity(0)
        one = {min(everywhere)}
        with pinned(one, server.pid):
            assert os.sched_getaffinity(0) == one
            assert all(os.sched_getaffinity(pid) == one for pid in tree)
        assert os.sched_getaffinity(0) == everywhere
        assert all(os.sched_getaffinity(pid) == everywhere for pid in tree)
    finally:
        server.kill()
        server.wait()


def test_repeat_archive_and_batch_bytes(tmp_path: Path) -> None:
    source = tmp_path / "a.tar.xz"
    with tarfile.open(source, "w:xz") as tar:
        for i, size in enumerate((100, 300, 50, 700, 10)):
            add_bytes(tar, f"d/m{i}.wav", b"x" * size)
    copies = repeat_archive(source, tmp_path / "b.tar.xz", 3)
    with tarfile.open(copies) as tar:
        names = tar.getnames()
    assert len(names) == 15 and names[0] == "copy-0/d/m0.wav" and names[-1] == "copy-2/d/m4.wav"
    assert largest_batch_bytes(source, 2) == 750
    assert largest_batch_bytes(source, 5) == 1160
    assert largest_batch_bytes(copies, 5) == 1160


def test_measure_process_sees_memory_and_scratch(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    program = (
        "import pathlib, time\n"
        "block = bytearray(300 * 1024 * 1024)\n"
        "block[::4096] = b'x' * len(block[::4096])\n"  # touch every page: resident, not just mapped
        f"pathlib.Path({str(scratch / 'f')!r}).write_bytes(b'y' * 20_000_000)\n"
        "time.sleep(0.5)\n"
    )
    peak = measure_process([sys.executable, "-c", program], {}, scratch, tmp_path / "log")
    assert peak.returncode == 0
    assert 300 <= peak.peak_pss_mb < 400 and 300 <= peak.peak_rss_mb < 400
    assert peak.peak_main_rss_mb >= 300 and peak.peak_main_pss_mb >= 300
    assert peak.peak_scratch_bytes == 20_000_000


def test_a_forked_child_does_not_count_its_parents_pages_twice(tmp_path: Path) -> None:
    """The worker forks rsync: while the child lives, summed RSS counts the 300 MB the two share
    twice; PSS splits them between the two, so the tree's PSS stays ~300 MB."""
    program = (
        "import os, time\n"
        "block = bytearray(300 * 1024 * 1024)\n"
        "block[::4096] = b'x' * len(block[::4096])\n"
        "r, w = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.close(r); os.write(w, b'1'); time.sleep(1.0); os._exit(0)\n"
        "os.close(w); os.read(r, 1)\n"  # the child is alive from here on
        "time.sleep(0.5)\n"
        "os.waitpid(pid, 0)\n"
    )
    peak = measure_process([sys.executable, "-c", program], {}, tmp_path, tmp_path / "log")
    assert peak.returncode == 0
    assert peak.peak_rss_mb >= 550  # parent + child, each showing the shared 300 MB
    assert 300 <= peak.peak_pss_mb < 400


def test_missing_archive_is_one_line(tmp_path: Path, pg_dsn: str, tiny_model: Path, capsys) -> None:
    missing = tmp_path / "nope.tar.xz"
    rc = main(["bench", "--archive", str(missing), "--work-dir", str(tmp_path / "w"),
               "--dsn", pg_dsn, "--model", str(tiny_model)])  # fmt: skip
    assert rc == 2
    assert f"archive {missing} does not exist" in capsys.readouterr().err
