"""The server's settings, defined once: `rnnsent serve`'s flags and create_app's arguments. Plain Python, no
FastAPI or torch, so `rnnsent serve --help` is instant and says what is missing only when the server starts."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


def _flag(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServeSettings:
    """What `rnnsent serve` binds, how it batches and what one request may hold. Every field is a flag
    (--max-batch for max_batch) with its help in the field's metadata."""

    host: str = _flag("127.0.0.1", "address to listen on; 0.0.0.0 serves other machines too")
    port: int = _flag(8000, "TCP port", minimum=1, maximum=65535)
    # Batching: the first waiting request opens a batch; it closes at max_batch texts or max_wait_ms later.
    max_batch: int = _flag(64, "most texts in one forward pass (1: one forward per text, no batching)", minimum=1)
    max_wait_ms: float = _flag(2.0, "how long a batch waits for more requests after its first (only while "
                                    "requests overlap: a lone client is answered at once)", minimum=0.0,
                               maximum=10_000.0)
    # Limits on untrusted input: each is checked before anything is tokenized.
    max_body_bytes: int = _flag(1 << 20, "largest request body in bytes", minimum=1)
    max_texts: int = _flag(256, "most texts in one request", minimum=1)
    max_chars: int = _flag(20_000, "most characters in one text (IMDB's longest review has 13,704)", minimum=1)
    max_explain_texts: int = _flag(8, "most texts in one /v1/explain request (attributions cost a forward "
                                      "and backward pass per step)", minimum=1)
    max_queue: int = _flag(4096, "most texts waiting for the model; beyond it requests get 503", minimum=1)
    body_timeout_s: float = _flag(10.0, "seconds a client may take to send its request body", minimum=0.001,
                                  maximum=3600.0)
    drain_s: float = _flag(30.0, "on SIGTERM or Ctrl-C: seconds to finish in-flight requests before exiting",
                           minimum=0.0, maximum=3600.0)
    threads: int = _flag(1, "CPU threads for the model (the event loop needs a core of its own)", minimum=1)
    access_log: bool = _flag(False, "log one line per request (uvicorn's access log)")
    explain_steps: int = _flag(50, "integrated-gradients steps for /v1/explain", minimum=1)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            low, high = f.metadata.get("minimum"), f.metadata.get("maximum", float("inf"))
            value = getattr(self, f.name)
            if low is not None and not low <= value <= high:  # (NaN fails too)
                bound = f"at least {low}" if high == float("inf") else f"in [{low}, {high}]"
                raise ValueError(f"--{f.name.replace('_', '-')} must be {bound}, got {value}")
