"""A TCP proxy that can delay traffic: a slow Redis without touching Redis."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class DelayProxy:
    """Forwards 127.0.0.1:`port` -> 127.0.0.1:`target`, sleeping `delay_s` before each reply chunk.

    `blackhole = True` makes it a black hole: connections stay open (and new ones are accepted) but
    nothing is forwarded either way, like a peer whose packets are dropped; False forwards again.
    """

    def __init__(self, target: int, delay_s: float = 0.0) -> None:
        self.target = target
        self.delay_s = delay_s
        self.blackhole = False
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, delay: float | None) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.blackhole:
                    continue
                time.sleep(self.delay_s if delay is None else delay)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
