"""Who may read the web view, and what a browser may do with its pages: an ASGI middleware in
front of every route (the event loop's thread runs it).

- Off loopback a token is required (`serve` refuses to start without one). It is checked in
  constant time on every request: `Authorization: Bearer`, or the cookie set by a first visit to
  `?token=...` (answered by a redirect to the same page without it, so the token does not stay in
  the address bar, the history or a Referer).
- On loopback without a token, only requests addressed to a loopback name are served: a page
  elsewhere cannot reach the view through a DNS name rebound to 127.0.0.1.
- Every response forbids inline script, framing and sniffing; the access log is this module's,
  with the query string's token left out (uvicorn's own would write it).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "sp_token"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """The token check, the Host check and the security headers around `app`."""

    def __init__(self, app: ASGIApp, *, token: str, loopback: bool) -> None:
        self._app = app
        self._token = token
        self._check_host = loopback and not token

    @property
    def requires_token(self) -> bool:
        return bool(self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        status: list[int] = [0]

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _HEADERS if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                message["headers"] = headers
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await _answer(send_secured, *refusal)
        else:
            await self._app(scope, receive, send_secured)
        log.info(
            "%s %s%s %d %.0fms", scope["method"], scope["path"], _logged_query(scope), status[0],
            1000 * (time.monotonic() - started),
        )  # fmt: skip

    def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self._check_host:
            host = headers.get("host", "")
            name = host.split("]")[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
            if name not in _LOOPBACK_NAMES:
                return 421, "This server answers only to requests for localhost.", []
        if not self._token:
            return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None and token_matches(given, self._token):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={self._token}; Path=/; HttpOnly; SameSite=Strict"
            return 303, "", [(b"location", location.encode()), (b"set-cookie", cookie.encode())]
        bearer = headers.get("authorization", "")
        if bearer.startswith("Bearer ") and token_matches(bearer[7:].strip(), self._token):
            return None
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            cookies = SimpleCookie()
        if COOKIE in cookies and token_matches(cookies[COOKIE].value, self._token):
            return None
        return (
            401,
            "A token is required: open the address with ?token=... once.",
            [(b"www-authenticate", b"Bearer")],
        )


async def _answer(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = text.encode()
    length = str(len(body)).encode()
    plain = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", length)]
    await send({"type": "http.response.start", "status": status, "headers": [*plain, *headers]})
    await send({"type": "http.response.body", "body": body})


def _logged_query(scope: Scope) -> str:
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    shown = urlencode([(k, "***" if k == "token" else v) for k, v in query])
    return f"?{shown}" if shown else ""
