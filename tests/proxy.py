"""A TCP proxy that cuts or holds one MongoDB command on its way through.

The proxy reads the MongoDB wire protocol in both directions, one whole
message at a time, so a fault lands on a chosen command (``findAndModify``,
``find``...) at a chosen byte of its request or of the server's reply, while
handshakes and monitoring pass untouched.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass, field

from tests.servers import free_port

OP_MSG = 2013
UP = "client->server"
DOWN = "server->client"


def command_name(message: bytes) -> str | None:
    """Return the command an OP_MSG request runs, or None for any other message."""
    if len(message) < 27 or struct.unpack_from("<i", message, 12)[0] != OP_MSG:
        return None
    # header (16) + flag bits (4) + section kind (1) + document length (4) +
    # element type (1), then the first key: the command's name.
    end = message.find(b"\x00", 26)
    return message[26:end].decode("utf-8", "replace") if end > 0 else None


@dataclass
class Fault:
    """Which message to break and how.

    ``command`` names the request; ``direction`` says whether its request
    (UP) or the server's reply to it (DOWN) is broken.  ``cut_at`` bytes of
    that message pass, then both sockets close.  ``times`` limits how many
    such messages are cut (None: every one).  With ``hold`` set the proxy
    sets ``seen`` and waits for ``release`` before cutting, so a test can
    stop or restart the server in between.
    """

    command: str
    direction: str = UP
    cut_at: int | float = 0.5
    times: int | None = 1
    hold: bool = False
    seen: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    cuts: int = 0
    sizes: list[int] = field(default_factory=list)

    def offset(self, size: int) -> int:
        """Return how many bytes of a size-byte message pass before the cut."""
        if isinstance(self.cut_at, float):
            return int(size * self.cut_at)
        return self.cut_at if self.cut_at >= 0 else size + self.cut_at

    def wants_more(self) -> bool:
        return self.times is None or self.cuts < self.times


class Proxy:
    """Forward 127.0.0.1:port to an upstream port, breaking what fault says."""

    def __init__(self, upstream_port: int, fault: Fault | None = None) -> None:
        self.upstream_port = upstream_port
        self.fault = fault
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def uri(self) -> str:
        """A URI that keeps the driver on this proxy (no replica-set discovery)."""
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets += [client, server]
            pending: set[int] = set()
            for source, target, direction in (
                (client, server, UP),
                (server, client, DOWN),
            ):
                threading.Thread(
                    target=self._pump,
                    args=(source, target, direction, pending),
                    daemon=True,
                ).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, direction: str, pending
    ) -> None:
        """Copy whole messages from source to target, applying the fault."""
        try:
            while True:
                message = _read_message(source)
                if message is None:
                    break
                if self._breaks(message, direction, pending):
                    fault = self.fault
                    assert fault is not None
                    fault.sizes.append(len(message))
                    fault.cuts += 1
                    fault.seen.set()
                    if fault.hold:
                        fault.release.wait()
                    target.sendall(message[: fault.offset(len(message))])
                    break
                target.sendall(message)
        except OSError:
            pass
        _close(source)
        _close(target)

    def _breaks(self, message: bytes, direction: str, pending: set[int]) -> bool:
        fault = self.fault
        if fault is None:
            return False
        with self._lock:
            if direction == UP:
                if command_name(message) != fault.command:
                    return False
                if fault.direction == DOWN:
                    pending.add(struct.unpack_from("<i", message, 4)[0])
                    return False
                return fault.wants_more()
            if fault.direction != DOWN:
                return False
            response_to = struct.unpack_from("<i", message, 8)[0]
            if response_to not in pending:
                return False
            pending.discard(response_to)
            return fault.wants_more()


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_message(sock: socket.socket) -> bytes | None:
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    length = struct.unpack("<i", header)[0]
    rest = _read_exactly(sock, length - 4)
    return None if rest is None else header + rest


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
