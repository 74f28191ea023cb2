"""Choosing the server, keeping its password secret, and documenting each option."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import socket
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import uri_parser

import mongo_store
from mongo_store import redact_uri, resolve_uri, tao_pod_uri
from tests.conftest import run_script
from tests.helpers import store
from tests.servers import REPO, free_port

SCRIPTS = ("export_metrics.py", "import_metrics.py", "convert_to_labeled.py")
PASSWORD = "S3cr:t/p@ss"


def test_explicit_uri_wins_then_environment_then_pod_then_local() -> None:
    env = {"MONGODB_URI": "mongodb://env:1", "MONGOSECRET": "pw"}
    assert resolve_uri("mongodb://arg:1", env) == "mongodb://arg:1"
    assert resolve_uri(None, env) == "mongodb://env:1"
    assert resolve_uri("", {"MONGOSECRET": "pw"}) == tao_pod_uri({"MONGOSECRET": "pw"})
    assert resolve_uri(None, {"MONGODB_URI": ""}) == "mongodb://localhost:27017"
    assert resolve_uri(None, {}) == mongo_store.DEFAULT_URI


def test_local_docker_pod_uri() -> None:
    uri = tao_pod_uri({"MONGOSECRET": PASSWORD, "HOST_PLATFORM": "local-docker"})
    parsed = uri_parser.parse_uri(uri)
    assert parsed["username"] == "default-user"
    assert parsed["password"] == PASSWORD
    assert parsed["nodelist"] == [("mongodb", 27017)]
    assert parsed["options"]["authSource"] == "admin"
    assert "replicaSet" not in parsed["options"]


def test_cluster_pod_uri() -> None:
    env = {"MONGOSECRET": PASSWORD, "NAMESPACE": "tao-gpu"}
    parsed = uri_parser.parse_uri(tao_pod_uri(env))
    assert parsed["username"] == "default-user"
    assert parsed["password"] == PASSWORD
    assert parsed["nodelist"] == [("mongodb-svc.tao-gpu.svc.cluster.local", 27017)]
    assert parsed["options"]["authSource"] == "admin"
    assert parsed["options"]["replicaSet"] == "mongodb"


def test_operator_pod_uri_uses_srv() -> None:
    env = {
        "MONGOSECRET": PASSWORD,
        "NAMESPACE": "tao",
        "MONGO_OPERATOR_ENABLED": "true",
    }
    # Parsing a mongodb+srv URI would look the host up in DNS; split it instead.
    parts = urllib.parse.urlsplit(tao_pod_uri(env))
    assert parts.scheme == "mongodb+srv"
    assert parts.hostname == "mongodb-svc.tao.svc.cluster.local"
    assert parts.port is None
    assert urllib.parse.unquote_plus(parts.password or "") == PASSWORD
    options = urllib.parse.parse_qs(parts.query)
    assert options["authSource"] == ["admin"]
    assert options["replicaSet"] == ["mongodb"]


def test_redact_hides_the_password_only() -> None:
    uri = "mongodb://user:hunter2@db.example:27017/?authSource=admin"
    assert redact_uri(uri) == "mongodb://user:***@db.example:27017/?authSource=admin"
    assert redact_uri("mongodb://db.example") == "mongodb://db.example"


@pytest.mark.parametrize(
    ("script", "how"),
    [
        ("export_metrics.py", "--uri"),
        ("import_metrics.py", "MONGODB_URI"),
        ("convert_to_labeled.py", "MONGOSECRET"),
    ],
)
def test_unreachable_server_fails_in_one_line_without_the_password(
    script: str, how: str, tmp_path
) -> None:
    closed = free_port()
    quoted = urllib.parse.quote_plus(PASSWORD)
    uri = f"mongodb://admin:{quoted}@127.0.0.1:{closed}/?authSource=admin"
    args = ["--timeout", "1"]
    env: dict[str, str] = {}
    if how == "--uri":
        args += ["--uri", uri, "-o", str(tmp_path / "out.json")]
    elif how == "MONGODB_URI":
        env["MONGODB_URI"] = uri
        backup = tmp_path / "in.json"
        backup.write_text('{"total_action_train_pass": 1}')
        args += ["-i", str(backup)]
    else:
        # The pod's host name does not resolve here, as no server answers.
        env |= {"MONGOSECRET": PASSWORD, "NAMESPACE": "nowhere"}

    result = run_script(script, *args, env=env, timeout=30)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # A warning about a password on the command line may come first.
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert result.stderr.endswith(errors[0] + "\n")
    assert "cannot reach MongoDB" in errors[0] or "invalid connection" in errors[0]
    for secret in (PASSWORD, quoted, "S3cr"):
        assert secret not in result.stdout + result.stderr
    assert not (tmp_path / "out.json").exists()


def local_imports(path) -> set[str]:
    """Return the repository modules a file imports, followed transitively."""
    found: set[str] = set()
    pending = [path]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                module = REPO / f"{name}.py"
                if module.exists() and name not in found:
                    found.add(name)
                    pending.append(module)
    return found


ENV_READ = re.compile(
    r"""(?:env_default\(|environ\.get\(|env\.get\(|environ\[|env\[)\s*['"]([A-Z][A-Z0-9_]+)['"]"""
)


def environment_variables(script: str) -> set[str]:
    """Return every environment variable the script or its modules read."""
    paths = [REPO / script, *(REPO / f"{m}.py" for m in local_imports(REPO / script))]
    return {name for path in paths for name in ENV_READ.findall(path.read_text())}


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_names_every_environment_variable_read(script: str) -> None:
    variables = environment_variables(script)
    assert {"MONGODB_URI", "MONGOSECRET", "NAMESPACE", "MONGODB_DB"} <= variables

    result = run_script(script, "--help", env={"COLUMNS": "200"})

    assert result.returncode == 0
    missing = [name for name in sorted(variables) if name not in result.stdout]
    assert missing == []
    for option in ("--uri", "--db", "--collection", "--document-name", "--timeout"):
        assert option in result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_version_is_printed(script: str) -> None:
    result = run_script(script, "--version")
    assert result.returncode == 0
    assert re.fullmatch(rf"{re.escape(script)} \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_states_every_default(script: str) -> None:
    module = importlib.import_module(script.removesuffix(".py"))
    parser = module.build_parser()
    for action in parser._actions:
        if action.default in (None, False, argparse.SUPPRESS) or not action.help:
            continue
        assert "default" in action.help, action.option_strings


@pytest.fixture
def user(mongo_client) -> Iterator[str]:
    """A user with PASSWORD on the test server, removed afterwards."""
    name = f"operator_{uuid.uuid4().hex[:8]}"
    mongo_client.admin.command("createUser", name, pwd=PASSWORD, roles=["root"])
    yield name
    mongo_client.admin.command("dropUser", name)


def with_credentials(uri: str, name: str, password: str) -> str:
    quoted = urllib.parse.quote_plus(password)
    return uri.replace("mongodb://", f"mongodb://{name}:{quoted}@") + (
        "/?authSource=admin"
    )


def test_password_is_never_printed(user, mongo_uri, location, tmp_path: Path) -> None:
    store(mongo_uri, location, {"total_action_train_pass": 1})
    uri = with_credentials(mongo_uri, user, PASSWORD)
    backup = str(tmp_path / "backup.json")
    common = ["--db", location.db, "--timeout", "5"]

    exported = run_script("export_metrics.py", "--uri", uri, *common, "-o", backup)
    imported = run_script(
        "import_metrics.py",
        *common,
        "-i",
        backup,
        "--backup-dir",
        str(tmp_path),
        env={"MONGODB_URI": uri},
    )
    wrong = run_script(
        "import_metrics.py",
        *common,
        "-i",
        backup,
        env={"MONGODB_URI": with_credentials(mongo_uri, user, "Wr0ng:pass")},
    )

    assert exported.returncode == 0, exported.stderr
    assert imported.returncode == 0, imported.stderr
    assert "(undo with: python import_metrics.py --input" in imported.stdout
    assert wrong.returncode == 1
    assert wrong.stderr.endswith(
        "authentication failed: check the user name and password\n"
    )
    for result in (exported, imported, wrong):
        output = result.stdout + result.stderr
        for secret in (PASSWORD, urllib.parse.quote_plus(PASSWORD), "Wr0ng"):
            assert secret not in output


def test_server_that_never_answers_fails_within_the_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"mongodb://127.0.0.1:{silent.getsockname()[1]}"
        output = str(tmp_path / "out.json")

        result = run_script(
            "export_metrics.py",
            "--uri",
            uri,
            "--timeout",
            "1",
            "-o",
            output,
            timeout=30,
        )

    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "cannot reach MongoDB" in result.stderr


@pytest.mark.parametrize(
    ("script", "args", "complaint"),
    [
        ("import_metrics.py", [], "the following arguments are required: -i/--input"),
        (
            "import_metrics.py",
            ["-i", "x.json", "--replace", "--strategy", "sum"],
            "--strategy applies to merges, not to --replace",
        ),
        ("import_metrics.py", ["-i", "x", "--strategy", "max"], "invalid choice"),
        ("export_metrics.py", ["--timeout", "0"], "must be above 0"),
        ("convert_to_labeled.py", ["--timeout", "soon"], "not a number: 'soon'"),
    ],
)
def test_usage_errors_exit_with_status_2(script, args, complaint, capsys) -> None:
    module = importlib.import_module(script.removesuffix(".py"))
    with pytest.raises(SystemExit) as raised:
        module.main(args)
    assert raised.value.code == 2
    assert complaint in capsys.readouterr().err
