"""A TCP proxy a test can cut, stall or freeze: the service behind it looks
down (connections reset, new ones closed at once) until it is restored, or
hung (connections accepted, nothing forwarded either way) until it is
restored, or its open connections go silent for good."""

from __future__ import annotations

import selectors
import socket
import threading
import time


class TCPProxy:
    """Forward ``<host>:<port>`` (default ``127.0.0.1``) to *target*;
    :meth:`cut`, :meth:`stall`, :meth:`freeze` and :meth:`restore`."""

    def __init__(self, target: tuple[str, int], port: int = 0, host: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []
        self._frozen: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            if not self._flowing.is_set():  # stalled: accept, never answer
                with self._lock:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), name="tcpproxy-pump", daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                if not self._flowing.is_set() or client in self._frozen:  # leave the bytes unread
                    time.sleep(0.05)
                else:
                    for key, _ in selector.select(timeout=0.5):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
                if not self._up.is_set() or self._closed:
                    return
        except OSError:
            return
        finally:
            selector.close()
            for sock in (client, upstream):
                try:
                    sock.close()
                except OSError:
                    pass

    @property
    def connections(self) -> int:
        """Connections open through the proxy (forwarded or held)."""
        with self._lock:
            self._pairs = [pair for pair in self._pairs if pair[0].fileno() != -1]
            return len(self._pairs) + len(self._held)

    def stall(self) -> None:
        """Stop forwarding: open connections and new ones get no bytes either
        way (a hung broker, a black-holed route), until :meth:`restore`."""
        self._flowing.clear()

    def freeze(self) -> None:
        """The open connections go silent for good (a peer that vanished
        without a reset: a dropped NAT entry, a frozen host); new ones are
        forwarded as usual. Only a heartbeat can tell."""
        with self._lock:
            self._frozen.update(client for client, _ in self._pairs)

    def cut(self) -> None:
        """Reset every open connection and refuse new ones."""
        self._up.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        """Forward again; connections accepted while stalled are closed."""
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            sock.close()
        self._flowing.set()
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.restore()
        self.listener.close()
