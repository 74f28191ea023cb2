"""Start the real servers the tests talk to: a MongoDB-wire server and friends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymongo
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """Return the path of a program; skip without it, but fail under CI=true."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian package 'prometheus' provides it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


class WireServer:
    """A SecantusDB process speaking the MongoDB wire protocol on 127.0.0.1."""

    def __init__(
        self,
        storage_path: str = ":memory:",
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        self.storage_path = storage_path
        self.extra_args = extra_args
        self.port = port or free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="wire-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self, ready_uri: str | None = None) -> WireServer:
        command = [
            shutil.which("secantusd-py") or sys.executable,
            *([] if shutil.which("secantusd-py") else ["-m", "secantus"]),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--storage-path", self.storage_path,
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        uri = ready_uri or self.uri
        try:
            wait_until(lambda: self._answers(uri), 60, f"wire server on {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError("wire server did not start:\n" + self.log()) from None
        return self

    def _answers(self, uri: str) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError("wire server exited:\n" + self.log())
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500) as client:
            client.admin.command("ping")
        return True

    def stop(self, kill: bool = False) -> None:
        """Stop with SIGTERM (lets it flush) or SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]
