"""Passwords kept out of every message: DSN-shaped ones and any known secret become ***."""

from __future__ import annotations

import re

_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_PASSWORD_URI = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")


def redact_dsn(dsn: str) -> str:
    """Replace the password in a libpq key=value string or URI with ***."""
    text = _PASSWORD_KV.sub(r"\1***", dsn)
    return _PASSWORD_URI.sub(r"\1***\3", text)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Redact DSN-shaped passwords and any known secret from an arbitrary message."""
    out = redact_dsn(text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, "***")
    return out


def describe_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """An exception as one line, with passwords (DSN-shaped or known) replaced by ***."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__, secrets)


def dsn_password(dsn: str) -> str:
    """The password in a DSN, so that messages from libpq can be scrubbed of it too."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return str(conninfo_to_dict(dsn).get("password") or "")
    except Exception:  # noqa: BLE001 - an unparsable DSN has no password we can find
        return ""
