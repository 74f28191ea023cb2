"""Read and write metrics backup files.

A backup file holds the metrics document as MongoDB Extended JSON: plain JSON
for ordinary numbers and strings, and the Extended JSON form only for values
plain JSON would change (dates, ObjectIds, 64-bit integers, decimals,
non-finite doubles), so a document read back has every value and type it had.
Beside it, ``FILE.sha256`` holds its checksum in ``sha256sum`` format.

Besides its own files the reader accepts plain JSON, ``mongoexport`` output
holding one document, the legacy shell's ``printjson`` output and any of them
gzip-compressed.
"""

from __future__ import annotations

import decimal
import gzip
import hashlib
import json
import math
import operator
import os
import re
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson import json_util
from bson.int64 import Int64

STDIO = "-"
_RELAXED = json_util.JSONOptions(json_mode=json_util.JSONMode.RELAXED, tz_aware=False)
GZIP_MAGIC = b"\x1f\x8b"
# Extended JSON's spelling of the doubles plain JSON cannot hold.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


class FileError(Exception):
    """A backup file that cannot be read or written, said in one line."""


@dataclass(frozen=True)
class WrittenFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LoadedFile:
    document: dict[str, Any]
    size: int
    sha256: str
    source_format: str


# Writing


def _exact(value: Any) -> Any:
    """Replace what plain JSON would change with its Extended JSON form."""
    if isinstance(value, Int64):
        return {"$numberLong": str(int(value))}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$numberDouble": _NON_FINITE[str(value)]}
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact(item) for item in value]
    return value


def dumps_document(document: dict[str, Any], pretty: bool = False) -> str:
    """Serialise a document as this format's Extended JSON, ending in a newline."""
    text = json.dumps(
        _exact(document),
        default=lambda value: json_util.default(value, _RELAXED),
        indent=2 if pretty else None,
        ensure_ascii=False,
        allow_nan=False,
    )
    return text + "\n"


def write_document(
    path: str, document: dict[str, Any], pretty: bool = False, overwrite: bool = False
) -> WrittenFile:
    """Write a backup file atomically with mode 0600, plus its .sha256 beside it.

    ``-`` writes to standard output.  A name ending in ``.gz`` is compressed.
    An existing file is kept, and the write refused, unless overwrite is set.
    """
    data = dumps_document(document, pretty).encode("utf-8", "surrogatepass")
    if path == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return WrittenFile(path, len(data), hashlib.sha256(data).hexdigest())
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    digest = hashlib.sha256(data).hexdigest()
    checksum = f"{digest}  {Path(path).name}\n".encode()
    checksum_path = path + ".sha256"
    if not overwrite:
        for existing in (path, checksum_path):
            if os.path.lexists(existing):
                raise FileError(
                    f"{existing} already exists; choose another name or pass "
                    "--overwrite"
                )
    write_files_atomically({path: data, checksum_path: checksum}, overwrite)
    return WrittenFile(path, len(data), digest)


def atomic_write(path: str, data: bytes, overwrite: bool) -> None:
    """Write data to a temporary file beside path, fsync it, then move it there."""
    write_files_atomically({path: data}, overwrite)


def write_files_atomically(files: dict[str, bytes], overwrite: bool) -> None:
    """Write each file in full to a temporary one first, then move them all in place.

    Writing, where a full disk or a size limit strikes, happens before any
    file is moved, so a failure leaves none of them behind.
    """
    staged: dict[str, str] = {}
    placed: list[str] = []
    try:
        for path, data in files.items():
            staged[path] = _stage(path, data)
        for path, temporary in staged.items():
            if overwrite:
                os.replace(temporary, path)
            else:
                os.link(temporary, path)
                os.unlink(temporary)
            placed.append(path)
        for folder in {os.path.dirname(os.path.abspath(p)) for p in files}:
            _fsync_folder(folder)
    except BaseException as exc:
        for temporary in staged.values():
            _remove(temporary)
        if not overwrite:
            for path in placed:
                _remove(path)
        if isinstance(exc, FileExistsError):
            raise FileError(
                f"{exc.filename2 or exc.filename} already exists; pass --overwrite "
                "to replace it"
            ) from None
        if isinstance(exc, OSError):
            raise FileError(
                f"cannot write {exc.filename or next(iter(files))}: "
                f"{exc.strerror or exc}"
            ) from None
        raise


def _stage(path: str, data: bytes) -> str:
    """Write data to a new temporary file beside path, mode 0600; return its name."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder
        )
    except OSError as exc:
        raise FileError(f"cannot write in {folder}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            os.fchmod(stream.fileno(), 0o600)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as exc:
        _remove(temporary)
        raise FileError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(temporary)
        raise
    return temporary


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# Reading


def read_document(path: str) -> LoadedFile:
    """Read one metrics document from a backup file, or raise FileError."""
    data = _read_bytes(path)
    # The size and checksum are those of the file as stored, compressed or not.
    size = len(data)
    digest = hashlib.sha256(data).hexdigest()
    if path != STDIO:
        _check_checksum(path, digest)
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(path, data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start})"
        ) from None
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise FileError(f"{path} is empty")
    document, source_format = parse_text(text, path)
    return LoadedFile(document, size, digest, source_format)


def _read_bytes(path: str) -> bytes:
    if path == STDIO:
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise FileError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise FileError(f"{path} is a directory, not a backup file") from None
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror}") from None


def _check_checksum(path: str, digest: str) -> None:
    checksum_path = path + ".sha256"
    try:
        with open(checksum_path, encoding="utf-8", errors="replace") as stream:
            recorded = stream.read().split()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise FileError(f"cannot read {checksum_path}: {exc.strerror}") from None
    if not recorded or not re.fullmatch(r"[0-9a-fA-F]{64}", recorded[0]):
        raise FileError(f"{checksum_path} does not hold a sha256 checksum")
    if recorded[0].lower() != digest:
        raise FileError(
            f"checksum mismatch: {path} does not match {checksum_path} "
            "(the file was changed or cut short in transfer; copy it again)"
        )


def _gunzip(path: str, data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise FileError(f"{path} is a damaged or truncated gzip file ({exc})") from None


def parse_text(text: str, path: str = "input") -> tuple[dict[str, Any], str]:
    """Parse any accepted format; return the document and the format's name."""
    stripped = text.strip()
    try:
        return _loads_one(stripped), "json"
    except _JsonProblem as first:
        problem = first
    if _SHELL_CALL.search(stripped) or not stripped.startswith("{"):
        shell_text = _from_shell(stripped)
        if shell_text is not None:
            try:
                return _loads_one(shell_text), "mongo shell"
            except _JsonProblem as shell_problem:
                problem = shell_problem
    lines = [line for line in stripped.splitlines() if line.strip()]
    if len(lines) > 1 and problem.extra_data:
        documents = []
        for line in lines:
            try:
                documents.append(_loads_one(line))
            except _JsonProblem:
                break
        else:
            raise FileError(
                f"{path} holds {len(documents)} documents, one per line; a backup "
                "holds exactly one (export the metrics document alone)"
            )
    raise FileError(f"{path}: {problem}")


class _JsonProblem(Exception):
    def __init__(self, message: str, extra_data: bool = False) -> None:
        super().__init__(message)
        self.extra_data = extra_data


def _object_pairs(pairs: list[tuple[str, Any]]) -> Any:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen = set()
        duplicates = []
        for key, _ in pairs:
            if key in seen:
                duplicates.append(key)
            seen.add(key)
        shown = ", ".join(repr(key) for key in duplicates[:5])
        raise _JsonProblem(f"duplicate keys: {shown}")
    # Only an object with a $-key can be Extended JSON; skip the slow hook else.
    if not any(map(_STARTS_WITH_DOLLAR, document)):
        return document
    try:
        return json_util.object_pairs_hook(pairs, _RELAXED)
    # The Extended JSON decoder raises many types (KeyError, InvalidId,
    # decimal.InvalidOperation...) for malformed values: each is a bad file.
    except Exception as exc:
        detail = str(exc).split(" (")[0]
        if isinstance(exc, decimal.InvalidOperation):
            detail = "not a decimal number"
        shown = json.dumps(dict(pairs), default=repr)[:80]
        raise _JsonProblem(f"invalid Extended JSON value {shown}: {detail}") from None


_STARTS_WITH_DOLLAR = operator.methodcaller("startswith", "$")


def _reject_constant(name: str) -> Any:
    raise _JsonProblem(f"{name} is not valid JSON; write a finite number")


def _loads_one(text: str) -> dict[str, Any]:
    try:
        value = json.loads(
            text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise _JsonProblem(
                f"more than one JSON value (extra data at line {exc.lineno})",
                extra_data=True,
            ) from None
        # A string left open runs to the end of the text: that is truncation too.
        if exc.pos >= len(text.rstrip()) - 1 or exc.msg.startswith("Unterminated"):
            raise _JsonProblem(
                f"invalid JSON: the text ends early at line {exc.lineno} "
                "(the file looks truncated)"
            ) from None
        raise _JsonProblem(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise _JsonProblem("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        # Python refuses to convert integers of thousands of digits.
        raise _JsonProblem(f"invalid JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(value, dict):
        raise _JsonProblem(
            f"the top level is a {type(value).__name__}, not one document"
        )
    return value


# The legacy mongo shell's printjson output.

_SHELL_CALL = re.compile(
    r"\b(?:new\s+)?(ObjectId|ISODate|NumberLong|NumberInt|NumberDecimal|Timestamp"
    r"|Date)\s*\("
)
_ARG = r"\s*(?:\"([^\"]*)\"|'([^']*)'|(-?[0-9][0-9.eE+-]*))\s*"


def _from_shell(text: str) -> str | None:
    """Rewrite legacy shell output as Extended JSON, or None if it is not that."""
    start = text.find("\n{")
    if not text.startswith("{"):
        if start < 0:
            return None
        text = text[start + 1 :]
    out = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char == '"':
            end = _string_end(text, pos)
            out.append(text[pos:end])
            pos = end
            continue
        match = _SHELL_CALL.match(text, pos)
        if match and (
            pos == 0 or not (text[pos - 1].isalnum() or text[pos - 1] == "_")
        ):
            converted, pos = _convert_call(text, match)
            if converted is None:
                return None
            out.append(converted)
            continue
        out.append(char)
        pos += 1
    return "".join(out)


def _string_end(text: str, pos: int) -> int:
    pos += 1
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == '"':
            return pos + 1
        pos += 1
    return pos


def _convert_call(text: str, match: re.Match[str]) -> tuple[str | None, int]:
    kind = match.group(1)
    args = []
    pos = match.end()
    while True:
        arg = re.compile(_ARG).match(text, pos)
        if not arg:
            break
        args.append(next(group for group in arg.groups() if group is not None))
        pos = arg.end()
        if text.startswith(",", pos):
            pos += 1
            continue
        break
    close = re.compile(r"\s*\)").match(text, pos)
    if not close:
        return None, pos
    pos = close.end()
    try:
        return _shell_value(kind, args), pos
    except (IndexError, ValueError):
        return None, pos


def _shell_value(kind: str, args: list[str]) -> str:
    if kind == "ObjectId":
        return json.dumps({"$oid": args[0]})
    if kind in ("ISODate", "Date"):
        return json.dumps({"$date": args[0]})
    if kind == "NumberLong":
        return json.dumps({"$numberLong": str(int(args[0]))})
    if kind == "NumberInt":
        return str(int(args[0]))
    if kind == "NumberDecimal":
        return json.dumps({"$numberDecimal": args[0]})
    return json.dumps({"$timestamp": {"t": int(args[0]), "i": int(args[1])}})
