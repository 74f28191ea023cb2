"""The one grammar for metric keys stored in the TAO metrics document.

A key is either flat (``total_action_train_pass``) or labeled, written in the
Prometheus sample syntax with labels sorted by name::

    tao_job_total{tao_action="train",tao_network="resnet50"}

Label values are escaped as the Prometheus text format escapes them, so a
value may hold any character, ``,`` ``}`` and ``"`` included.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# \Z, not $: a name must not end in a newline.
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*\Z")

BOOKKEEPING_KEYS = frozenset({"_id", "name", "last_updated"})
# The fields that identify the document rather than describe the metrics.
IDENTITY_KEYS = frozenset({"_id", "name"})
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
    plain = _PLAIN_KEY_RE.fullmatch(key)
    if plain:
        labels = _plain_labels(plain.group(2))
        if labels is not None:
            return plain.group(1), labels
    name = key[:brace]
    check_metric_name(name)
    if key[brace:] == "{}":
        raise InvalidKey(f"{key!r}: empty label set; write the bare name instead")
    labels = dict(_parse_labels(key, brace + 1))
    if not labels:
        raise InvalidKey(f"{key!r}: empty label set; write the bare name instead")
    return name, labels


# A labeled key whose values need no unescaping, the common case, is read
# with one match instead of character by character; any other key, valid or
# not, takes the strict path below, which also explains faults.
_PLAIN_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
_PLAIN_KEY_RE = re.compile(
    rf"([a-zA-Z_:][a-zA-Z0-9_:]*)\{{((?:{_PLAIN_LABEL},)*{_PLAIN_LABEL})\}}"
)


_PLAIN_VALUE_RE = re.compile(r'"[^"\\\n]*"')


def check_key(key: str) -> None:
    """Raise InvalidKey unless parse_key would read key; faster for many keys.

    A quote-free key is valid exactly when its shape, with every value
    emptied, is: the shapes of a document repeat, so each is checked once.
    """
    if "{" in key and _PLAIN_KEY_RE.fullmatch(key):
        if _valid_shape(_PLAIN_VALUE_RE.sub('""', key)):
            return
    parse_key(key)


@functools.lru_cache(maxsize=4096)
def _valid_shape(shape: str) -> bool:
    try:
        parse_key(shape)
    except InvalidKey:
        return False
    return True


def _plain_labels(text: str) -> dict[str, str] | None:
    """Read quote-free label pairs; None when unsorted, repeated or reserved."""
    parts = text.split('"')
    names = [part.lstrip(",")[:-1] for part in parts[0:-1:2]]
    # Strictly ascending is sorted and unique; a reserved name starts the text
    # or follows a closing quote and comma (values here hold no quote).
    if names != sorted(set(names)) or text.startswith("__") or '",__' in text:
        return None
    return dict(zip(names, parts[1::2], strict=True))


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
    """Read an escaped label value; return it and the offset after its quote."""
    chars: list[str] = []
    while pos < len(key):
        char = key[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\n":
            raise InvalidKey(f"{key!r}: raw newline in a label value; write \\n")
        if char == "\\":
            escaped = key[pos + 1 : pos + 2]
            if not escaped:
                break
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
    """Parse a comprehensive key, or raise InvalidKey when it is not exactly one.

    Names may hold underscores and GPU names numbers, so a key can split in
    more than one way.  GPU counts must add up to the stated total; when that
    still leaves several readings, those listing GPU names in ascending order
    (as the TAO services write them) win.  A key still ambiguous is refused.
    """
    if not key.startswith("network_"):
        raise InvalidKey(f"{key!r} is not a comprehensive key")
    found: list[ComprehensiveKey] = []
    for head, gpu_count, gpu_part in _split_comprehensive(key):
        for gpus in _split_gpus(gpu_part, gpu_count, _MAX_READINGS + 1):
            found.append(ComprehensiveKey(*head, gpu_count, gpus))
        if len(found) > _MAX_READINGS:
            break
    if not found:
        raise InvalidKey(
            f"{key!r} cannot be read as network_<n>_action_<a>_version_<v>"
            "_status_<pass|fail>_gpu_<total>[_<GPU>_<count>...] with counts "
            "adding up to the total"
        )
    if len(found) > 1:
        ordered = [parsed for parsed in found if _ascending(parsed.gpus)]
        if len(ordered) == 1 and len(found) <= _MAX_READINGS:
            return ordered[0]
        shown = "; ".join(_describe(parsed) for parsed in found[:_MAX_READINGS])
        more = " and more" if len(found) > _MAX_READINGS else ""
        raise InvalidKey(f"{key!r} is ambiguous, it reads as: {shown}{more}")
    return found[0]


def _ascending(gpus: tuple[tuple[str, int], ...]) -> bool:
    names = [name for name, _ in gpus]
    return all(left < right for left, right in itertools.pairwise(names))


def _describe(parsed: ComprehensiveKey) -> str:
    gpus = ", ".join(f"{name} x{count}" for name, count in parsed.gpus)
    return (
        f"network={parsed.network} action={parsed.action} "
        f"version={parsed.version} status={parsed.status} gpus=[{gpus}]"
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
                match = _COMPREHENSIVE_TAIL.match(tail)
                if not match or len(match.group(2)) > _MAX_COUNT_DIGITS:
                    continue
                head = (
                    key[start:action_at],
                    key[after_action:version_at],
                    key[after_version:status_at],
                    match.group(1),
                )
                yield head, int(match.group(2)), match.group(3)[1:]


# A document repeats the same few GPU lists in thousands of keys.
@functools.lru_cache(maxsize=4096)
def _split_gpus(
    text: str, total: int, limit: int
) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Return up to limit readings of NAME_n[_NAME_n...] adding up to total."""
    if not text:
        return ((),) if total == 0 else ()
    tokens = text.split("_")
    counts = [_count(token) for token in tokens]

    @functools.cache
    def groups(start: int, remaining: int) -> tuple[tuple[tuple[str, int], ...], ...]:
        if start == len(tokens):
            return ((),) if remaining == 0 else ()
        found: list[tuple[tuple[str, int], ...]] = []
        for count_at in range(start + 1, len(tokens)):
            count = counts[count_at]
            if not 0 < count <= remaining:
                continue
            name = "_".join(tokens[start:count_at])
            for rest in groups(count_at + 1, remaining - count):
                found.append(((name, count), *rest))
                if len(found) >= limit:
                    return tuple(found)
        return tuple(found)

    return groups(0, total)


def _count(token: str) -> int:
    """Return the GPU count a token spells, 0 when it spells none."""
    if token.isascii() and token.isdigit() and len(token) <= _MAX_COUNT_DIGITS:
        return int(token)
    return 0
