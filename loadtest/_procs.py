"""Processes the benchmark owns: a redis-server, uvicorn servers, and CPU accounting.

Every process is started here and stopped by its own handle (never by name). CPU time is read
with psutil (a dependency of locust) for the servers, and with `getrusage(RUSAGE_CHILDREN)` for
load generators, which are waited for: the difference around one load run is that run's CPU.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 15) -> None:
    """Ask `proc` to stop (SIGINT lets uvicorn shut down cleanly), then insist."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_redis(port: int, timeout_s: float = 10.0) -> bool:
    """True once a redis-server on 127.0.0.1:`port` answers PING, False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def start_redis(port: int, workdir: str | Path) -> subprocess.Popen[bytes]:
    """A private redis-server on 127.0.0.1:`port` (no persistence), answering PING when this returns.

    RuntimeError (with what to install, or that it did not answer) otherwise. The one place the
    tests, the benchmark and the reliability scenarios start Redis.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_for_redis(port):
        _stop(proc, signal.SIGTERM)
        raise RuntimeError(f"redis-server did not answer on port {port} within 10 s")
    return proc


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free port, no persistence; yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="utpm-bench-redis-") as workdir:
        proc = start_redis(port, workdir)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(proc, signal.SIGTERM)


@dataclass
class Server:
    """An ASGI app factory served by uvicorn in a subprocess of its own (one or more workers)."""

    name: str
    factory: str
    env: Mapping[str, str] = field(default_factory=dict)
    workers: int = 1
    log_path: Path | None = None
    profile_to: Path | None = None  # run the server under cProfile (main thread), written here on exit
    ready_path: str = "/healthz"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        prefix = [sys.executable]
        if self.profile_to is not None:
            prefix += ["-m", "cProfile", "-o", str(self.profile_to)]
        return [
            *prefix,
            "-m",
            "uvicorn",
            "--factory",
            self.factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
            "--no-access-log",
            # Under cProfile, asyncio's own loop: uvloop waits in epoll inside C code, where cProfile
            # charges the idle time to whichever Python frame ran last (measured: "busy" 100% of the
            # time); asyncio's loop waits in `select.epoll.poll`, which the profile summary counts as idle.
            *(["--loop", "asyncio"] if self.profile_to is not None else []),
        ]

    def start(self, timeout_s: float = 300) -> None:
        """Start and wait until `ready_path` answers 200 (loading a 1M-tag bundle takes a while)."""
        env = {**os.environ, **self.env}
        log = self.log_path.open("wb") if self.log_path is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with status {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} server not ready within {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process and its workers so far."""
        if self.proc is None:
            return 0.0
        try:
            root = psutil.Process(self.proc.pid)
            total = 0.0
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
            return total
        except psutil.Error:
            return 0.0

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children_cpu_seconds() -> float:
    """User + system CPU of this process' waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall-clock now): for the share other work used."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0), time.monotonic()


def machine_info() -> dict[str, object]:
    """CPU model, cores, memory and OS of this machine, for the report."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": " ".join(os.uname()[i] for i in (0, 2)),
        "python": sys.version.split()[0],
        "hostname": socket.gethostname(),
    }
