"""The server's settings, defined once: `rnnsent serve`'s flags and create_app's arguments. Plain Python, no
FastAPI or torch, so `rnnsent serve --help` is instant and says what is missing only when the server starts."""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field

from rnnsent.config import AT_LEAST_1, ExplainConfig, Range

SECONDS = Range(0.001, 3600.0, high_open=False, says="in [0.001, 3600.0]")


def _flag(default, help: str, bounds: Range | None = None):
    return field(default=default, metadata={"help": help, "bounds": bounds})


@dataclass(frozen=True)
class ServeSettings:
    """What `rnnsent serve` binds, how it batches and what one request may hold. Every field is a flag
    (--max-batch for max_batch) with its help in the field's metadata, and its bounds (config.Range)."""

    host: str = _flag("127.0.0.1", "address to listen on; 0.0.0.0 serves other machines too")
    port: int = _flag(8000, "TCP port", Range(1, 65535, high_open=False, says="in [1, 65535]"))
    # Batching: the first waiting request opens a batch; it closes at max_batch texts or max_wait_ms later.
    max_batch: int = _flag(64, "most texts in one forward pass (1: one forward per text, no batching)", AT_LEAST_1)
    max_wait_ms: float = _flag(2.0, "how long a batch waits for more requests after its first (only while "
                                    "requests overlap: a lone client is answered at once)",
                               Range(0.0, 10_000.0, high_open=False, says="in [0.0, 10000.0]"))
    # Limits on untrusted input: each is checked before anything is tokenized.
    max_body_bytes: int = _flag(1 << 20, "largest request body in bytes", AT_LEAST_1)
    max_texts: int = _flag(256, "most texts in one request", AT_LEAST_1)
    max_chars: int = _flag(20_000, "most characters in one text (IMDB's longest review has 13,704)", AT_LEAST_1)
    max_explain_texts: int = _flag(8, "most texts in one /v1/explain request (attributions cost a forward "
                                      "and backward pass per step)", AT_LEAST_1)
    max_queue: int = _flag(4096, "most texts waiting for the model; beyond it requests get 503", AT_LEAST_1)
    body_timeout_s: float = _flag(10.0, "seconds a client may take to send its request body", SECONDS)
    drain_s: float = _flag(30.0, "on SIGTERM or Ctrl-C: seconds to finish in-flight requests before exiting",
                           Range(0.0, 3600.0, high_open=False, says="in [0.0, 3600.0]"))
    threads: int = _flag(1, "CPU threads for the model (the event loop needs a core of its own)", AT_LEAST_1)
    access_log: bool = _flag(False, "log one line per request (uvicorn's access log)")
    explain_steps: int = _flag(ExplainConfig.steps, "integrated-gradients steps for /v1/explain, and the most a "
                                                    "request may ask for",
                               ExplainConfig.__dataclass_fields__["steps"].metadata["bounds"])
    # /v1/explain's own queue: its work counted in texts x steps, run on the model's thread one text at a time.
    max_explain_work: int = _flag(1600, "most /v1/explain work at once, running and waiting, counted in texts x "
                                        "steps (8 texts at 50 steps are 400); beyond it requests get 503",
                                  AT_LEAST_1)
    # The request head (line and headers), bounded before the app sees it (rnnsent.serve.server).
    max_header_bytes: int = _flag(16_384, "largest request line and headers in bytes; beyond it 431",
                                  Range(256, 1 << 24, high_open=False, says="in [256, 16777216]"))
    max_headers: int = _flag(100, "most header lines in one request; beyond it 431", AT_LEAST_1)
    header_timeout_s: float = _flag(10.0, "seconds a client may take to send a request's line and headers, "
                                          "from its first byte (or from connecting); beyond it 408", SECONDS)
    keep_alive_s: float = _flag(5.0, "seconds an idle keep-alive connection stays open", SECONDS)
    limit_concurrency: int = _flag(512, "most connections open at once; one beyond it is answered 503 and closed",
                                   AT_LEAST_1)
    # Who may call: the Host header (DNS rebinding) and the browser pages of other origins (CORS).
    allowed_hosts: str = _flag("", "host names the server answers to, comma-separated (name, address, "
                                    "*.example.com or *) [--host's address; localhost too for a loopback one; any "
                                    "for 0.0.0.0]")
    cors_origin: str = _flag("", "origins whose web pages may call the API from a browser, comma-separated "
                                  "(https://app.example.com, or *) [none: same origin only]")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            bounds, value = f.metadata.get("bounds"), getattr(self, f.name)
            if bounds is not None and not bounds.holds(value):  # (NaN fails too)
                raise ValueError(f"{_flag_name(f.name)} must be {bounds.says}, got {value}")
        if self.explain_steps > self.max_explain_work:
            raise ValueError(f"--max-explain-work must be at least --explain-steps ({self.explain_steps}: one "
                             f"text's work), got {self.max_explain_work}")

    def host_names(self) -> list[str]:
        """The Host header names the server answers to ("*": any): --allowed-hosts, else the bound address (and
        localhost's names for a loopback address; any for an address of every interface)."""
        if self.allowed_hosts.strip():
            return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]
        host = self.host.strip("[]").lower()
        if host in ("", "0.0.0.0", "::"):
            return ["*"]
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        return sorted({host, "localhost", "127.0.0.1", "::1"} if loopback else {host})

    def cors_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origin.split(",") if o.strip()]


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")
