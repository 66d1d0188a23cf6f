"""What is checked before any route runs, as pure ASGI middleware, every refusal {"error": "one line"}: the Host and
Origin headers (HostCheck), the body's size and time (BodyLimit), and a request still running when the server's
drain time is up (AnswerCancelled)."""
from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

from starlette.responses import JSONResponse

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class SafeJSONResponse(JSONResponse):
    """JSON in ASCII: a text echoed back may hold lone surrogates ("\\ud800" in the request), which UTF-8
    cannot encode; escaped, every string the request could carry goes back out as valid JSON."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error(status: int, message: str) -> SafeJSONResponse:
    return SafeJSONResponse({"error": message}, status_code=status)


def _hostname(value: str) -> str | None:
    """The host of a Host header or an Origin ("name:port", "[::1]:port", "scheme://name:port"), lower-cased."""
    try:
        return urllib.parse.urlsplit(value if "://" in value else "//" + value).hostname
    except ValueError:  # an unbalanced "[" and the like
        return None


class HostCheck:
    """Who may call. The Host header must name this server (`hosts`: names, "*.example.com" or "*"), so that a web
    page elsewhere cannot reach a server on 127.0.0.1 through a name it points there (DNS rebinding); and a browser's
    POST from a page of another origin than the server's own is refused unless that origin is one of `origins`
    (CORS, "*" for any). Starlette's TrustedHostMiddleware does the first in plain text and not the second."""

    def __init__(self, app, hosts: list[str], origins: list[str]):
        self.app, self.hosts, self.origins = app, hosts, origins

    def _allowed(self, host: str | None) -> bool:
        return "*" in self.hosts or host is not None and any(
            host == h or h.startswith("*.") and host.endswith(h[1:]) for h in self.hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._allowed(_hostname(host)):
            return await error(400, f"the Host header {host[:100]!r} names no host this server answers to; start it "
                                    "with --allowed-hosts to add one")(scope, receive, send)
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/")
        own = f"{scope.get('scheme', 'http')}://{host}"
        if origin and scope["method"] not in SAFE_METHODS and origin != own and not (
                "*" in self.origins or origin in self.origins):
            return await error(403, f"a page of {origin[:100]!r} may not call this server; start it with "
                                    "--cors-origin to let it")(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """A POST body is read whole (at most max_bytes, within timeout_s) before the route runs, so an over-long body
    costs no more than the limit and a slow client holds only its own request."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status, why = (413, f"the body is over {self.max_bytes} bytes") if declared.isdigit() else (
                400, "the Content-Length header is not a number")
            return await error(status, why)(scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except TimeoutError:
            return await error(408, f"the body took more than {self.timeout_s:g} s to arrive")(scope, receive, send)
        except _TooLarge:
            return await error(413, f"the body is over {self.max_bytes} bytes")(scope, receive, send)
        if body is None:  # the client went away
            return
        sent = False

        async def replay():  # the body once, then what the server says next (the client going away)
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _TooLarge(Exception):
    pass


class AnswerCancelled:
    """A request still running when the drain time (--drain-s) is up is cancelled by the server (uvicorn): it is
    answered 503 in the JSON shape, with no traceback in the log, instead of the server's plain-text 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except asyncio.CancelledError:  # the request's own task, at its top: nothing above it waits on it
            if not started:
                await error(503, "the server is shutting down; retry shortly")(scope, receive, send)
