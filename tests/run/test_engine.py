"""The member lifecycle on its own (run/engine.py): order, batches, uploads and stops, with a
work that records what it is asked and real rsync uploads to a local destination.

The decoder here is a stand-in (`HeldDecoder`): a real model cannot be held at a chosen member,
which is what the stop tests need; the archive, dataset and re-transcription tests run the same
lifecycle with the real decoders."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from streaming_pipeline.config import PipelineConfig
from streaming_pipeline.errors import TranscriptionError
from streaming_pipeline.run.engine import BatchEnd, Lifecycle, Outcome, Upload
from streaming_pipeline.run.skeleton import RunTally, StagedRun
from streaming_pipeline.stages.asr.protocol import DecoderStats
from streaming_pipeline.stages.upload import UploadJob
from streaming_pipeline.state.store import ProgressStore
from streaming_pipeline.transcript import Transcript


class HeldDecoder:
    """Transcripts at once, except for members in `hold`, which wait until released."""

    def __init__(self, hold: Collection[str] = (), fail: Collection[str] = ()) -> None:
        self.hold, self.fail = hold, fail
        self.held: dict[str, Future[Transcript]] = {}
        self.submitted: list[str] = []

    def submit(self, audio: np.ndarray, *, archive: str, member: str) -> Future[Transcript]:
        self.submitted.append(member)
        future: Future[Transcript] = Future()
        if member in self.hold:
            self.held[member] = future
        elif member in self.fail:
            future.set_exception(TranscriptionError(f"{member}: cannot be decoded"))
        else:
            future.set_result(Transcript(archive, member, "m", "en", 1.0, float(audio.size)))
        return future

    def cancel_pending(self) -> int:
        for future in self.held.values():
            future.cancel()
        return len(self.held)

    def stats(self) -> DecoderStats:
        return DecoderStats()

    def close(self) -> None:
        self.cancel_pending()


class RecordingWork:
    """Items are names; a batch is `per_batch` of them; each finished item is a file staged for
    its batch's upload. Records which thread ran what."""

    def __init__(
        self, stage: Path, items: list[str], per_batch: int, on_submit: Callable[[str], None]
    ) -> None:
        self.stage, self.items, self.per_batch, self.on_submit = stage, items, per_batch, on_submit
        self.finished: list[tuple[str, str]] = []  # (item, outcome kind)
        self.closed: list[int | None] = []
        self.left: list[str] = []
        self.uploaded: list[tuple[int, str]] = []
        self.threads: dict[str, set[str]] = {}

    def _ran(self, what: str) -> None:
        self.threads.setdefault(what, set()).add(threading.current_thread().name)

    def produce(self, put: Callable[[str | BatchEnd[int]], None]) -> None:
        self._ran("produce")
        for i, item in enumerate(self.items):
            put(item)
            if (i + 1) % self.per_batch == 0 or i + 1 == len(self.items):
                put(BatchEnd(i // self.per_batch))

    def submit(self, item: str, decoder: HeldDecoder) -> Future[Transcript] | None:
        self._ran("submit")
        self.on_submit(item)
        return None if item.startswith("settled") else decoder.submit(np.zeros(4), archive="a", member=item)

    def leave(self, item: str) -> None:
        self.left.append(item)

    def finish(self, item: str, outcome: Outcome) -> None:
        self._ran("finish")
        kind = type(outcome).__name__
        self.finished.append((item, kind))
        if isinstance(outcome, Transcript):
            (self.stage / f"batch-{len(self.closed)}").mkdir(parents=True, exist_ok=True)
            (self.stage / f"batch-{len(self.closed)}" / f"{item}.json").write_text(item)

    def close(self, end: BatchEnd[int] | None) -> Upload | None:
        self._ran("close")
        number = len(self.closed)
        self.closed.append(None if end is None else end.value)
        folder = self.stage / f"batch-{number}"
        if not folder.is_dir():
            return None

        def on_finish(job: UploadJob | None) -> None:
            self._ran("uploaded")
            self.uploaded.append((number, "none" if job is None else job.state.value))

        return Upload(folder, f"batch {number}", on_finish)


@pytest.fixture
def run(tmp_path: Path, pg_dsn: str):
    config = PipelineConfig(
        dsn=pg_dsn, remote=str(tmp_path / "remote"), scratch_dir=tmp_path / "scratch", stop_grace=30
    )
    staged = StagedRun(config, ProgressStore(pg_dsn), RunTally("done"))
    staged.destination.prepare()
    uploader = staged.open_uploads(max_concurrent=1)
    yield staged
    uploader.wait(timeout=30)
    uploader.close()
    staged.store.close()


def test_items_are_finished_in_order_batch_by_batch_and_each_batch_is_uploaded(run, tmp_path: Path) -> None:
    items = ["m0", "m1", "bad", "settled-3", "m4"]
    work = RecordingWork(tmp_path / "stage", items, per_batch=2, on_submit=lambda item: None)
    decoder = HeldDecoder(fail={"bad"})
    assert Lifecycle(run, work, decoder, read_ahead=3, hand_ahead=2).run_all() is True
    assert run.end_uploads(30)
    assert [item for item, _ in work.finished] == items
    assert dict(work.finished) == {
        "m0": "Transcript", "m1": "Transcript", "bad": "TranscriptionError", "settled-3": "NoneType",
        "m4": "Transcript",
    }  # fmt: skip
    assert work.closed == [0, 1, 2, None]  # a close per batch end, then the run's end
    assert sorted(work.uploaded) == [(0, "done"), (2, "done")]  # batch 1 staged nothing: no upload
    assert sorted(p.name for p in (tmp_path / "remote").rglob("*.json")) == ["m0.json", "m1.json", "m4.json"]
    assert work.threads["produce"] == {"reader"} and work.threads["finish"] == {"finisher"}
    assert work.threads["submit"] == {threading.current_thread().name}
    assert "finisher" not in work.threads["uploaded"] and "reader" not in work.threads["uploaded"]


def test_a_stop_leaves_what_was_not_handed_over_and_cancels_what_the_decoder_held(
    run, tmp_path: Path
) -> None:
    items = [f"m{i}" for i in range(8)]

    def stop_at_m3(item: str) -> None:
        if item == "m3":
            run.request_stop("stopped by the test")

    work = RecordingWork(tmp_path / "stage", items, per_batch=4, on_submit=stop_at_m3)
    decoder = HeldDecoder(hold={"m2"})
    assert Lifecycle(run, work, decoder, read_ahead=8, hand_ahead=8).run_all() is False
    assert run.end_uploads(None)
    # m0..m3 were handed over (m3 was being submitted as the stop came); m2 was held by the
    # decoder and cancelled; nothing after m3 was submitted, and every item read but not
    # submitted went back to the work.
    assert decoder.submitted == ["m0", "m1", "m2", "m3"]
    assert dict(work.finished)["m2"] == "CancelledError"
    assert set(work.left) == set(items[4:])
    assert work.closed[-1] is None  # the open batch closed at the run's end: its done members go up
    assert sorted(p.name for p in (tmp_path / "remote").rglob("*.json")) == ["m0.json", "m1.json", "m3.json"]


def test_an_error_in_the_finisher_ends_the_run_and_is_raised_in_the_main_thread(run, tmp_path: Path) -> None:
    class Broken(RecordingWork):
        def finish(self, item: str, outcome: Outcome) -> None:
            if item == "m1":
                raise OSError(28, "No space left on device")
            super().finish(item, outcome)

    work = Broken(tmp_path / "stage", [f"m{i}" for i in range(50)], per_batch=5, on_submit=lambda item: None)
    with pytest.raises(OSError, match="No space left"):
        Lifecycle(run, work, HeldDecoder(), read_ahead=2, hand_ahead=2).run_all()
    assert run.control.event.is_set()
    assert ("m0", "Transcript") in work.finished and all(item != "m49" for item, _ in work.finished)
