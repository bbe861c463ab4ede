"""`serve`: the web view's settings checked, its parts made, and uvicorn run (the main thread;
uvicorn's event loop runs the guard, its thread pool the handlers)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ..config import PipelineConfig
from ..destination import Destination, Rsync
from ..errors import ConfigError
from ..redaction import redact_dsn
from .access import Guard, is_loopback
from .app import StorePool, WebView, Where
from .files import FileSource, LocalFiles, RsyncCache

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 512 * 1024

_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")


def token_of(config: PipelineConfig) -> str:
    """The token from PIPELINE_SERVE_TOKEN or --token-file; required off loopback."""
    token = config.token
    if config.token_file is not None:
        try:
            token = config.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: {exc.strerror}: {config.token_file}") from None
    if token and _TOKEN.fullmatch(token) is None:
        raise ConfigError("the token must be 16 to 512 characters of letters, digits and ._~+/=-")
    if not token and not is_loopback(config.host):
        raise ConfigError(
            f"--host {config.host} is not a loopback address: set a token (PIPELINE_SERVE_TOKEN or "
            "--token-file) that every request must carry, or serve on 127.0.0.1"
        )
    return token


def file_source(config: PipelineConfig) -> tuple[FileSource, Where]:
    destination = Destination.parse(config.remote)
    label = redact_dsn(destination.spec)  # a password in an rsync:// URL shows as ***
    if config.audio_root is not None:
        return LocalFiles(destination, config.audio_root), Where(f"{label} (at {config.audio_root})")
    if destination.is_local:
        return LocalFiles(destination, Path(destination.spec)), Where(label)
    rsync = Rsync.of(config.destination)
    cache = RsyncCache(destination, config.scratch_dir / "web-cache", config.audio_cache_mb * 1024**2, rsync)
    return cache, Where(label)


def build(config: PipelineConfig) -> tuple[Guard, StorePool]:
    """The application as uvicorn runs it, and the pool to close after it."""
    if not config.dsn:
        raise ConfigError("no database: set --dsn or PIPELINE_DSN")
    token = token_of(config)
    files, where = file_source(config)
    pool = StorePool(config.dsn)
    try:
        pool.check()
    except Exception:
        pool.close()
        raise
    view = WebView(pool, files, where)
    return Guard(view.app(), token=token, loopback=is_loopback(config.host)), pool


def serve(config: PipelineConfig) -> int:
    import uvicorn

    app, pool = build(config)
    log.info(
        "serving %s on http://%s:%d/ (database %s)%s", config.remote, config.host, config.port,
        config.redacted_dsn(), "; a token is required" if app.requires_token else "",
    )  # fmt: skip
    try:
        # uvicorn's access log would write each query string, a first visit's token included:
        # the guard logs requests instead.
        # A request line of up to MAX_REQUEST_BYTES reaches the routes, which say what is wrong with
        # a long value (h11's own limit, 16 KiB, would close the connection without a word).
        uvicorn.run(
            app, host=config.host, port=config.port, access_log=False, log_config=None, http="h11",
            h11_max_incomplete_event_size=MAX_REQUEST_BYTES,
        )  # fmt: skip
    finally:
        pool.close()
    return 0
