"""Fixtures shared by every test: a real MongoDB-wire server and script runners."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from mongo_store import Location
from tests.servers import REPO, WireServer

# The session's wire server, whose log a failing test's report shows.
SESSION_SERVERS: list[WireServer] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed and SESSION_SERVERS:
        report.sections.append(("wire server log", SESSION_SERVERS[0].log()))


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A MongoDB URI: TAO_TEST_MONGODB_URI, or a wire server started for the run."""
    external = os.environ.get("TAO_TEST_MONGODB_URI")
    if external:
        yield external
        return
    server = WireServer().start()
    SESSION_SERVERS.append(server)
    try:
        yield server.uri
    finally:
        server.stop()
        SESSION_SERVERS.remove(server)


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[pymongo.MongoClient]:
    with pymongo.MongoClient(mongo_uri) as client:
        yield client


@pytest.fixture
def location(mongo_client: pymongo.MongoClient) -> Iterator[Location]:
    """A database of its own for one test, dropped afterwards."""
    db = f"test_{uuid.uuid4().hex[:12]}"
    yield Location(db=db)
    mongo_client.drop_database(db)


@pytest.fixture
def collection(mongo_client, location: Location):
    return mongo_client[location.db][location.collection]


def run_script(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run one of the top-level scripts as an operator would."""
    full_env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("MONGODB_URI", "MONGOSECRET")
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        # Default backups and exports land in /tmp, never in the checkout.
        cwd=cwd or tempfile.gettempdir(),
        timeout=timeout,
    )


@pytest.fixture
def connection_args(mongo_uri: str, location: Location) -> list[str]:
    """The flags that point a script at this test's database."""
    return ["--uri", mongo_uri, "--db", location.db, "--timeout", "5"]


@pytest.fixture
def target(mongo_client, location: Location) -> Iterator[Location]:
    """A second fresh database beside `location`: the new server's."""
    new = Location(db=location.db + "_new")
    yield new
    mongo_client.drop_database(new.db)


@pytest.fixture
def target_args(mongo_uri: str, target: Location) -> list[str]:
    """The flags that point a script at the second database."""
    return ["--uri", mongo_uri, "--db", target.db, "--timeout", "5"]
