"""`rnnsent serve` as a child process on a free loopback port, ready when the context opens: for tests of code that
calls the API (rnnsent's own, tools/bench_serve.py, or an application's), with every wait bounded in time."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS's pick; another process could still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """with ServerProcess("gru", "--max-batch", "1") as server: urllib.request.urlopen(server.url + "/healthz")

    The child's output goes to `log` (a file path; default: discarded); `env` defaults to environment(). On
    leaving, the server gets SIGTERM and up to `stop_timeout` seconds to drain, then SIGKILL; `returncode` is
    its exit status."""

    def __init__(self, checkpoint: str, *flags: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
                 log: str | os.PathLike | None = None, ready_timeout: float = 120.0, stop_timeout: float = 30.0):
        self.host, self.port = "127.0.0.1", free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.command = [sys.executable, "-m", "rnnsent", "serve", "--checkpoint", str(checkpoint),
                        "--host", self.host, "--port", str(self.port), *map(str, flags)]
        self.cwd, self.env, self.log = cwd, environment() if env is None else env, log
        self.ready_timeout, self.stop_timeout = ready_timeout, stop_timeout
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    def __enter__(self) -> "ServerProcess":
        self._log_file = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=self._log_file)
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rnnsent serve exited with {self.proc.returncode} before it was ready"
                                   + (f" (its log: {self.log})" if self.log else ""))
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"rnnsent serve was not ready within {self.ready_timeout:g} s")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig`, wait (bounded) for the exit and return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        return self.returncode

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.stop()
        if self._log_file is not subprocess.DEVNULL:
            self._log_file.close()

    @property
    def pid(self) -> int:
        return self.proc.pid


def environment(**extra: str) -> dict:
    """os.environ with this rnnsent first on PYTHONPATH (a checkout that is not installed works too)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), **extra}
