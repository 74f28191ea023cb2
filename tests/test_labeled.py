"""Building a job's increments and recording them in one atomic server update."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli_support
import labeled
from gpu_types import (
    ARCHITECTURES,
    GPU_GENERATIONS,
    architecture,
    gpu_type,
    primary_gpu,
)
from labeled import (
    ComprehensiveMetricsBuilder,
    Job,
    LabeledMetricsBuilder,
    LegacyMetricsBuilder,
    apply_locally,
    counter_increments,
    record_job,
    record_jobs,
    record_pipeline,
)
from metric_keys import (
    COMPREHENSIVE,
    LABELED,
    LEGACY,
    classify,
    format_key,
    parse_comprehensive,
    parse_key,
)
from mongo_store import Location, MetricsStore
from sample_data import sample_jobs
from tests.conftest import run_script

NOW = datetime(2026, 5, 17, 12, 30, tzinfo=UTC)
EXAMPLE = Job(
    network="resnet50",
    action="train",
    version="5.3.0",
    success=True,
    time_lapsed=3600,
    gpu=("NVIDIA A100", "NVIDIA A100"),
)


def job_key(name: str, **overrides: str) -> str:
    labels = {
        "tao_action": "train",
        "tao_automl_triggered": "false",
        "tao_client_type": "container",
        "tao_gpu_count": "2",
        "tao_network": "resnet50",
        "tao_primary_gpu": "A100",
        "tao_status": "pass",
        "tao_user_error": "false",
        "tao_version": "5_3_0",
    }
    labels.update(overrides)
    return format_key(name, labels)


@pytest.fixture
def store(mongo_uri: str, location: Location):
    with MetricsStore(mongo_uri, location, timeout=5) as opened:
        yield opened


def stored(store: MetricsStore) -> dict:
    document = store.read()
    assert document is not None
    document.pop("_id")
    return document


# What one job adds


def test_example_job_gives_every_family_exactly(store: MetricsStore) -> None:
    record_job(store, EXAMPLE, NOW)
    assert stored(store) == {
        "name": "metrics",
        job_key("tao_job_total"): 1,
        job_key("tao_job_duration_sum"): 3600,
        job_key("tao_job_gpu_time_sum"): 7200,
        'tao_job_gpu_total{tao_gpu_type="A100"}': 2,
        "total_action_train_pass": 1,
        "version_5_3_0_action_train": 1,
        "network_resnet50_action_train": 1,
        "gpu_nvidia_a100_action_train": 2,
        "network_resnet50_action_train_version_5_3_0_status_pass_gpu_2_NVIDIA_A100_2": (
            1
        ),
        "time_lapsed_today": 3600,
        "last_updated": "2026-05-17T12:30:00+00:00",
    }


def test_single_gpu_job_gives_the_documented_comprehensive_key() -> None:
    job = Job("resnet50", "train", "5.3.0", True, time_lapsed=60, gpu=("NVIDIA A100",))
    key = "network_resnet50_action_train_version_5_3_0_status_pass_gpu_1_NVIDIA_A100_1"
    assert counter_increments([job])[key] == 1


def test_failed_job_with_every_option(store: MetricsStore) -> None:
    job = Job(
        network="Mask-Grounding DINO",
        action="gen_trt_engine",
        version="6.0.0-rc1",
        success=False,
        user_error=True,
        time_lapsed=12.5,
        gpu=("NVIDIA H100 80GB HBM3",),
        client_type="TAO-API",
        automl_triggered=True,
    )
    record_job(store, job, NOW)
    labels = {
        "tao_action": "gen_trt_engine",
        "tao_automl_triggered": "true",
        "tao_client_type": "tao_api",
        "tao_gpu_count": "1",
        "tao_network": "mask_grounding_dino",
        "tao_primary_gpu": "H100",
        "tao_status": "fail",
        "tao_user_error": "true",
        "tao_version": "6_0_0_rc1",
    }
    document = stored(store)
    assert document[format_key("tao_job_total", labels)] == 1
    assert document[format_key("tao_job_duration_sum", labels)] == 12.5
    assert document[format_key("tao_job_gpu_time_sum", labels)] == 12.5
    assert document["total_action_gen_trt_engine_fail"] == 1
    assert document["version_6_0_0_rc1_action_gen_trt_engine"] == 1
    assert document["network_mask_grounding_dino_action_gen_trt_engine"] == 1
    assert document["gpu_nvidia_h100_80gb_hbm3_action_gen_trt_engine"] == 1
    comprehensive = (
        "network_mask_grounding_dino_action_gen_trt_engine_version_6_0_0_rc1"
        "_status_fail_gpu_1_NVIDIA_H100_80GB_HBM3_1"
    )
    assert document[comprehensive] == 1


def test_no_time_gives_no_time_sums() -> None:
    job = Job("dino", "export", "5.5.0", True, time_lapsed=0, gpu=("Tesla T4",))
    names = {parse_key(key)[0] for key in counter_increments([job]) if "{" in key}
    assert names == {"tao_job_total", "tao_job_gpu_total"}


def test_job_without_gpus(store: MetricsStore) -> None:
    job = Job("ocrnet", "inference", "5.5.0", True, time_lapsed=30)
    record_job(store, job, NOW)
    document = stored(store)
    labels = {"tao_gpu_count": "0", "tao_primary_gpu": "unknown"}
    overrides = dict(labels, tao_action="inference", tao_network="ocrnet")
    assert document[job_key("tao_job_total", **overrides, tao_version="5_5_0")] == 1
    assert (
        document[job_key("tao_job_gpu_time_sum", **overrides, tao_version="5_5_0")] == 0
    )
    assert not [key for key in document if key.startswith("tao_job_gpu_total")]
    assert not [key for key in document if key.startswith("gpu_")]
    # The services write the separator before the empty GPU list.
    key = "network_ocrnet_action_inference_version_5_5_0_status_pass_gpu_0_"
    assert document[key] == 1


GPU_EXAMPLES = [
    "NVIDIA A100-SXM4-80GB",
    "NVIDIA GeForce RTX 4090",
    "NVIDIA RTX A6000",
    "NVIDIA H100 80GB HBM3",
    "Jetson AGX Orin",
    "NVIDIA L40S",
    "NVIDIA GH200",
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA RTX A6000", "RTXA6000"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("Jetson AGX Orin", "ORIN"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GH200", "GH200"),
        ("NVIDIA A100", "A100"),
        ("NVIDIA_A100", "A100"),
        ("Tesla V100-SXM2-32GB", "V100"),
        ("Tesla T4", "T4"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GeForce RTX 3090 Ti", "RTX3090TI"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX6000ADA"),
        ("Quadro RTX 8000", "RTX8000"),
        ("", "unknown"),
        ("unknown", "unknown"),
    ],
)
def test_gpu_type_from_marketing_name(name: str, expected: str) -> None:
    assert gpu_type(name) == expected
    job = Job("n", "train", "1", True, gpu=(name,))
    key = format_key("tao_job_gpu_total", {"tao_gpu_type": expected})
    assert counter_increments([job])[key] == 1


@pytest.mark.parametrize(
    ("gpu", "generation"),
    [
        ("B200", "blackwell"),
        ("GB200", "blackwell"),
        ("H100", "hopper"),
        ("GH200", "hopper"),
        ("L40S", "ada"),
        ("RTX4090", "ada"),
        ("RTX6000ADA", "ada"),
        ("A100", "ampere"),
        ("RTXA6000", "ampere"),
        ("ORIN", "ampere"),
        ("T4", "turing"),
        ("RTX8000", "turing"),
        ("V100", "volta"),
        ("P100", "pascal"),
        ("FOO", ""),
    ],
)
def test_generation_table(gpu: str, generation: str) -> None:
    assert architecture(gpu) == generation
    assert generation == "" or generation in ARCHITECTURES


@pytest.mark.parametrize(
    ("gpus", "primary"),
    [
        ([], "unknown"),
        (["NVIDIA A100"], "A100"),
        (["NVIDIA A100"] * 3 + ["NVIDIA H100 80GB HBM3"], "H100"),
        (["NVIDIA H100 80GB HBM3", "NVIDIA B200"], "B200"),
        (["NVIDIA A100", "NVIDIA GeForce RTX 4090"], "RTX4090"),
        (["Tesla V100-SXM2-32GB", "Tesla T4"], "T4"),
        (["NVIDIA A100", "NVIDIA RTX A6000", "NVIDIA RTX A6000"], "RTXA6000"),
        (["NVIDIA RTX A6000", "NVIDIA A100"], "A100"),
        (["Acme X1", "Acme X1", "Other Z"], "ACME"),
        (["Acme X1", "Tesla T4"], "T4"),
    ],
)
def test_primary_gpu_is_newest_then_most_common(gpus, primary) -> None:
    assert primary_gpu([gpu_type(gpu) for gpu in gpus]) == primary
    job = Job("n", "train", "1", True, gpu=tuple(gpus))
    labels = LabeledMetricsBuilder().job_labels(job)
    assert labels["tao_primary_gpu"] == primary
    assert labels["tao_gpu_count"] == str(len(gpus))


def test_generation_table_is_data_that_a_newcomer_extends() -> None:
    table = (*GPU_GENERATIONS, (r"^RUBIN\d*$", "blackwell"))
    assert architecture("RUBIN") == ""
    assert architecture("RUBIN", table) == "blackwell"


def test_every_family_reads_back_through_the_grammar() -> None:
    for job in sample_jobs(200, seed=3):
        for key, _ in LabeledMetricsBuilder().increments(job):
            assert classify(key) == LABELED
            assert format_key(*parse_key(key)) == key
        for key, _ in LegacyMetricsBuilder().increments(job):
            assert classify(key) == LEGACY
        key = ComprehensiveMetricsBuilder().key(job)
        assert classify(key) == COMPREHENSIVE
        parsed = parse_comprehensive(key)
        assert (parsed.network, parsed.gpu_count) == (job.network, len(job.gpu))


@pytest.mark.parametrize(
    "bad",
    [
        {"network": ""},
        {"success": "yes"},
        {"time_lapsed": -1},
        {"time_lapsed": float("nan")},
        {"time_lapsed": True},
        {"gpu": "NVIDIA A100"},
    ],
)
def test_job_refuses_bad_telemetry(bad: dict) -> None:
    fields = {"network": "n", "action": "a", "version": "v", "success": True}
    with pytest.raises(ValueError, match="job "):
        Job(**{**fields, **bad})


def test_job_from_a_telemetry_payload() -> None:
    payload = {"network": "n", "action": "a", "version": "1.0", "gpu": ["X"]}
    job = Job.from_mapping({**payload, "extra": 1})
    assert job == Job("n", "a", "1.0", False, gpu=("X",))


def test_gaps_in_a_payload_are_filled_as_the_services_fill_them() -> None:
    job = Job.from_mapping({"success": True})
    increments = counter_increments([job])
    assert increments["gpu_unknown_action_unknown"] == 1
    key = "network_unknown_action_unknown_version_unknown_status_pass_gpu_1_UNKNOWN_1"
    assert increments[key] == 1
    assert increments['tao_job_gpu_total{tao_gpu_type="unknown"}'] == 1


# Recording


def test_upsert_into_an_empty_database(store: MetricsStore, collection) -> None:
    assert collection.count_documents({}) == 0
    after = record_job(store, EXAMPLE, NOW)
    assert collection.count_documents({}) == 1
    assert after["name"] == "metrics"
    assert after[job_key("tao_job_total")] == 1


def test_second_job_adds_and_keeps_other_keys(store: MetricsStore, collection) -> None:
    collection.insert_one({"name": "metrics", "unrelated": "kept", "other_total": 7})
    record_job(store, EXAMPLE, NOW)
    after = record_job(store, EXAMPLE, NOW + timedelta(minutes=1))
    assert after["unrelated"] == "kept"
    assert after["other_total"] == 7
    assert after[job_key("tao_job_gpu_time_sum")] == 14400
    assert after["gpu_nvidia_a100_action_train"] == 4
    assert after["time_lapsed_today"] == 7200
    assert after["last_updated"] == "2026-05-17T12:31:00+00:00"


YESTERDAY = NOW - timedelta(days=1)
NAIVE_NOW = NOW.replace(tzinfo=None)


@pytest.mark.parametrize(
    ("last_updated", "now", "expected"),
    [
        (YESTERDAY.isoformat(), NOW, 3600),
        (YESTERDAY.replace(tzinfo=None), NOW, 3600),
        (NOW.replace(hour=0).isoformat(), NOW, 3600 + 500),
        (NOW.replace(hour=0, tzinfo=None), NOW, 3600 + 500),
        (NAIVE_NOW.replace(hour=1).isoformat(), NAIVE_NOW, 3600 + 500),
        (YESTERDAY.replace(tzinfo=None).isoformat(), NAIVE_NOW, 3600),
        # The same day of another month is another day.
        ("2026-04-17T12:00:00", NOW, 3600),
        ("not a date", NOW, 3600),
        (12345, NOW, 3600),
        (None, NOW, 3600 + 500),
    ],
)
def test_time_lapsed_today_restarts_on_a_new_day(
    store: MetricsStore, collection, last_updated, now, expected
) -> None:
    seed = {"name": "metrics", "time_lapsed_today": 500, "last_updated": last_updated}
    collection.insert_one(seed)
    after = record_job(store, EXAMPLE, now)
    assert after["time_lapsed_today"] == expected
    assert after["last_updated"] == now.isoformat()
    local = apply_locally(
        {k: v for k, v in seed.items() if k != "name"}, [EXAMPLE], now
    )
    assert local["time_lapsed_today"] == expected


def test_time_adds_up_when_last_updated_is_missing(
    store: MetricsStore, collection
) -> None:
    collection.insert_one({"name": "metrics", "time_lapsed_today": 500})
    after = record_job(store, EXAMPLE, NOW)
    assert after["time_lapsed_today"] == 4100


def test_keys_with_dots_and_dollars_are_stored_verbatim(
    store: MetricsStore, collection
) -> None:
    dotted = format_key("tao_job_total", {"tao_version": "5.3.0", "x": "$cost"})
    increments = {dotted: 1, "$top": 2, "a.b.c": 3}
    for _ in range(2):
        store.apply(record_pipeline(increments, 10, NOW), "test")
    raw = collection.find_one({"name": "metrics"})
    assert raw is not None
    assert (raw[dotted], raw["$top"], raw["a.b.c"]) == (2, 4, 6)
    assert "a" not in raw
    after = record_job(store, EXAMPLE, NOW)
    assert (after[dotted], after["$top"], after["a.b.c"]) == (2, 4, 6)


def test_many_jobs_in_one_update_equal_one_by_one(mongo_uri, mongo_client) -> None:
    jobs = list(sample_jobs(25, seed=11))
    documents = []
    for name in ("batch", "single"):
        location = Location(db=f"test_labeled_{name}_{uuid.uuid4().hex[:8]}")
        try:
            with MetricsStore(mongo_uri, location) as store:
                if name == "batch":
                    record_jobs(store, jobs, NOW)
                else:
                    for job in jobs:
                        record_job(store, job, NOW)
                document = store.read()
        finally:
            mongo_client.drop_database(location.db)
        assert document is not None
        document.pop("_id")
        documents.append(document)
    assert documents[0] == documents[1]
    expected = apply_locally({"name": "metrics"}, jobs, NOW)
    assert documents[0] == expected


def test_large_batches_are_split_and_still_add_up(store: MetricsStore) -> None:
    jobs = list(sample_jobs(80, seed=2))
    record_jobs(store, jobs, NOW, max_keys=40)
    assert stored(store) == apply_locally({"name": "metrics"}, jobs, NOW)


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
jobs = st.builds(
    Job,
    network=names,
    action=names,
    version=names,
    success=st.booleans(),
    user_error=st.booleans(),
    time_lapsed=st.one_of(
        st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
    ),
    gpu=st.lists(st.sampled_from(GPU_EXAMPLES) | names, max_size=4).map(tuple),
    client_type=names,
    automl_triggered=st.booleans(),
)
stored_times = st.one_of(
    st.none(),
    st.datetimes(datetime(2026, 5, 15), datetime(2026, 5, 19)),
    st.datetimes(datetime(2026, 5, 15), datetime(2026, 5, 19)).map(datetime.isoformat),
    st.text(max_size=12),
)
nows = st.datetimes(
    datetime(2026, 5, 16),
    datetime(2026, 5, 18),
    timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=5))]),
)


@given(st.lists(jobs, min_size=1, max_size=3), stored_times, nows)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_the_server_stores_what_the_model_computes(
    store: MetricsStore, collection, batch, last_updated, now
) -> None:
    collection.delete_many({})
    seed = {"time_lapsed_today": 7}
    if last_updated is not None:
        seed["last_updated"] = last_updated
    collection.insert_one({"name": "metrics", **seed})
    after = record_jobs(store, batch, now)
    after.pop("_id")
    assert after == apply_locally({"name": "metrics", **seed}, batch, now)


def _record_in_a_process(uri: str, db: str, jobs: list[Job], start) -> None:
    start.wait(30)
    with MetricsStore(uri, Location(db=db)) as store:
        for job in jobs:
            record_job(store, job)


def test_fifty_jobs_from_five_processes_count_fifty(
    mongo_uri: str, location: Location, store: MetricsStore
) -> None:
    job = Job(
        "visual_changenet",
        "train",
        "5.5.0",
        True,
        time_lapsed=10,
        gpu=("NVIDIA L40S", "Jetson AGX Orin"),
    )
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [
        context.Process(
            target=_record_in_a_process,
            args=(mongo_uri, location.db, [job] * 10, start),
        )
        for _ in range(5)
    ]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0] * 5
    document = stored(store)
    touched = counter_increments([job])
    assert len(touched) == 11
    for key, increment in touched.items():
        assert document[key] == 50 * increment, key
    assert document["time_lapsed_today"] == 500


# Sample jobs


def test_sample_jobs_are_deterministic_and_varied() -> None:
    first = list(sample_jobs(300, seed=5))
    assert first == list(sample_jobs(300, seed=5))
    assert first != list(sample_jobs(300, seed=6))
    assert len({job.network for job in first}) > 10
    assert len({job.action for job in first}) > 5
    assert len({len(job.gpu) for job in first}) >= 4
    assert any(len(set(job.gpu)) > 1 for job in first)
    assert any(not job.success for job in first)
    assert {job.version for job in first} >= {"5.3.0", "5.5.0"}


# The command line


RECORD = [
    "record",
    "--network",
    "resnet50",
    "--action",
    "train",
    "--version",
    "5.3.0",
    "--gpu",
    "NVIDIA A100",
    "--gpu",
    "NVIDIA A100",
    "--time-lapsed",
    "3600",
]


def test_cli_dry_run_needs_no_database() -> None:
    unreachable = ["--uri", "mongodb://127.0.0.1:9", "--timeout", "0.5"]
    result = run_script("labeled.py", *RECORD, "--success", "--dry-run", *unreachable)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dry run: nothing written")
    lines = result.stdout.splitlines()
    assert f"{'+1':>12}  {job_key('tao_job_total')}" in lines
    assert f"{'+7200':>12}  {job_key('tao_job_gpu_time_sum')}" in lines
    assert f"{'+2':>12}  gpu_nvidia_a100_action_train" in lines


def test_cli_records_a_job(connection_args, store: MetricsStore) -> None:
    result = run_script("labeled.py", *RECORD, "--success", *connection_args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("recorded the job")
    run_script("labeled.py", *RECORD, "--success", *connection_args)
    document = stored(store)
    assert document[job_key("tao_job_total")] == 2
    assert document["time_lapsed_today"] == 7200
    failed = run_script("labeled.py", *RECORD, "--fail", *connection_args)
    lines = failed.stdout.splitlines()
    assert f"{'+1':>12} {1:>12}  total_action_train_fail" in lines
    assert f"{'+1':>12} {3:>12}  network_resnet50_action_train" in lines
    assert f"{'+3600':>12} {10800:>12}  time_lapsed_today" in lines


def test_cli_json_output(connection_args, store: MetricsStore) -> None:
    args = [*RECORD, "--fail", "--user-error", "--client-type", "api", "--json"]
    result = run_script("labeled.py", *args, *connection_args)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    key = job_key(
        "tao_job_total", tao_status="fail", tao_user_error="true", tao_client_type="api"
    )
    assert body["dry_run"] is False
    assert body["increments"][key] == 1
    assert body["values"][key] == 1
    assert body["values"]["total_action_train_fail"] == 1
    assert stored(store)[key] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time-lapsed", "-5"], "error: --time-lapsed: must be a finite number >= 0"),
        (["--time-lapsed", "soon"], "error: --time-lapsed: not a number: 'soon'"),
        (["--network", ""], "error: job network must be a non-empty string"),
    ],
)
def test_cli_bad_input_is_one_line_and_status_1(args, message, capsys) -> None:
    status = cli_support.run(labeled.main, [*RECORD, *args, "--success", "--dry-run"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.splitlines() == [err.strip()]
    assert err.startswith(message)


def test_cli_unreachable_server_is_one_line() -> None:
    env = {"MONGODB_URI": "mongodb://user:s3cret@127.0.0.1:9"}
    args = [*RECORD, "--success", "--timeout", "0.5"]
    result = run_script("labeled.py", *args, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "cannot reach MongoDB" in result.stderr
    assert "s3cret" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_help_and_version() -> None:
    helped = run_script("labeled.py", "record", "--help")
    assert helped.returncode == 0
    for name in ("MONGODB_URI", "MONGODB_DB", "MONGODB_TIMEOUT", "--dry-run"):
        assert name in helped.stdout
    top = run_script("labeled.py", "--help")
    for name in ("LOG_LEVEL", "MONGODB_URI", "MONGODB_DOCUMENT_NAME", "sample"):
        assert name in top.stdout
    version = run_script("labeled.py", "--version")
    assert version.returncode == 0
    assert version.stdout.startswith("labeled.py ")


def test_cli_sample_records_the_seeded_jobs(
    connection_args, store: MetricsStore
) -> None:
    dry = run_script("labeled.py", "sample", "--jobs", "60", "--seed", "4", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    expected = apply_locally({"name": "metrics"}, sample_jobs(60, seed=4), NOW)
    keys = len(expected) - 1
    assert dry.stdout.strip() == (
        f"dry run: 60 sample jobs (seed 4) would change {keys} keys"
    )
    args = ["sample", "--jobs", "60", "--seed", "4", "--json", *connection_args]
    result = run_script("labeled.py", *args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["document_keys"] == keys + 2
    document = stored(store)
    expected["last_updated"] = document["last_updated"]
    assert document == expected


def test_cli_sample_refuses_zero_jobs(capsys) -> None:
    status = cli_support.run(labeled.main, ["sample", "--jobs", "0", "--dry-run"])
    assert status == 1
    assert capsys.readouterr().err == "error: --jobs: must be at least 1: '0'\n"
