"""Fault injection for the local stack: a TCP proxy that can refuse connections.

The dev stack (``Stack(faults=True)``, as the tests run it) puts one in front of the
Pub/Sub emulator and points every function's ``PUBSUB_EMULATOR_HOST`` at it. A test
calls :meth:`FaultProxy.refuse` to make Pub/Sub unreachable for everyone who publishes
(open connections are reset, new ones refused) and :meth:`FaultProxy.restore` to bring
it back; the emulator itself, and the messages it holds, are untouched.

>>> import socket
>>> with socket.create_server(("127.0.0.1", 0)) as upstream:
...     proxy = FaultProxy(("127.0.0.1", upstream.getsockname()[1]))
...     proxy.refuse(); refusing = proxy.refusing; proxy.restore(); proxy.close()
>>> refusing, proxy.refusing
(True, False)
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class FaultProxy:
    """Relays loopback TCP connections on :attr:`port` to ``target`` unless refusing."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.refusing = False
        self.refused = 0  # connections refused so far (a test can check it took effect)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.port: int = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def refuse(self) -> None:
        """From now on, reset every connection (open ones included)."""
        with self._lock:
            self.refusing = True
            conns = list(self._open)
        for conn in conns:
            _reset(conn)

    def restore(self) -> None:
        with self._lock:
            self.refusing = False

    @contextlib.contextmanager
    def refusing_while(self) -> Iterator[FaultProxy]:
        """``with proxy.refusing_while(): ...`` refuses inside the block only."""
        self.refuse()
        try:
            yield self
        finally:
            self.restore()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            _reset(conn)

    # --- relaying ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                refusing = self.refusing
            if refusing:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)


def _reset(conn: socket.socket) -> None:
    """Close with a TCP reset (what a refusing or crashed host looks like)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)  # wakes a relay thread blocked on it
    with contextlib.suppress(OSError):
        conn.close()


__all__ = ["FaultProxy"]
