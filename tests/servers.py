"""Start the real servers the tests talk to: a MongoDB-wire server and friends."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
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


def stop_process(process: subprocess.Popen[bytes] | None, kill: bool = False) -> None:
    """Stop a process with SIGTERM (it may flush) or SIGKILL, and reap it."""
    if process is None or process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ProcessExited(RuntimeError):
    """A server the tests started has stopped by itself."""


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ProcessExited:
            raise  # waiting longer cannot help
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
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            self.storage_path,
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
            raise ProcessExited("wire server exited:\n" + self.log())
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=500) as client:
            client.admin.command("ping")
        return True

    def stop(self, kill: bool = False) -> None:
        """Stop with SIGTERM (lets it flush) or SIGKILL."""
        stop_process(self.process, kill)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


class PrometheusServer:
    """A real Prometheus on 127.0.0.1 scraping given targets, with its own storage."""

    def __init__(
        self,
        storage_dir: Path,
        targets: list[str],
        scrape_interval: str = "1s",
        rule_files: tuple[str, ...] = (),
        job_options: dict | None = None,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.rule_files = rule_files
        self.job_options = job_options or {}
        self.port = free_port()
        self.log_path = self.storage_dir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        """Write the configuration as JSON, which Prometheus reads as YAML."""
        job = {
            "job_name": "tao",
            "scrape_interval": self.scrape_interval,
            "scrape_timeout": self.scrape_interval,
            "static_configs": [{"targets": self.targets}],
            **self.job_options,
        }
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [job],
        }
        path = self.storage_dir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> PrometheusServer:
        binary = require_binary("prometheus")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        command = [
            binary,
            f"--config.file={self.write_config()}",
            f"--storage.tsdb.path={self.storage_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            wait_until(self._ready, 60, f"prometheus on {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError("prometheus did not start:\n" + self.log()) from None
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise ProcessExited("prometheus exited:\n" + self.log())
        with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
            return response.status == 200

    def api(self, path: str, **params: str) -> object:
        """GET /api/v1/<path> and return its data, raising on an error status."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus API {path}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict]:
        """Run an instant query; return its result list (vector samples)."""
        data = self.api("query", query=promql)
        assert isinstance(data, dict)
        return data["result"]

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict]:
        """Wait until an instant query returns something; return that result."""
        found: list[dict] = []

        def check() -> bool:
            found[:] = self.query(promql)
            return bool(found)

        try:
            wait_until(check, timeout, f"prometheus to answer {promql}")
        except TimeoutError:
            targets = self.api("targets")
            raise TimeoutError(
                f"no result for {promql}; targets: {targets}\n{self.log()}"
            ) from None
        return found

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-5000:]
