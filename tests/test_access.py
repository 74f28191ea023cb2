"""Access control: authentication, TLS, secrets kept out of sight, file modes.

Users are created on a server started without ``--auth``, which is then
stopped and started again on the same storage with ``--auth``, as an operator
provisions a real deployment.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pymongo
import pytest
import trustme
from pymongo import uri_parser

import metrics_file
import mongo_store
from mongo_store import Location, MetricsStore, StoreError
from tests.conftest import run_script
from tests.helpers import one_error_line
from tests.servers import REPO, WireServer, wait_until

PASSWORD = "pa:ss/w@rd %s3cret"
WRONG = "not-the-pa55word"
READER_PASSWORD = "reader-only-2s3cret"
SECRETS = (PASSWORD, urllib.parse.quote_plus(PASSWORD), READER_PASSWORD)
SEEDED = {"name": "metrics", "total_action_train_pass": 3, "gpu_a100_action_train": 2}


@dataclass
class AuthServer:
    server: WireServer

    def uri(self, user: str = "tao", password: str | None = PASSWORD) -> str:
        credentials = ""
        if password is not None:
            credentials = f"{user}:{urllib.parse.quote_plus(password)}@"
        return f"mongodb://{credentials}127.0.0.1:{self.server.port}/?authSource=admin"

    def admin(self) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.uri("root", "root-pw"))


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[AuthServer]:
    storage = str(tmp_path_factory.mktemp("auth-storage"))
    open_server = WireServer(storage_path=storage).start()
    try:
        with pymongo.MongoClient(open_server.uri) as client:
            client.admin.command("createUser", "root", pwd="root-pw", roles=["root"])
            client.admin.command(
                "createUser",
                "tao",
                pwd=PASSWORD,
                roles=[{"role": "readWrite", "db": "metrics"}],
            )
            client.admin.command(
                "createUser",
                "reader",
                pwd=READER_PASSWORD,
                roles=[{"role": "read", "db": "metrics"}],
            )
    finally:
        open_server.stop()
    server = WireServer(storage_path=storage, extra_args=("--auth",))
    found = AuthServer(server)
    server.start(ready_uri=found.uri("root", "root-pw"))
    try:
        yield found
    finally:
        server.stop()


@pytest.fixture
def metrics(auth_server: AuthServer) -> Iterator[pymongo.collection.Collection]:
    """The metrics collection holding the seeded document, emptied afterwards."""
    with auth_server.admin() as client:
        collection = client.metrics.metrics
        collection.delete_many({})
        collection.insert_one(dict(SEEDED))
        yield collection
        collection.delete_many({})
        client.metrics.metrics_import_history.delete_many({})


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def folder_text(folder: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in folder.iterdir())


def test_credentials_from_the_environment(auth_server, metrics, tmp_path):
    env = {"MONGODB_URI": auth_server.uri()}
    output = tmp_path / "export.json"
    exported = run_script("export_metrics.py", "--output", str(output), env=env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr == ""
    assert metrics_file.read_document(str(output)).document["gpu_a100_action_train"]

    source = tmp_path / "newer.json"
    metrics_file.write_document(str(source), {"total_action_train_pass": 5})
    imported = run_script(
        "import_metrics.py",
        *("--input", str(source), "--backup-dir", str(tmp_path)),
        env=env,
    )
    assert imported.returncode == 0, imported.stderr
    assert metrics.find_one({"name": "metrics"})["total_action_train_pass"] == 5
    assert len(list(tmp_path.glob("pre_import_backup_*.json"))) == 1

    assert_no_secret(exported.stdout, exported.stderr, imported.stdout)
    assert_no_secret(imported.stderr, folder_text(tmp_path), auth_server.server.log())
    with auth_server.admin() as client:
        history = list(client.metrics.metrics_import_history.find())
    assert history
    assert_no_secret(repr(history))


def test_credentials_in_the_uri_work_with_a_warning(auth_server, metrics, tmp_path):
    output = tmp_path / "export.json"
    result = run_script(
        "export_metrics.py", "--output", str(output), "--uri", auth_server.uri()
    )
    assert result.returncode == 0, result.stderr
    assert "visible to other users" in result.stderr
    assert "MONGODB_URI" in result.stderr
    assert_no_secret(result.stdout, result.stderr, folder_text(tmp_path))


@pytest.mark.parametrize("where", ["env", "uri"])
def test_wrong_password_is_one_line(auth_server, metrics, tmp_path, where):
    uri = auth_server.uri("tao", WRONG)
    args = ["--output", str(tmp_path / "export.json")]
    if where == "uri":
        result = run_script("export_metrics.py", *args, "--uri", uri)
        lines = result.stderr.strip().splitlines()
        assert "visible to other users" in lines.pop(0)
        result.stderr = "\n".join(lines)
    else:
        result = run_script("export_metrics.py", *args, env={"MONGODB_URI": uri})

    assert "authentication failed" in one_error_line(result)
    assert WRONG not in result.stdout + result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert os.listdir(tmp_path) == []


def test_no_credentials_is_one_line(auth_server, metrics, tmp_path):
    result = run_script(
        "export_metrics.py",
        *("--output", str(tmp_path / "export.json")),
        env={"MONGODB_URI": auth_server.uri(password=None)},
    )
    line = one_error_line(result)
    assert "not authorized" in line or "authentication" in line


def test_read_only_user_cannot_import(auth_server, metrics, tmp_path):
    source = tmp_path / "newer.json"
    metrics_file.write_document(str(source), {"total_action_train_pass": 9})
    result = run_script(
        "import_metrics.py",
        *("--input", str(source), "--no-backup"),
        env={"MONGODB_URI": auth_server.uri("reader", READER_PASSWORD)},
    )
    assert "not authorized" in one_error_line(result)
    assert_no_secret(result.stdout, result.stderr)
    assert metrics.find_one({"name": "metrics"}, {"_id": 0}) == SEEDED


def running_import_command_line(uri_args: list[str], env: dict[str, str]) -> str:
    """Start an import that waits on stdin; return its /proc command line."""
    child = subprocess.Popen(
        [sys.executable, str(REPO / "import_metrics.py"), "--input", "-", *uri_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    proc = Path(f"/proc/{child.pid}/cmdline")
    try:
        wait_until(lambda: b"import_metrics.py" in proc.read_bytes(), 30, "exec")
        cmdline = proc.read_bytes()
    finally:
        child.communicate(b"{}", timeout=60)
    return cmdline.replace(b"\x00", b" ").decode()


def test_password_from_the_environment_stays_out_of_the_process_list(auth_server):
    cmdline = running_import_command_line([], {"MONGODB_URI": auth_server.uri()})
    assert "import_metrics.py" in cmdline
    assert_no_secret(cmdline)


def test_password_in_uri_is_in_the_process_list(auth_server):
    # The reason the scripts warn about --uri with a password.
    cmdline = running_import_command_line(["--uri", auth_server.uri()], {})
    assert urllib.parse.quote_plus(PASSWORD) in cmdline


def test_tao_pod_uri_carries_the_secret_exactly():
    env = {"MONGOSECRET": PASSWORD, "HOST_PLATFORM": "local-docker"}
    uri = mongo_store.resolve_uri(None, env)
    parsed = uri_parser.parse_uri(uri)
    assert parsed["username"] == mongo_store.TAO_USER
    assert parsed["password"] == PASSWORD
    assert parsed["nodelist"] == [("mongodb", 27017)]
    assert parsed["options"]["authSource"] == "admin"
    assert_no_secret(mongo_store.redact_uri(uri))

    cluster = mongo_store.resolve_uri(None, {"MONGOSECRET": PASSWORD, "NAMESPACE": "x"})
    parsed = uri_parser.parse_uri(cluster)
    assert parsed["password"] == PASSWORD
    assert parsed["nodelist"] == [("mongodb-svc.x.svc.cluster.local", 27017)]
    assert_no_secret(mongo_store.redact_uri(cluster))

    explicit = "mongodb://other:pw@h:1"
    assert mongo_store.resolve_uri(None, {"MONGODB_URI": explicit, **env}) == explicit


def test_store_errors_never_carry_the_password(auth_server):
    uri = auth_server.uri("tao", PASSWORD).replace(
        f":{auth_server.server.port}/", ":1/"
    )
    with (
        MetricsStore(uri, Location(), timeout=0.5) as store,
        pytest.raises(StoreError) as caught,
    ):
        store.read()
    assert "cannot reach MongoDB" in str(caught.value)
    assert_no_secret(str(caught.value))


# TLS, with certificates made for the test.


@dataclass
class TlsServer:
    server: WireServer
    ca_file: Path
    folder: Path

    def uri(self, ca_file: Path | None = None) -> str:
        ca = ca_file or self.ca_file
        return (
            f"mongodb://localhost:{self.server.port}/?tls=true&tlsCAFile={ca}"
            "&directConnection=true"
        )


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory) -> Iterator[TlsServer]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    certificate = ca.issue_cert("localhost", "127.0.0.1")
    ca_file = folder / "ca.pem"
    cert_file = folder / "server.pem"
    key_file = folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    other = trustme.CA()
    other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
    server = WireServer(
        extra_args=("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file))
    )
    found = TlsServer(server, ca_file, folder)
    server.start(ready_uri=found.uri())
    with pymongo.MongoClient(found.uri()) as client:
        client.metrics.metrics.insert_one(dict(SEEDED))
    try:
        yield found
    finally:
        server.stop()


def test_tls_with_the_right_ca(tls_server, tmp_path):
    output = tmp_path / "export.json"
    result = run_script(
        "export_metrics.py", "--output", str(output), "--uri", tls_server.uri()
    )
    assert result.returncode == 0, result.stderr
    document = metrics_file.read_document(str(output)).document
    assert document["total_action_train_pass"] == SEEDED["total_action_train_pass"]


def test_tls_with_a_wrong_ca_is_one_line(tls_server, tmp_path):
    result = run_script(
        "export_metrics.py",
        *("--output", str(tmp_path / "export.json"), "--timeout", "2"),
        env={"MONGODB_URI": tls_server.uri(tls_server.folder / "other-ca.pem")},
    )
    assert "TLS handshake failed" in one_error_line(result)
    assert os.listdir(tmp_path) == []


def test_plain_connection_to_a_tls_server_is_one_line(tls_server, tmp_path):
    uri = f"mongodb://localhost:{tls_server.server.port}/?directConnection=true"
    result = run_script(
        "export_metrics.py",
        *("--output", str(tmp_path / "export.json"), "--timeout", "2"),
        env={"MONGODB_URI": uri},
    )
    assert "cannot reach MongoDB" in one_error_line(result)


# Files: private modes and no silent overwrites.


def test_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "backup.json"
        path.write_text("{}")
        path.chmod(0o644)
        metrics_file.write_document(str(path), {"a": 1}, overwrite=True)
        gz = tmp_path / "backup.json.gz"
        metrics_file.write_document(str(gz), {"a": 1})
    finally:
        os.umask(old)
    for name in ("backup.json", "backup.json.gz"):
        for written in (tmp_path / name, tmp_path / (name + ".sha256")):
            assert stat.S_IMODE(written.stat().st_mode) == 0o600, written


def test_a_symlink_at_the_output_is_neither_followed_nor_overwritten(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    link = tmp_path / "export.json"
    link.symlink_to(target)
    with pytest.raises(metrics_file.FileError, match="already exists"):
        metrics_file.write_document(str(link), {"a": 1})
    metrics_file.write_document(str(link), {"a": 1}, overwrite=True)
    assert target.read_text() == "keep me"
    assert not link.is_symlink()
    assert metrics_file.read_document(str(link)).document == {"a": 1}


def test_missing_ca_file_is_one_line(tmp_path):
    missing = tmp_path / "missing-ca.pem"
    result = run_script(
        "export_metrics.py",
        *("--output", str(tmp_path / "export.json"), "--timeout", "1"),
        env={"MONGODB_URI": f"mongodb://localhost:1/?tls=true&tlsCAFile={missing}"},
    )
    assert "not readable" in one_error_line(result)
