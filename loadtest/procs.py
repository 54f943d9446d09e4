"""The processes the tests, the benchmarks and the reliability scenarios start: a redis-server and
uvicorn servers, supervised by mirakuru (started, waited for until ready, stopped by their own
handle and their process group, never by name)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil
from mirakuru import HTTPExecutor, TCPExecutor
from mirakuru.exceptions import ProcessExitedWithError, TimeoutExpired


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


class Redis(TCPExecutor):
    """A private redis-server on 127.0.0.1 without persistence, ready once `port` accepts
    connections; `stop()`/`kill()` then `start()` bring it back on the same port (an outage).
    `args` go last, so they override (e.g. `--port 0 --tls-port PORT` for TLS only)."""

    def __init__(self, port: int | None = None, workdir: str | Path | None = None, args: Sequence[str] = ()) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
        port = port or free_port()
        workdir = str(workdir or tempfile.gettempdir())  # no persistence: nothing is written there
        cmd = [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            *args,
        ]
        kw: dict[str, Any] = {"timeout": 10, "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
        super().__init__(cmd, host="127.0.0.1", port=port, **kw)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        try:
            return super().start()
        except (TimeoutExpired, ProcessExitedWithError) as e:
            raise RuntimeError(f"redis-server did not start on port {self.port}: {e}") from None


class Server(HTTPExecutor):
    """`uvicorn --factory FACTORY` (one or more workers) in a process group of its own, ready once
    `ready_path` answers 200; optionally under cProfile (written to `profile_to` on stop)."""

    def __init__(
        self,
        factory: str,
        env: Mapping[str, str] | None = None,
        *,
        workers: int = 1,
        log_path: Path | None = None,
        profile_to: Path | None = None,
        ready_path: str = "/healthz",
        timeout_s: float = 300,  # loading a 1M-tag bundle takes a while
    ) -> None:
        port = free_port()
        profile = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
        # Under cProfile asyncio's own loop: uvloop waits in epoll inside C code, which cProfile
        # charges to the last Python frame (docs/performance.md, "Method").
        loop = ["--loop", "asyncio"] if profile_to else []
        uvicorn = f"-m uvicorn --factory {factory} --host 127.0.0.1 --port {port} --workers {workers}"
        cmd = [sys.executable, *profile, *uvicorn.split(), "--log-level", "warning", "--no-access-log", *loop]
        self.factory, self.log_path = factory, log_path
        self._log: IO[Any] | int = subprocess.DEVNULL
        url = f"http://127.0.0.1:{port}{ready_path}"
        kw: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stop_signal": signal.SIGINT, "request_timeout": 2}
        super().__init__(cmd, url=url, status=200, method="GET", timeout=timeout_s, envvars=dict(env or {}), **kw)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        if self.log_path is not None:
            self._log = self.log_path.open("w")
        self._stdout = self._log
        self._stderr = subprocess.STDOUT
        try:
            return super().start()
        except (TimeoutExpired, ProcessExitedWithError) as e:
            self.stop()
            raise RuntimeError(f"{self.factory} not ready: {e}; see {self.log_path}") from None

    def stop(self, *args: Any, **kwargs: Any) -> Server:
        super().stop(*args, **kwargs)
        if not isinstance(self._log, int):
            self._log.close()
            self._log = subprocess.DEVNULL
        return self

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its workers so far."""
        if self.process is None:
            return 0.0
        try:
            return sum(sum(p.cpu_times()[:2]) for p in _tree(self.process.pid))
        except psutil.Error:
            return 0.0

    def rss_mb(self) -> float:
        assert self.process is not None
        return sum(p.memory_info().rss for p in _tree(self.process.pid)) / 2**20
