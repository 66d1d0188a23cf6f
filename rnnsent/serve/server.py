"""`rnnsent serve`'s server: uvicorn around the app, with the request head bounded before the app sees it.

uvicorn reads a request's line and headers without a bound on their size, number or time, and holds a connection
that never finishes them. LimitedHttp, its httptools protocol with checks added, refuses a head over
--max-header-bytes or --max-headers (431), one not complete --header-timeout-s after its first byte (408), and a
connection beyond --limit-concurrency open ones (503); its refusals, and uvicorn's own 400 for a request that is not
HTTP, are {"error": "one line"} as the app's are. On SIGTERM or Ctrl-C the app hears of it at once (explanations in
flight stop), and the server drains for --drain-s.
"""
from __future__ import annotations

import json
import signal

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from rnnsent.serve.settings import ServeSettings


class _Refused(Exception):
    """Raised in a parser callback to stop parsing: uvicorn answers it through send_400_response."""


class LimitedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded in bytes, header lines and time, and the open
    connections in number. `settings` is set on a subclass per server (protocol_for)."""

    settings: ServeSettings

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._in_head, self._head_bytes, self._header_lines = True, 0, 0
        self._refusal: tuple[int, str] | None = None
        self._head_timer = None
        if len(self.connections) > self.settings.limit_concurrency:
            self._refuse(503, f"more than {self.settings.limit_concurrency} connections are open (--limit-concurrency)"
                              "; retry shortly")
            return
        self._start_head_timer()

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        was_in_head = self._in_head
        super().data_received(data)  # the parser's callbacks below run here
        if self._in_head and not self.transport.is_closing():  # a head still incomplete: count what it has taken
            self._head_bytes = (self._head_bytes if was_in_head else 0) + len(data)
            if self._head_bytes > self.settings.max_header_bytes:
                self._refuse(431, self._head_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._header_lines = True, 0
        if self._head_timer is None:
            self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.settings.max_header_bytes:
            self._stop(431, self._head_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > self.settings.max_headers:
            self._stop(431, f"the request has more than {self.settings.max_headers} header lines (--max-headers)")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)  # "name: value\r\n"
        if size > self.settings.max_header_bytes:
            self._stop(431, self._head_too_large())
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to what the parser refused
        self._refuse(*(self._refusal or (400, "the request is not valid HTTP/1.1")))

    def _head_too_large(self) -> str:
        return f"the request line and headers are over {self.settings.max_header_bytes} bytes (--max-header-bytes)"

    def _stop(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def _refuse(self, status: int, message: str) -> None:
        """Answer {"error": message} with `status` and close the connection."""
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message}, separators=(",", ":")).encode("ascii")
        head = [STATUS_LINE[status], *(b"%s: %s\r\n" % kv for kv in self.server_state.default_headers),
                b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.settings.header_timeout_s, self._head_timeout)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:  # an answer is on its way: no second one
            self.transport.close()
        else:
            self._refuse(408, f"the request line and headers took more than {self.settings.header_timeout_s:g} s "
                              "(--header-timeout-s)")


def protocol_for(settings: ServeSettings) -> type[LimitedHttp]:
    return type("LimitedHttp", (LimitedHttp,), {"settings": settings})


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app (on_exit) the moment a signal asks it to stop, before the drain."""

    def __init__(self, config: uvicorn.Config, on_exit):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def run(app, settings: ServeSettings) -> bool:
    """Serve create_app's `app` until SIGTERM or Ctrl-C, then drain; True once it had listened, False when it could
    not bind (uvicorn's log line says why)."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=settings.access_log, timeout_graceful_shutdown=settings.drain_s,
                            timeout_keep_alive=settings.keep_alive_s, http=protocol_for(settings), lifespan="on")
    server = _Server(config, on_exit=app.state.served.begin_drain)
    # uvicorn answers SIGTERM/SIGINT by draining, then re-raises the signal under the handler it found: a quiet one
    # here, so that a drained server exits 0 instead of dying by the signal.
    before = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to an address it cannot bind; its log line above says why
        pass
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return server.started
