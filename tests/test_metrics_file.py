"""The backup file format: exact round trips, accepted formats, refused files."""

from __future__ import annotations

import datetime
import gzip
import json
import stat
import subprocess
from pathlib import Path

import bson
import pytest
from bson import json_util
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from hypothesis import given, settings
from hypothesis import strategies as st

import metrics_file
from metrics_file import FileError, dumps_document, parse_text, read_document
from tests.helpers import assert_identical, rich_document, stored_rich_document

# Every value type a metrics document holds, edge values included.
values = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(-(10**30), 10**30, allow_nan=False, allow_infinity=False, places=3).map(
        lambda number: Decimal128(str(number))
    ),
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        max_value=datetime.datetime(2200, 1, 1),
    ).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000)),
    st.text(max_size=10),
)
keys = st.text(min_size=1, max_size=30).filter(
    lambda key: "\x00" not in key and not key.startswith("$")
)
documents = st.dictionaries(keys, values, max_size=12)


def bson_document(document: dict) -> dict:
    """Return the document as the server hands it back."""
    return bson.decode(bson.encode(document))


@settings(max_examples=80, deadline=None)
@given(documents, st.booleans())
def test_any_document_survives_a_round_trip(document: dict, pretty: bool) -> None:
    stored = bson_document(document)
    parsed, source_format = parse_text(dumps_document(stored, pretty))
    assert source_format == "json"
    assert bson.encode(parsed) == bson.encode(stored)


def test_rich_document_keeps_every_value_and_type() -> None:
    stored = stored_rich_document()
    parsed, _ = parse_text(dumps_document(stored, pretty=True))
    assert_identical(parsed, stored)
    assert parsed["_id"] == stored["_id"]


def test_ordinary_values_are_plain_json() -> None:
    text = dumps_document(bson_document(rich_document()))
    plain = json.loads(text)
    assert plain["total_action_train_pass"] == 7
    assert plain["time_lapsed_today"] == 3600.25
    assert plain["version_5_3_0_action_train"] == -(2**31)
    # Only what plain JSON would change is wrapped.
    assert plain["total_action_evaluate_fail"] == {"$numberLong": "3"}
    assert plain["network_resnet50_action_train"] == {"$numberLong": str(2**40 + 1)}
    assert plain["last_updated"] == {"$date": "2024-05-06T07:08:09.123Z"}
    assert "$numberInt" not in text and "$numberDouble" not in text


def test_non_finite_doubles_use_extended_json_names() -> None:
    document = {"a": float("nan"), "b": float("inf"), "c": float("-inf")}
    text = dumps_document(document)
    assert json.loads(text) == {
        "a": {"$numberDouble": "NaN"},
        "b": {"$numberDouble": "Infinity"},
        "c": {"$numberDouble": "-Infinity"},
    }
    parsed, _ = parse_text(text)
    assert bson.encode(parsed) == bson.encode(document)


def test_folder_that_cannot_be_written_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="cannot write in"):
        metrics_file.write_document(str(tmp_path / "no" / "backup.json"), {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_integral_double_stays_a_double() -> None:
    parsed, _ = parse_text(dumps_document({"a": 5.0, "b": 5}))
    assert type(parsed["a"]) is float and type(parsed["b"]) is int


def test_written_file_is_private_checksummed_and_not_overwritten(
    tmp_path: Path,
) -> None:
    path = tmp_path / "backup.json"
    written = metrics_file.write_document(str(path), rich_document())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert written.size == path.stat().st_size
    checked = subprocess.run(
        ["sha256sum", "-c", "backup.json.sha256"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    before = path.read_bytes()
    with pytest.raises(FileError, match=r"already exists.*--overwrite"):
        metrics_file.write_document(str(path), {"a": 1})
    assert path.read_bytes() == before
    metrics_file.write_document(str(path), {"a": 1}, overwrite=True)
    assert read_document(str(path)).document == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "backup.json",
        "backup.json.sha256",
    ]


def test_gzip_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "backup.json.gz"
    metrics_file.write_document(str(path), rich_document())
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert json.loads(gzip.decompress(raw))["total_action_train_pass"] == 7
    assert_identical(read_document(str(path)).document, rich_document())


def test_changed_file_fails_its_checksum(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    metrics_file.write_document(str(path), {"a": 1})
    path.write_text('{"a": 2}\n')
    with pytest.raises(FileError, match="checksum mismatch"):
        read_document(str(path))


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "backup.json.gz"
    path.write_bytes(gzip.compress(dumps_document(rich_document()).encode())[:-20])
    with pytest.raises(FileError, match="damaged or truncated gzip"):
        read_document(str(path))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("  \n\n", "is empty"),
        (b"\xff\xfe{", "not UTF-8"),
    ],
)
def test_unreadable_files(tmp_path: Path, content, problem: str) -> None:
    path = tmp_path / "backup.json"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(FileError, match=problem):
        read_document(str(path))


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="is a directory"):
        read_document(str(tmp_path))


def mongoexport_line(document: dict, options: json_util.JSONOptions) -> str:
    return json_util.dumps(document, json_options=options, separators=(",", ":"))


def test_reads_canonical_mongoexport_output() -> None:
    stored = stored_rich_document()
    line = mongoexport_line(stored, json_util.CANONICAL_JSON_OPTIONS)
    assert '"$numberInt"' in line and '"$oid"' in line
    parsed, _ = parse_text(line + "\n")
    assert_identical(parsed, stored)


def test_reads_relaxed_mongoexport_output() -> None:
    stored = {
        "_id": bson.ObjectId(),
        "name": "metrics",
        "total_action_train_pass": 4,
        "last_updated": datetime.datetime(2024, 1, 2, 3, 4, 5),
    }
    line = mongoexport_line(stored, json_util.RELAXED_JSON_OPTIONS)
    # mongoexport spells 64-bit counters this way in its relaxed mode too.
    line = line.replace('"total_action_train_pass":4', '"big":{"$numberLong":"9"}')
    parsed, _ = parse_text(line)
    assert parsed["_id"] == stored["_id"]
    assert parsed["big"] == 9 and type(parsed["big"]) is Int64
    assert parsed["last_updated"] == stored["last_updated"]


SHELL_OUTPUT = """\
MongoDB shell version v4.4.29
connecting to: mongodb://127.0.0.1:27017/tao?compressors=disabled&gssapiServiceName=mongodb
Implicit session: session { "id" : UUID("0b2c6a51-6d1c-4bb4-9a3e-6a7d0e2f6c11") }
MongoDB server version: 4.4.29
{
	"_id" : ObjectId("65a1b2c3d4e5f60718293a4b"),
	"name" : "metrics",
	"total_action_train_pass" : 12,
	"total_action_export_pass" : NumberLong(3),
	"network_resnet50_action_train" : NumberLong("1099511627777"),
	"total_action_evaluate_fail" : NumberInt(2),
	"time_lapsed_today" : 12.5,
	"tao_job_total{tao_action=\\"train\\"}" : 4,
	"note_ISODate(x)" : 1,
	"last_updated" : ISODate("2024-03-04T05:06:07.890Z")
}
"""


def test_reads_legacy_shell_printjson_output() -> None:
    parsed, source_format = parse_text(SHELL_OUTPUT)
    assert source_format == "mongo shell"
    assert parsed["_id"] == bson.ObjectId("65a1b2c3d4e5f60718293a4b")
    assert parsed["total_action_export_pass"] == 3
    assert type(parsed["total_action_export_pass"]) is Int64
    assert parsed["network_resnet50_action_train"] == Int64(1099511627777)
    assert type(parsed["total_action_evaluate_fail"]) is int
    assert parsed['tao_job_total{tao_action="train"}'] == 4
    assert parsed["note_ISODate(x)"] == 1
    assert parsed["last_updated"] == datetime.datetime(2024, 3, 4, 5, 6, 7, 890000)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": 1,, "b": 2}', "invalid JSON at line 1"),
        ('{\n"a": 1,\n"b": 2', "looks truncated"),
        ('[{"a": 1}]', "top level is a list, not one document"),
        ('{"a": 1}\n{"a": 2}\n', "holds 2 documents"),
        ('{"a": 1}{"a": 2}', "more than one JSON value"),
        ('{"a": 1, "b": 2, "a": 3}', "duplicate keys: 'a'"),
        ('{"a": NaN}', "NaN is not valid JSON"),
        ('{"a": Infinity}', "Infinity is not valid JSON"),
        ('{"a": {"$numberLong": "x"}}', "invalid Extended JSON value"),
        ("12", "top level is a int"),
        ("hello", "invalid JSON"),
    ],
)
def test_refused_text_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(FileError, match=problem.replace("(", r"\(")) as raised:
        parse_text(text, "backup.json")
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("backup.json")


def test_non_finite_extended_json_is_parsed_for_validation() -> None:
    parsed, _ = parse_text('{"a": {"$numberDouble": "NaN"}}')
    assert parsed["a"] != parsed["a"]


def test_stdout_output_writes_no_file(
    tmp_path: Path, capsysbinary, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    written = metrics_file.write_document("-", {"a": Int64(1)})
    out = capsysbinary.readouterr().out
    assert out == b'{"a": {"$numberLong": "1"}}\n'
    assert written.size == len(out)
    assert list(tmp_path.iterdir()) == []


def test_any_bson_value_survives_a_round_trip() -> None:
    document = bson_document(
        {
            "nested": {"count": Int64(1), "list": [Int64(2), 1.5, None, True]},
            "binary": bson.Binary(b"\x00\x01", 0),
            "timestamp": bson.Timestamp(1700000000, 3),
            "pattern": bson.Regex("^tao", "i"),
            "id": bson.ObjectId(),
            "huge_date": datetime.datetime(9999, 12, 31, 23, 59, 59),
            "old_date": datetime.datetime(1901, 1, 1),
            "minimum": bson.MinKey(),
        }
    )
    parsed, _ = parse_text(dumps_document(document))
    assert bson.encode(parsed) == bson.encode(document)
