"""The one grammar for metric keys stored in the TAO metrics document.

A key is either flat (``total_action_train_pass``) or labeled, written in the
Prometheus sample syntax with labels sorted by name::

    tao_job_total{tao_action="train",tao_network="resnet50"}

Label values are escaped as the Prometheus text format escapes them, so a
value may hold any character, ``,`` ``}`` and ``"`` included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# \Z, not $: a name must not end in a newline.
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")

BOOKKEEPING_KEYS = frozenset({"_id", "name", "last_updated"})
TIME_KEY = "time_lapsed_today"

LABELED = "labeled"
COMPREHENSIVE = "comprehensive"
LEGACY = "legacy"
TIME = "time"
BOOKKEEPING = "bookkeeping"
OTHER = "other"
FAMILIES = (LABELED, COMPREHENSIVE, LEGACY, TIME, BOOKKEEPING, OTHER)

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n"}
_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class InvalidKey(ValueError):
    """A metric key that does not follow the grammar."""


def escape_label_value(value: str) -> str:
    """Escape a label value as the Prometheus text format does."""
    return "".join(_ESCAPES.get(char, char) for char in value)


def check_metric_name(name: str) -> None:
    """Raise InvalidKey unless name is a valid Prometheus metric name."""
    if not METRIC_NAME_RE.match(name):
        raise InvalidKey(f"invalid metric name {name!r}")


def check_label_name(name: str) -> None:
    """Raise InvalidKey unless name is a valid, non-reserved label name."""
    if not LABEL_NAME_RE.match(name):
        raise InvalidKey(f"invalid label name {name!r}")
    if name.startswith("__"):
        raise InvalidKey(f"label name {name!r} is reserved (starts with __)")


def format_key(name: str, labels: Mapping[str, str]) -> str:
    """Spell a labeled key, labels sorted by name; no labels gives the bare name."""
    check_metric_name(name)
    if not labels:
        return name
    parts = []
    for label in sorted(labels):
        check_label_name(label)
        value = labels[label]
        if not isinstance(value, str):
            raise InvalidKey(f"label {label!r} has a non-string value {value!r}")
        parts.append(f'{label}="{escape_label_value(value)}"')
    return name + "{" + ",".join(parts) + "}"


def is_labeled(key: str) -> bool:
    """Tell whether a key is written in the labeled syntax (it may still be broken)."""
    return "{" in key


def parse_key(key: str) -> tuple[str, dict[str, str]]:
    """Split a key into its metric name and labels, or raise InvalidKey.

    A flat key parses to its name and no labels.  Parsing is strict: labels
    must be sorted, unique, quoted and escaped exactly as format_key writes
    them, so that format_key(*parse_key(key)) == key for every valid key.
    """
    brace = key.find("{")
    if brace < 0:
        check_metric_name(key)
        return key, {}
    name = key[:brace]
    check_metric_name(name)
    if key[brace:] == "{}":
        raise InvalidKey(f"{key!r}: empty label set; write the bare name instead")
    labels = dict(_parse_labels(key, brace + 1))
    if not labels:
        raise InvalidKey(f"{key!r}: empty label set; write the bare name instead")
    return name, labels


def _parse_labels(key: str, pos: int) -> Iterator[tuple[str, str]]:
    previous = ""
    while True:
        end = key.find('="', pos)
        if end < 0:
            raise InvalidKey(f'{key!r}: expected label="value" at offset {pos}')
        label = key[pos:end]
        check_label_name(label)
        if previous and label <= previous:
            problem = "repeated" if label == previous else "not sorted by name"
            raise InvalidKey(f"{key!r}: label {label!r} is {problem}")
        value, pos = _read_value(key, end + 2)
        yield label, value
        previous = label
        if pos >= len(key):
            raise InvalidKey(f"{key!r}: missing closing brace")
        if key[pos] == "}":
            if pos + 1 != len(key):
                raise InvalidKey(f"{key!r}: text after the closing brace")
            return
        if key[pos] != ",":
            raise InvalidKey(f"{key!r}: expected ',' or '}}' at offset {pos}")
        pos += 1


def _read_value(key: str, pos: int) -> tuple[str, int]:
    """Read an escaped label value up to its closing quote; return it and the next offset."""
    chars = []
    while pos < len(key):
        char = key[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\n":
            raise InvalidKey(f"{key!r}: raw newline in a label value; write \\n")
        if char == "\\":
            escaped = key[pos + 1 : pos + 2]
            if escaped not in _UNESCAPES:
                raise InvalidKey(
                    f"{key!r}: invalid escape '\\{escaped}' at offset {pos}"
                )
            chars.append(_UNESCAPES[escaped])
            pos += 2
            continue
        chars.append(char)
        pos += 1
    raise InvalidKey(f"{key!r}: unterminated label value")


# Flat families.  Each part between fixed words may itself hold underscores
# ("visual_changenet"), so the regular expressions only find candidates and
# the comprehensive parser below checks that a split is the only one.
_LEGACY_RES = (
    re.compile(r"^total_action_(?P<action>.+)_(?P<status>pass|fail)\Z", re.DOTALL),
    re.compile(r"^version_(?P<version>.+)_action_(?P<action>.+)\Z", re.DOTALL),
    re.compile(r"^network_(?P<network>.+)_action_(?P<action>.+)\Z", re.DOTALL),
    re.compile(r"^gpu_(?P<gpu>.+)_action_(?P<action>.+)\Z", re.DOTALL),
)
# A job without GPUs ends in "_gpu_0_": the TAO services write the separator
# before an empty GPU list.
_COMPREHENSIVE_HINT = re.compile(
    r"^network_.+_action_.+_version_.+_status_(pass|fail)_gpu_[0-9]+(_.*)?\Z",
    re.DOTALL,
)
_COMPREHENSIVE_TAIL = re.compile(r"^(pass|fail)_gpu_([0-9]+)((?:_.*)?)\Z", re.DOTALL)
# Enough digits for any real GPU count, few enough for int() to stay cheap.
_MAX_COUNT_DIGITS = 6
# Readings named in the message about an ambiguous key.
_MAX_READINGS = 4


@dataclass(frozen=True)
class ComprehensiveKey:
    """The parts of a comprehensive key."""

    network: str
    action: str
    version: str
    status: str
    gpu_count: int
    gpus: tuple[tuple[str, int], ...]


def classify(key: str) -> str:
    """Return the family of a key: one of FAMILIES."""
    if key in BOOKKEEPING_KEYS:
        return BOOKKEEPING
    if key == TIME_KEY:
        return TIME
    if is_labeled(key):
        return LABELED
    if _COMPREHENSIVE_HINT.match(key):
        return COMPREHENSIVE
    if any(pattern.match(key) for pattern in _LEGACY_RES):
        return LEGACY
    return OTHER


def parse_comprehensive(key: str) -> ComprehensiveKey:
    """Parse a comprehensive key, or raise InvalidKey when it is not exactly one."""
    if not key.startswith("network_"):
        raise InvalidKey(f"{key!r} is not a comprehensive key")
    found = set()
    for head, gpu_count, gpu_part in _split_comprehensive(key):
        for gpus in _split_gpus(gpu_part, gpu_count):
            found.add(ComprehensiveKey(*head, gpu_count, gpus))
    if not found:
        raise InvalidKey(f"{key!r} cannot be read as a comprehensive key")
    if len(found) > 1:
        readings = "; ".join(sorted(_describe(parsed) for parsed in found))
        raise InvalidKey(f"{key!r} is ambiguous: {readings}")
    return found.pop()


def _describe(parsed: ComprehensiveKey) -> str:
    gpus = ", ".join(f"{name} x{count}" for name, count in parsed.gpus)
    return (
        f"network={parsed.network} action={parsed.action} "
        f"version={parsed.version} gpus=[{gpus}]"
    )


def _positions(text: str, word: str, start: int) -> list[int]:
    found = []
    at = text.find(word, start)
    while at >= 0:
        found.append(at)
        at = text.find(word, at + 1)
    return found


def _split_comprehensive(
    key: str,
) -> Iterator[tuple[tuple[str, str, str, str], int, str]]:
    """Yield every split of key into its fixed words with non-empty parts."""
    start = len("network_")
    for action_at in _positions(key, "_action_", start + 1):
        after_action = action_at + len("_action_")
        for version_at in _positions(key, "_version_", after_action + 1):
            after_version = version_at + len("_version_")
            for status_at in _positions(key, "_status_", after_version + 1):
                tail = key[status_at + len("_status_") :]
                match = re.match(r"^(pass|fail)_gpu_(\d+)((?:_.+)?)$", tail)
                if not match:
                    continue
                head = (
                    key[start:action_at],
                    key[after_action:version_at],
                    key[after_version:status_at],
                    match.group(1),
                )
                yield head, int(match.group(2)), match.group(3)[1:]


def _split_gpus(text: str, total: int) -> Iterator[tuple[tuple[str, int], ...]]:
    """Yield each reading of NAME_n[_NAME_n...] whose counts add up to total."""
    if not text:
        if total == 0:
            yield ()
        return
    tokens = text.split("_")
    yield from _gpu_groups(tokens, 0, total)


def _gpu_groups(
    tokens: list[str], start: int, remaining: int
) -> Iterator[tuple[tuple[str, int], ...]]:
    if start == len(tokens):
        if remaining == 0:
            yield ()
        return
    for count_at in range(start + 1, len(tokens)):
        token = tokens[count_at]
        if not token.isdigit() or not token.isascii():
            continue
        count = int(token)
        if count == 0 or count > remaining:
            continue
        name = "_".join(tokens[start:count_at])
        for rest in _gpu_groups(tokens, count_at + 1, remaining - count):
            yield ((name, count), *rest)
