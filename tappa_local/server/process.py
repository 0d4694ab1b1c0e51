"""Run ``tappa-local serve`` in a child process on a free loopback port (tests, benchmarks, scripts)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerProcess:
    url: str  #: e.g. http://127.0.0.1:40123
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def get_json(self, path: str, timeout: float = 10.0) -> dict[str, object]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def serve_process(
    model: str | Path,
    args: Sequence[str] = (),
    *,
    log_path: Path,
    startup_timeout: float = 120.0,
    host: str = "127.0.0.1",
) -> Iterator[ServerProcess]:
    """Start the server, wait until ``/health`` answers, stop it (SIGTERM, then SIGKILL) at exit."""
    port = free_port(host)
    cmd = [sys.executable, "-m", "tappa_local.cli", "serve", str(model), "--host", host, "--port", str(port), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ServerProcess(f"http://{host}:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {proc.returncode} before it was ready:\n{server.log()[-4000:]}"
                )
            try:
                server.get_json("/health", timeout=2.0)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not answer /health within {startup_timeout:.0f}s:\n{server.log()[-4000:]}"
                    ) from None
                time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
