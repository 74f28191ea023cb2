"""Hostile input: fuzzed files and keys, keys MongoDB treats specially, size limits.

The file reader, the key grammar and the import check either return a valid
result or raise their module's one error type; the scripts either import
exactly what is valid or exit 1 with one line, never a traceback, never a
partial write.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile

import bson
import pytest
from bson import json_util
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analysis
import import_plan
import metric_keys
import metrics_file
from import_plan import InvalidInput
from metrics_file import FileError
from mongo_store import MAX_DOCUMENT_BYTES
from tests.conftest import run_script

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

ODD_CHARACTERS = [
    "\x00",
    "\ud800",
    "\udfff",
    "\u202e",
    "\u200f",
    "\ufeff",
    "\U0001f600",
    "\n",
    "$",
    ".",
    "{",
    "}",
    '"',
    "\\",
    "=",
    ",",
    "_",
]
EXTENDED_JSON_KEYS = [
    "$date",
    "$oid",
    "$numberLong",
    "$numberInt",
    "$numberDouble",
    "$numberDecimal",
    "$binary",
    "$base64",
    "$subType",
    "$regex",
    "$regularExpression",
    "$options",
    "$timestamp",
    "$minKey",
    "$maxKey",
    "$code",
    "$scope",
    "$uuid",
    "$symbol",
    "$dbPointer",
    "$ref",
    "$id",
    "$undefined",
]
SPECIAL_KEYS = [
    *EXTENDED_JSON_KEYS,
    "",
    "$",
    "$inc",
    "a.b",
    ".",
    "_id",
    "name",
    "last_updated",
    "time_lapsed_today",
    "total_action_train_pass",
    'tao_job_total{tao_action="train"}',
    'tao_job_total{tao_action="tr\\"ain"}',
    "tao_job_total{",
    "network_resnet_action_train_version_5_status_pass_gpu_1_A100_1",
]

characters = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from(ODD_CHARACTERS),
)
odd_text = st.text(characters, max_size=24)
keys = st.one_of(odd_text, st.sampled_from(SPECIAL_KEYS))
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)


def extended(children: st.SearchStrategy) -> st.SearchStrategy:
    """Objects shaped like Extended JSON, with arbitrary contents."""
    return st.dictionaries(st.sampled_from(EXTENDED_JSON_KEYS), children, max_size=3)


json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
        extended(children),
    ),
    max_leaves=12,
)
documents = st.dictionaries(
    keys, st.one_of(numbers, json_values, extended(json_values)), max_size=8
)


def canonical(document) -> str:
    return json_util.dumps(document, json_options=json_util.CANONICAL_JSON_OPTIONS)


def check_document(document: dict) -> None:
    """Everything downstream of the reader accepts a parsed document or says no."""
    assert isinstance(document, dict)
    try:
        analysis.analyze(document)
    except InvalidInput as exc:
        assert "cannot be stored in MongoDB" in str(exc)
    try:
        imported = import_plan.validate(document)
    except InvalidInput as exc:
        assert "nothing was written" in str(exc)
        return
    # What passes the check can be stored, planned, analysed and written back.
    for mode in (import_plan.MERGE, import_plan.REPLACE):
        plan = import_plan.plan_import(None, imported, mode)
        assert plan.final_bytes == len(
            bson.encode({"_id": bson.ObjectId(), "name": "metrics", **plan.final})
        )
    analysis.analyze(imported)
    again, _ = metrics_file.parse_text(metrics_file.dumps_document(imported))
    assert canonical(again) == canonical(imported)


@FUZZ
@given(documents, st.booleans())
def test_any_json_document_is_read_or_refused(document: dict, ascii_only: bool):
    read_or_refused(json.dumps(document, ensure_ascii=ascii_only))


@FUZZ
@given(st.text(characters, max_size=200))
def test_any_text_is_read_or_refused(text: str):
    read_or_refused(text)


def read_or_refused(text: str) -> None:
    """Parse text; what is not refused must be a document the import can handle."""
    try:
        parsed, _ = metrics_file.parse_text(text)
    except FileError:
        return
    check_document(parsed)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=300),
        documents.map(lambda d: json.dumps(d).encode()),
    ),
    st.sampled_from(["plain", "gzip", "gzip-cut"]),
)
def test_any_bytes_are_read_or_refused(data: bytes, packing: str):
    if packing != "plain":
        data = gzip.compress(data, mtime=0)
    if packing == "gzip-cut":
        data = data[: len(data) // 2]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzzed.json")
        with open(path, "wb") as stream:
            stream.write(data)
        try:
            loaded = metrics_file.read_document(path)
        except FileError:
            return
    check_document(loaded.document)


@FUZZ
@given(keys)
def test_key_grammar_takes_any_text(key: str):
    assert metric_keys.classify(key) in metric_keys.FAMILIES
    try:
        name, labels = metric_keys.parse_key(key)
    except metric_keys.InvalidKey:
        pass
    else:
        assert metric_keys.format_key(name, labels) == key
    try:
        metric_keys.parse_comprehensive(key)
    except metric_keys.InvalidKey:
        pass
    problem = import_plan.key_problem(key)
    if problem is None:
        bson.encode({key: 1})


@FUZZ
@given(odd_text, st.dictionaries(odd_text, odd_text, max_size=3))
def test_format_key_takes_any_parts(name: str, labels: dict[str, str]):
    try:
        key = metric_keys.format_key(name, labels)
    except metric_keys.InvalidKey:
        return
    assert metric_keys.parse_key(key) == (name, labels)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 100_000, "nested too deeply"),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
        ('{"a": ' + "9" * 5000 + "}", "4300 digits"),
        ('{"a": NaN}', "NaN is not valid JSON"),
        ('{"a": -Infinity}', "-Infinity is not valid JSON"),
        ('{"a": {"$oid": "zz"}}', "not a valid ObjectId"),
        ('{"a": {"$numberDecimal": "ten"}}', "not a decimal number"),
        ('{"a": {"$date": {"$numberLong": "99999999999999999999"}}}', "$date"),
        ('{"a": 1, "a": 2}', "duplicate keys"),
        ("\x00" * 10, "invalid JSON"),
    ],
)
def test_hostile_text_gets_a_file_error(text: str, words: str):
    with pytest.raises(FileError) as caught:
        metrics_file.parse_text(text)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"a": 1e400}, "not finite"),
        ({"a": 2**63}, "beyond 64 bits"),
        ({"": 1}, "empty key"),
        ({"a\x00b": 1}, "NUL"),
        ({"\ud800": 1}, "lone surrogate"),
        ({"a": "12"}, "not a number"),
        ({"a": True}, "not a number"),
        ({"a": None}, "not a number"),
        ({"last_updated": "yesterday"}, "ISO-8601"),
        ({"tao_job_total{tao_action=train}": 1}, "broken labels"),
    ],
)
def test_invalid_entries_are_named(document: dict, words: str):
    with pytest.raises(InvalidInput) as caught:
        import_plan.validate({"total_action_train_pass": 3, **document})
    assert words in str(caught.value)
    assert "1 invalid entry" in str(caught.value)


# The scripts, run as an operator would, on nasty files.


def assert_one_line_failure(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


NASTY_FILES = {
    "mixed-valid-and-invalid": (
        '{"total_action_train_pass": 4, "ok_key": 2, "bad": "seven", '
        '"": 1, "nul\\u0000key": 1, "lone\\ud800": 1}',
        "4 invalid entries",
    ),
    "binary-garbage": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not UTF-8"),
    "deep-nesting": ('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}", "too deeply"),
    "huge-number": ('{"total_action_train_pass": 1' + "0" * 5000 + "}", "digits"),
}


@pytest.mark.parametrize("name", NASTY_FILES)
def test_import_refuses_nasty_files_without_writing(
    name, connection_args, collection, tmp_path
):
    content, words = NASTY_FILES[name]
    path = tmp_path / "nasty.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    collection.insert_one({"name": "metrics", "total_action_train_pass": 1})

    result = run_script(
        "import_metrics.py",
        *("--input", str(path), "--backup-dir", str(tmp_path)),
        *connection_args,
    )

    assert words in assert_one_line_failure(result)
    stored = collection.find_one({"name": "metrics"}, {"_id": 0})
    assert stored == {"name": "metrics", "total_action_train_pass": 1}
    assert sorted(os.listdir(tmp_path)) == ["nasty.json"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"a\\u0000b": 1, "x": 2}', "cannot be stored in MongoDB"),
        ('{"lone\\ud800": 1}', "cannot be stored in MongoDB"),
        ('{"x": {"$oid": "zz"}}', "not a valid ObjectId"),
    ],
)
def test_analysis_of_a_nasty_file_is_one_line(tmp_path, content, words):
    path = tmp_path / "nasty.json"
    path.write_text(content)
    result = run_script("convert_to_labeled.py", "--analyze", "--input", str(path))
    assert words in assert_one_line_failure(result)


# Keys MongoDB treats specially, and the document size limit.


SPECIAL_METRICS = {
    "$inc": 1,
    "$set": 2,
    "a.b.c": 3,
    ".leading": 4,
    "trailing.": 5,
    "$": 6,
    "long_" + "x" * 2000: 7,
    'tao_job_total{tao_action="a.b",tao_network="$x"}': 8,
    "\u202eright_to_left": 9,
    "total_action_train_pass": 10,
}


def test_keys_mongodb_treats_specially_round_trip(
    connection_args, collection, tmp_path
):
    source = tmp_path / "special.json"
    metrics_file.write_document(str(source), SPECIAL_METRICS)

    imported = run_script(
        "import_metrics.py", "--input", str(source), "--no-backup", *connection_args
    )
    assert imported.returncode == 0, imported.stderr
    stored = collection.find_one({"name": "metrics"}, {"_id": 0, "name": 0})
    assert stored == SPECIAL_METRICS

    exported = tmp_path / "exported.json"
    result = run_script(
        "export_metrics.py", "--output", str(exported), *connection_args
    )
    assert result.returncode == 0, result.stderr
    document = metrics_file.read_document(str(exported)).document
    assert {k: v for k, v in document.items() if k not in ("_id", "name")} == (
        SPECIAL_METRICS
    )


def document_of_size(target: int, keys: int = 16) -> dict:
    """Metrics whose stored document (with _id and name) is exactly target bytes."""
    wrapper = {"_id": bson.ObjectId(), "name": "metrics"}
    metrics = {
        f"k{index:02d}_" + "x" * (target // keys - 64): index
        for index in range(keys - 1)
    }
    metrics["last_updated"] = "2025-01-01T00:00:00"
    short = len(bson.encode({**wrapper, **metrics, "pad_": 1}))
    metrics["pad_" + "y" * (target - short)] = keys
    assert len(bson.encode({**wrapper, **metrics})) == target
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "accepted"),
    [(MAX_DOCUMENT_BYTES - 1, True), (MAX_DOCUMENT_BYTES + 1, False)],
    ids=["limit-minus-one", "limit-plus-one"],
)
def test_document_size_limit(connection_args, collection, tmp_path, size, accepted):
    metrics = document_of_size(size)
    source = tmp_path / "big.json"
    metrics_file.write_document(str(source), metrics)

    result = run_script(
        "import_metrics.py", "--input", str(source), "--no-backup", *connection_args
    )

    if not accepted:
        line = assert_one_line_failure(result)
        assert f"{size:,} bytes" in line and "nothing was written" in line
        assert collection.find_one({"name": "metrics"}) is None
        return
    assert result.returncode == 0, result.stderr
    stored = collection.find_one({"name": "metrics"})
    assert len(bson.encode(stored)) == size
    exported = tmp_path / "exported.json"
    result = run_script(
        "export_metrics.py", "--output", str(exported), *connection_args
    )
    assert result.returncode == 0, result.stderr
    document = metrics_file.read_document(str(exported)).document
    assert canonical(document) == canonical(stored)
