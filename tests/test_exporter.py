"""The exporter: what /metrics serves for a document, and how it behaves running."""

from __future__ import annotations

import base64
import datetime
import logging
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trustme
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

import collector
import exporter as exporter_cli
import exposition
import metric_keys
import snapshots
import timestamps
from collector import (
    BAD_COUNTER_VALUE,
    COLLISION,
    INVALID_KEY,
    NON_NUMERIC,
)
from exporter_http import ExporterApp
from metric_keys import format_key
from mongo_store import Location, MetricsStore
from snapshots import DocumentCollector
from tests.proxy import Fault, Proxy
from tests.servers import (
    REPO,
    PrometheusServer,
    WireServer,
    free_port,
    require_binary,
    wait_until,
)

OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
GPU = "NVIDIA A100.80GB"
NEW_JOB = {
    "tao_action": "train",
    "tao_gpu_count": "2",
    "tao_network": "resnet50",
    "tao_primary_gpu": GPU,
    "tao_status": "pass",
    "tao_version": "5.3.0",
}
# Jobs recorded before the newer labels existed.
OLD_JOB = {"tao_action": "evaluate", "tao_network": "resnet50"}
ODD_LABELS = {"tao_network": 'yolo "v4", tiny\\x\n', "tao_version": "$6.0"}


def sample_document() -> dict[str, Any]:
    """A document with every family, mixed label sets and every numeric type."""
    return {
        "total_action_train_pass": 12,
        "version_5_3_0_action_train": Int64(9),
        "network_resnet50_action_train": 4,
        "gpu_nvidia_a100_action_train": Int64(2**40 + 1),
        "network_resnet50_action_train_version_5_3_0_status_pass_gpu_2_A100_2": 2,
        "time_lapsed_today": 3600.5,
        format_key("tao_job_total", NEW_JOB): Int64(7),
        format_key("tao_job_total", OLD_JOB): 2,
        format_key("tao_job_total", ODD_LABELS): 1,
        format_key("tao_job_duration_sum", NEW_JOB): 1234.25,
        format_key("tao_job_duration_sum", OLD_JOB): Decimal128("10.5"),
        format_key("tao_job_gpu_time_sum", NEW_JOB): 2468.5,
        format_key("tao_job_gpu_total", {"tao_gpu_type": GPU}): 14,
        format_key("tao_job_retry_count", {"tao_action": "train"}): 3,
        format_key("tao_job_queue_depth", {"tao_action": "train"}): -1.5,
        "last_updated": "2026-05-04T10:20:30Z",
    }


def expected_samples(document: Mapping[str, Any]) -> dict[tuple, float]:
    """Every stored key as the (name, labels) a parser should read, with its value."""
    found = {}
    for key, value in document.items():
        if key in metric_keys.BOOKKEEPING_KEYS:
            continue
        name, labels = metric_keys.parse_key(key)
        if isinstance(value, Decimal128):
            value = value.to_decimal()
        # Integers are written exactly and the parsers read them back exactly.
        exact = int(value) if isinstance(value, int) else float(value)
        found[name, frozenset(labels.items())] = exact
    return found


def served_samples(families: Any) -> dict[tuple, float]:
    """The stored samples a parser read, leaving out the exporter's own."""
    found: dict[tuple, float] = {}
    for family in families:
        for sample in family.samples:
            if sample.name.startswith(snapshots.PREFIX):
                continue
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"{key} served twice"
            found[key] = sample.value
    return found


def own_samples(text: str) -> dict[tuple, float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parse_text(text)
        for sample in family.samples
        if sample.name.startswith(snapshots.PREFIX)
    }


def text_of(build: collector.Build) -> str:
    return exposition.render(build.families, exposition.TEXT).decode()


def openmetrics_of(build: collector.Build) -> str:
    openmetrics = exposition.render(build.families, exposition.OPENMETRICS)
    return openmetrics.decode() + "# EOF\n"


def body_text(snapshot: snapshots.Snapshot) -> str:
    return b"".join(snapshot.exposition.body(exposition.TEXT)).decode()


def family_types(families: Any) -> dict[str, str]:
    return {family.name: family.type for family in families}


def same_values(left: Mapping[tuple, float], right: Mapping[tuple, float]) -> bool:
    if left.keys() != right.keys():
        return False
    return all(
        (math.isnan(left[key]) and math.isnan(right[key])) or left[key] == right[key]
        for key in left
    )


# The collector in-process


def test_every_key_becomes_one_sample_under_its_stored_name() -> None:
    document = sample_document()
    build = collector.build_families(document)
    text = text_of(build)
    openmetrics = openmetrics_of(build)

    assert build.skipped == []
    assert served_samples(parse_text(text)) == expected_samples(document)
    assert served_samples(parse_openmetrics(openmetrics)) == expected_samples(document)


def test_families_are_typed_by_name() -> None:
    build = collector.build_families(sample_document())
    text_types = family_types(parse_text(text_of(build)))
    openmetrics = openmetrics_of(build)
    openmetrics_types = family_types(parse_openmetrics(openmetrics))

    for types in (text_types, openmetrics_types):
        assert types["tao_job"] == "counter"
        assert types["tao_job_gpu"] == "counter"
        assert types["tao_job_duration_sum"] == "unknown"
        assert types["tao_job_gpu_time_sum"] == "unknown"
        assert types["tao_job_retry_count"] == "unknown"
        assert types["tao_job_queue_depth"] == "gauge"
        assert types["total_action_train_pass"] == "gauge"
        assert types["time_lapsed_today"] == "gauge"


def test_values_keep_their_exact_spelling() -> None:
    assert collector.format_value(Int64(2**62 + 1)) == str(2**62 + 1)
    assert collector.format_value(7) == "7"
    assert collector.format_value(0.1) == "0.1"
    assert collector.format_value(Decimal128("2.50")) == "2.5"
    assert collector.format_value(float("inf")) == "+Inf"
    assert collector.format_value(float("-inf")) == "-Inf"
    assert collector.format_value(float("nan")) == "NaN"
    for not_a_number in (True, "3", None, [1], {"a": 1}):
        assert collector.format_value(not_a_number) is None


def test_unservable_keys_are_skipped_with_a_reason() -> None:
    counter = format_key("tao_job_total", NEW_JOB)
    document = {
        counter: 5,
        "tao_job_total": 9,  # a flat gauge under a counter family's name
        "tao_job": 1,  # OpenMetrics calls the tao_job_total family tao_job
        'broken{a="1"': 1,
        'unsorted{b="1",a="2"}': 1,
        "9starts_with_digit": 1,
        "text_value": "12",
        "flag": True,
        snapshots.UP: 1,  # the exporter's own name
        format_key("tao_job_total", OLD_JOB): -2,
        format_key("tao_job_total", ODD_LABELS): float("nan"),
        format_key("tao_queue", OLD_JOB): -2,
        "fine": 3,
    }
    build = collector.build_families(document, snapshots.SELF_METRICS)
    reasons = {item.key: item.reason for item in build.skipped}

    assert reasons == {
        "tao_job_total": COLLISION,
        "tao_job": COLLISION,
        'broken{a="1"': INVALID_KEY,
        'unsorted{b="1",a="2"}': INVALID_KEY,
        "9starts_with_digit": INVALID_KEY,
        "text_value": NON_NUMERIC,
        "flag": NON_NUMERIC,
        snapshots.UP: COLLISION,
        format_key("tao_job_total", OLD_JOB): BAD_COUNTER_VALUE,
        format_key("tao_job_total", ODD_LABELS): BAD_COUNTER_VALUE,
    }
    served = served_samples(parse_text(text_of(build)))
    kept = {counter: 5, format_key("tao_queue", OLD_JOB): -2, "fine": 3}
    assert served == expected_samples(kept)
    assert build.skipped_by_reason() == {
        INVALID_KEY: 3,
        NON_NUMERIC: 2,
        BAD_COUNTER_VALUE: 2,
        COLLISION: 3,
    }


def test_a_gauge_may_mix_flat_and_labeled_keys() -> None:
    document = {"tao_queue": 1, 'tao_queue{tao_action="train"}': 2}
    build = collector.build_families(document)
    families = list(parse_text(text_of(build)))

    assert build.skipped == []
    assert family_types(families) == {"tao_queue": "gauge"}
    assert served_samples(families) == expected_samples(document)


def test_collisions_resolve_the_same_whatever_the_document_order() -> None:
    document = {"tao_job": 1, format_key("tao_job_total", OLD_JOB): 2, "x_total": 3}
    forward = collector.build_families(document)
    backward = collector.build_families(dict(reversed(document.items())))

    assert [item.key for item in forward.skipped] == ["tao_job"]
    assert [item.key for item in backward.skipped] == ["tao_job"]


label_sets = st.dictionaries(
    st.sampled_from(["tao_action", "tao_network", "tao_version", "le", "a"]),
    st.text(alphabet=st.sampled_from('ab.$"\\\n,}{= é'), max_size=8),
    max_size=4,
).map(lambda labels: tuple(sorted(labels.items())))
stored_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.integers(-(2**31), 2**31 - 1),
    st.floats(allow_nan=False, width=64),
)
family_names = st.sampled_from(
    ["tao_job_total", "tao_job_duration_sum", "tao_job_count", "tao_queue"]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.tuples(family_names, label_sets), stored_values))
def test_exposition_round_trips_through_both_parsers(samples: dict) -> None:
    document = {
        format_key(name, dict(labels)): value
        for (name, labels), value in samples.items()
    }
    build = collector.build_families(document)
    # Only flat keys under a counter's name and negative counters are refused.
    refused = {item.key for item in build.skipped}
    for key in refused:
        flat = metric_keys.parse_key(key)[1] == {}
        assert flat or (key.startswith("tao_job_total{") and document[key] < 0)
    expected = expected_samples(
        {key: value for key, value in document.items() if key not in refused}
    )
    text = text_of(build)
    openmetrics = openmetrics_of(build)

    assert same_values(served_samples(parse_text(text)), expected)
    assert same_values(served_samples(parse_openmetrics(openmetrics)), expected)


edits = st.lists(
    st.tuples(
        st.sampled_from(["set", "delete"]),
        st.sampled_from(
            [
                format_key("tao_job_total", NEW_JOB),
                format_key("tao_job_total", OLD_JOB),
                format_key("tao_job_duration_sum", OLD_JOB),
                "tao_job_total",
                "total_action_train_pass",
                "tao_job",
                "bad{",
                format_key("tao_job_total", {"tao_action": "new"}),
                format_key("tao_job_queue_depth", {"tao_action": "new"}),
                format_key("total_action_train_pass", {"tao_action": "new"}),
                format_key("time_lapsed_today", {"tao_action": "new"}),
                "tao_job_queue_depth",
                "tao_job_duration_sum",
                "new_flat_gauge",
                format_key("tao_new_total", {"tao_action": "new"}),
                format_key("tao_new", {"tao_action": "new"}),
                "tao_new_created",
                snapshots.SERIES,
            ]
        ),
        st.one_of(stored_values, st.just("text"), st.just(-1)),
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(edits, min_size=1, max_size=4))
def test_building_on_the_last_build_equals_building_afresh(rounds: list) -> None:
    document = sample_document()
    builder = collector.Builder(snapshots.SELF_METRICS)
    builder.build(document)
    for round_of_edits in rounds:
        for action, key, value in round_of_edits:
            if action == "set":
                document[key] = value
            else:
                document.pop(key, None)
        again = builder.build(document)
        fresh = collector.build_families(document, snapshots.SELF_METRICS)
        # The same lines, though a key deleted and stored again may move.
        for render in (text_of, openmetrics_of):
            assert sorted(render(again).splitlines()) == sorted(
                render(fresh).splitlines()
            )
        assert served_samples(parse_openmetrics(openmetrics_of(again))) == (
            served_samples(parse_openmetrics(openmetrics_of(fresh)))
        )
        assert set(again.skipped) == set(fresh.skipped)
        assert again.placement.keys() == fresh.placement.keys()
        for key, (family_at, line_at) in again.placement.items():
            assert again.families[family_at].keys[line_at] == key
            assert again.families[family_at].lines[line_at].startswith(key + " ")


class Stores:
    """Open stores on demand, counting how often the collector asked."""

    def __init__(self, uri: str, location: Location) -> None:
        self.uri = uri
        self.location = location
        self.opened = 0

    def __call__(self) -> MetricsStore:
        self.opened += 1
        return MetricsStore(self.uri, self.location, timeout=2)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_registering_the_collector_does_not_read_mongodb(
    mongo_uri: str, location: Location
) -> None:
    stores = Stores(mongo_uri, location)
    documents = DocumentCollector(stores, cache_seconds=5, timeout=2)
    registry = CollectorRegistry()
    registry.register(documents)

    assert stores.opened == 0
    generate_latest(registry)
    assert stores.opened == 1


def test_library_exposition_matches_our_own(mongo_uri: str, location: Location) -> None:
    document = sample_document()
    with MetricsStore(mongo_uri, location) as store:
        store.replace(document)
    documents = DocumentCollector(Stores(mongo_uri, location), 60, 2)
    registry = CollectorRegistry()
    registry.register(documents)
    bodies = documents.snapshot().exposition

    ours = b"".join(bodies.body(exposition.TEXT)).decode()
    library = generate_latest(registry).decode()
    assert list(parse_text(ours)) == list(parse_text(library))
    assert served_samples(parse_text(ours)) == expected_samples(document)
    ours = b"".join(bodies.body(exposition.OPENMETRICS)).decode()
    library = openmetrics_exposition.generate_latest(registry).decode()
    assert list(parse_openmetrics(ours)) == list(parse_openmetrics(library))


def test_reads_are_cached_and_deleted_keys_go_after_expiry(
    mongo_uri: str, location: Location
) -> None:
    clock = Clock()
    gone = format_key("tao_job_total", OLD_JOB)
    document = sample_document()
    with MetricsStore(mongo_uri, location) as store:
        store.replace(document)
        documents = DocumentCollector(Stores(mongo_uri, location), 5, 2, clock)
        before = documents.snapshot()
        del document[gone]
        document["total_action_train_pass"] += 1
        store.replace(document)

    clock.now += 4
    assert documents.snapshot() is before
    clock.now += 2
    text = body_text(documents.snapshot())
    assert served_samples(parse_text(text)) == expected_samples(document)


def test_each_skipped_key_is_logged_once(
    mongo_uri: str, location: Location, caplog: pytest.LogCaptureFixture
) -> None:
    with MetricsStore(mongo_uri, location) as store:
        store.replace({"ok": 1, "bad{": 2, "words": "many"})
    documents = DocumentCollector(Stores(mongo_uri, location), 5, 2)
    with caplog.at_level(logging.WARNING, logger="exporter"):
        for _ in range(3):
            documents.expire()
            snapshot = documents.snapshot()

    skips = [record.getMessage() for record in caplog.records]
    assert len(skips) == 2, skips
    assert any("'bad{'" in line and INVALID_KEY in line for line in skips)
    assert any("'words'" in line and NON_NUMERIC in line for line in skips)
    served = own_samples(body_text(snapshot))
    assert served[snapshots.KEYS_SKIPPED, frozenset({("reason", INVALID_KEY)})] == 1


def test_own_metrics_describe_the_document(mongo_uri: str, location: Location) -> None:
    with MetricsStore(mongo_uri, location) as store:
        stored = store.replace(sample_document())
        size = store.read_bytes()
    documents = DocumentCollector(Stores(mongo_uri, location), 5, 2)
    own = own_samples(body_text(documents.snapshot()))

    def value(name: str) -> float:
        return own[name, frozenset()]

    assert value(snapshots.UP) == 1
    assert value(snapshots.SERIES) == len(stored) - 3  # _id, name, last_updated
    assert value(snapshots.DOCUMENT_SIZE) == size
    assert value(snapshots.DOCUMENT_MAX) == 16 * 1024 * 1024
    assert value(snapshots.LAST_UPDATED) == 1777890030.0
    assert value(snapshots.READ_DURATION) > 0


def test_last_updated_is_read_in_both_stored_forms() -> None:
    moment = datetime.datetime(2026, 5, 4, 10, 20, 30)
    assert timestamps.unix_time(moment) == 1777890030.0
    assert timestamps.unix_time("2026-05-04T10:20:30+00:00") == 1777890030.0
    assert timestamps.unix_time("2026-05-04T12:20:30+02:00") == 1777890030.0
    assert timestamps.unix_time(" 2026-05-04T10:20:30Z ") == 1777890030.0
    assert timestamps.unix_time("yesterday") is None
    assert timestamps.unix_time(None) is None


def test_the_application_answers_head_and_refuses_other_methods(
    mongo_uri: str, location: Location
) -> None:
    with MetricsStore(mongo_uri, location) as store:
        store.replace(sample_document())
    app = ExporterApp(DocumentCollector(Stores(mongo_uri, location), 5, 2))
    answers: list[tuple[str, dict[str, str]]] = []

    def call(method: str, path: str) -> bytes:
        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            answers.append((status, dict(headers)))

        environ = {"REQUEST_METHOD": method, "PATH_INFO": path}
        return b"".join(app(environ, start_response))

    full = call("GET", "/metrics")
    assert call("HEAD", "/metrics") == b""
    assert answers[-1][0] == "200 OK"
    assert int(answers[-1][1]["Content-Length"]) == len(full)
    call("POST", "/metrics")
    assert answers[-1][0].startswith("405")
    assert answers[-1][1]["Allow"] == "GET, HEAD"


# The exporter as a running program


class Exporter:
    """tao-metrics-exporter run as a subprocess, as an operator runs it."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        """Listen on a free local port, or on port when args already name it."""
        self.port = port or free_port()
        self.args = list(args)
        if port is None:
            self.args += ["--listen-address", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, **(env or {})}
        self.scheme = "http"
        self.context: ssl.SSLContext | None = None
        self.process: subprocess.Popen[str] | None = None
        self.output = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Exporter:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "exporter.py"), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        try:
            wait_until(self._alive, 30, "the exporter to answer /healthz")
        except TimeoutError:
            self.stop()
            raise RuntimeError("exporter did not start:\n" + self.output) from None
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            self.output = self.process.communicate()[0]
            raise RuntimeError("exporter exited:\n" + self.output)
        return self.get("/healthz")[0] == 200

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple:
        """Return status, headers and body text of a GET request."""
        request = urllib.request.Request(self.url + path, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(
                request, timeout=15, context=self.context
            ) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()

    def metrics(self, accept: str = "") -> str:
        status, _, body = self.get("/metrics", {"Accept": accept} if accept else {})
        assert status == 200, body
        return body

    def stop(self) -> int:
        """Send SIGTERM, wait, and return the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.output = self.process.communicate(timeout=15)[0]
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.output = self.process.communicate()[0]
        return self.process.returncode


@pytest.fixture
def run_exporter() -> Iterator[Any]:
    """Start exporters for a test; stop them after, requiring a clean exit."""
    started: list[Exporter] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> Exporter:
        exporter = Exporter(*args, env=env).start()
        started.append(exporter)
        return exporter

    yield start
    for running in started:
        status = running.stop()
        assert status == 0, running.output


def db_args(uri: str, location: Location, *extra: str) -> list[str]:
    return ["--uri", uri, "--db", location.db, "--timeout", "2", *extra]


def test_metrics_match_the_document_in_both_formats(
    mongo_uri: str, location: Location, run_exporter: Any
) -> None:
    document = sample_document()
    with MetricsStore(mongo_uri, location) as store:
        store.replace(document)
    exporter = run_exporter(*db_args(mongo_uri, location))

    text = exporter.metrics()
    openmetrics = exporter.metrics(OPENMETRICS_ACCEPT)

    assert served_samples(parse_text(text)) == expected_samples(document)
    assert served_samples(parse_openmetrics(openmetrics)) == expected_samples(document)
    assert openmetrics.endswith("# EOF\n")
    assert "_created" not in text + openmetrics
    headers = exporter.get("/metrics", {"Accept": OPENMETRICS_ACCEPT})[1]
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert exporter.get("/readyz")[0] == 200
    assert exporter.get("/nothing")[0] == 404


def test_gzip_is_served_when_asked(
    mongo_uri: str, location: Location, run_exporter: Any
) -> None:
    with MetricsStore(mongo_uri, location) as store:
        store.replace(sample_document())
    exporter = run_exporter(*db_args(mongo_uri, location))
    request = urllib.request.Request(
        exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        compressed = response.read()
    # One gzip stream, which every client reads whole.
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    body = stream.decompress(compressed).decode()
    assert stream.eof
    assert stream.unused_data == b""
    assert body == exporter.metrics()
    assert served_samples(parse_text(body)) == expected_samples(sample_document())


def test_promtool_finds_nothing_wrong(
    mongo_uri: str, location: Location, run_exporter: Any
) -> None:
    promtool = require_binary("promtool")
    with MetricsStore(mongo_uri, location) as store:
        store.replace(sample_document())
    exporter = run_exporter(*db_args(mongo_uri, location))

    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exporter.metrics(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""


def test_deleted_keys_disappear_once_the_cache_expires(
    mongo_uri: str, location: Location, run_exporter: Any
) -> None:
    document = sample_document()
    with MetricsStore(mongo_uri, location) as store:
        store.replace(document)
        exporter = run_exporter(*db_args(mongo_uri, location, "--cache-seconds", "1"))
        assert served_samples(parse_text(exporter.metrics())) == expected_samples(
            document
        )
        kept = {key: document[key] for key in list(document)[::2]}
        store.replace(kept)

    def only_kept() -> bool:
        served = served_samples(parse_text(exporter.metrics()))
        return served == expected_samples(kept)

    wait_until(only_kept, 10, "deleted keys to disappear")


def test_survives_mongodb_stopping_and_restarting(
    tmp_path: Path, run_exporter: Any
) -> None:
    server = WireServer(storage_path=str(tmp_path / "db")).start()
    location = Location(db="restart")
    document = sample_document()
    try:
        with MetricsStore(server.uri, location) as store:
            store.replace(document)
        exporter = run_exporter(
            *db_args(server.uri, location, "--cache-seconds", "0.5", "--timeout", "1")
        )
        assert own_samples(exporter.metrics())[snapshots.UP, frozenset()] == 1

        server.stop()
        time.sleep(0.6)
        for _ in range(3):
            started = time.monotonic()
            text = exporter.metrics()
            # Answered well before a scrape timeout, with only our own metrics.
            assert time.monotonic() - started < 5
            assert own_samples(text)[snapshots.UP, frozenset()] == 0
            assert served_samples(parse_text(text)) == {}
        assert exporter.get("/readyz")[0] == 503

        server.start()
        wait_until(
            lambda: (
                served_samples(parse_text(exporter.metrics()))
                == expected_samples(document)
            ),
            30,
            "the exporter to read the document again",
        )
        assert own_samples(exporter.metrics())[snapshots.UP, frozenset()] == 1
        assert exporter.get("/readyz")[0] == 200
    finally:
        server.stop()
    assert exporter.stop() == 0
    assert exporter.output.count("mongodb unreachable") == 1, exporter.output


def test_a_hung_mongodb_is_reported_within_the_timeout(
    mongo_uri: str, location: Location, run_exporter: Any
) -> None:
    document = sample_document()
    with MetricsStore(mongo_uri, location) as store:
        store.replace(document)
    upstream = urllib.parse.urlsplit(mongo_uri).port
    assert upstream is not None
    # The first find is held without an answer, as by an overloaded server.
    fault = Fault(command="find", hold=True)
    with Proxy(upstream, fault) as proxy:
        args = db_args(proxy.uri, location, "--timeout", "1", "--cache-seconds", "1")
        exporter = run_exporter(*args)
        started = time.monotonic()
        text = exporter.metrics()

        assert time.monotonic() - started < 5
        assert fault.seen.is_set()
        assert own_samples(text)[snapshots.UP, frozenset()] == 0
        assert served_samples(parse_text(text)) == {}
        fault.release.set()
        wait_until(
            lambda: (
                served_samples(parse_text(exporter.metrics()))
                == expected_samples(document)
            ),
            30,
            "the exporter to read through the proxy again",
        )


def test_a_missing_document_serves_only_own_metrics(
    mongo_uri: str, location: Location, run_exporter: Any
) -> None:
    exporter = run_exporter(*db_args(mongo_uri, location))
    text = exporter.metrics()

    assert served_samples(parse_text(text)) == {}
    assert own_samples(text)[snapshots.UP, frozenset()] == 1
    assert own_samples(text)[snapshots.DOCUMENT_SIZE, frozenset()] == 0


def test_tls_and_basic_auth(mongo_uri: str, location: Location, tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    with MetricsStore(mongo_uri, location) as store:
        store.replace(sample_document())
    env = {"EXPORTER_BASIC_AUTH_USER": "prom", "EXPORTER_BASIC_AUTH_PASSWORD": "s3:cr"}
    args = db_args(mongo_uri, location, "--tls-cert", str(cert), "--tls-key", str(key))
    exporter = Exporter(*args, env=env)
    exporter.scheme = "https"
    exporter.context = ssl.create_default_context()
    authority.configure_trust(exporter.context)
    exporter.start()
    try:
        status, headers, _ = exporter.get("/metrics")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Basic")
        wrong = {"Authorization": "Basic " + _b64("prom:wrong")}
        assert exporter.get("/metrics", wrong)[0] == 401
        right = {"Authorization": "Basic " + _b64("prom:s3:cr")}
        status, _, body = exporter.get("/metrics", right)
        assert status == 200
        assert served_samples(parse_text(body)) == expected_samples(sample_document())
        assert exporter.get("/healthz")[0] == 200
    finally:
        assert exporter.stop() == 0, exporter.output


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_basic_auth_from_a_file(
    mongo_uri: str, location: Location, tmp_path: Path, run_exporter: Any
) -> None:
    secret = tmp_path / "auth"
    secret.write_text("scraper:pa ss\n")
    exporter = run_exporter(
        *db_args(mongo_uri, location, "--basic-auth-file", str(secret))
    )

    assert exporter.get("/metrics")[0] == 401
    right = {"Authorization": "Basic " + _b64("scraper:pa ss")}
    assert exporter.get("/metrics", right)[0] == 200


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--tls-cert", "cert.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--basic-auth-file", "/nonexistent"], {}, "cannot read --basic-auth-file"),
        ([], {"EXPORTER_BASIC_AUTH_USER": "u"}, "set both EXPORTER_BASIC_AUTH_USER"),
    ],
)
def test_bad_settings_end_in_one_line(args: list, env: dict, message: str) -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "exporter.py"), "--port", "0", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: " + message), completed.stderr
    assert len(completed.stderr.splitlines()) == 1


def test_every_option_reads_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = exporter_cli.build_parser().parse_args([])
    assert (defaults.port, float(defaults.timeout)) == (9877, 3.0)
    assert defaults.cache_seconds == 5.0
    monkeypatch.setenv("EXPORTER_PORT", "9999")
    monkeypatch.setenv("EXPORTER_LISTEN_ADDRESS", "::1")
    monkeypatch.setenv("POLLING_INTERVAL_SECONDS", "30")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MONGODB_TIMEOUT", "1.5")
    monkeypatch.setenv("EXPORTER_TLS_CERT", "c.pem")
    monkeypatch.setenv("EXPORTER_TLS_KEY", "k.pem")
    monkeypatch.setenv("EXPORTER_BASIC_AUTH_FILE", "auth")
    args = exporter_cli.build_parser().parse_args([])

    assert (args.port, args.listen_address, args.cache_seconds) == (9999, "::1", 30)
    assert (args.log_level, float(args.timeout)) == ("debug", 1.5)
    assert (args.tls_cert, args.tls_key, args.basic_auth_file) == (
        "c.pem",
        "k.pem",
        "auth",
    )
    # The exporter's own name wins over the older one.
    monkeypatch.setenv("EXPORTER_CACHE_SECONDS", "2")
    assert exporter_cli.build_parser().parse_args([]).cache_seconds == 2


def test_a_port_in_use_ends_in_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        address = ["--listen-address", "127.0.0.1", "--port", str(port)]
        completed = subprocess.run(
            [sys.executable, str(REPO / "exporter.py"), *address],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert completed.returncode == 1
    assert completed.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert len(completed.stderr.splitlines()) == 1


def test_prometheus_reads_every_family(
    mongo_uri: str, location: Location, tmp_path: Path, run_exporter: Any
) -> None:
    require_binary("prometheus")
    document = sample_document()
    with MetricsStore(mongo_uri, location) as store:
        store.replace(document)
    exporter = run_exporter(*db_args(mongo_uri, location))
    prometheus = PrometheusServer(
        tmp_path / "prometheus", [f"127.0.0.1:{exporter.port}"]
    )
    prometheus.start()
    try:
        prometheus.wait_for("tao_exporter_mongodb_up == 1")
        for name in (
            "tao_job_total",
            "tao_job_duration_sum",
            "tao_job_gpu_time_sum",
            "tao_job_gpu_total",
            "tao_job_retry_count",
            "total_action_train_pass",
            "time_lapsed_today",
        ):
            result = prometheus.query(name)
            got = {
                (name, _labels(sample["metric"])): float(sample["value"][1])
                for sample in result
            }
            want = {
                key: value
                for key, value in expected_samples(document).items()
                if key[0] == name
            }
            assert got == want, name
    finally:
        prometheus.stop()


def _labels(metric: Mapping[str, str]) -> frozenset:
    ignored = {"__name__", "job", "instance"}
    return frozenset((k, v) for k, v in metric.items() if k not in ignored)
