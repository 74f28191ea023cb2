"""Write families in the Prometheus text format and OpenMetrics, fast.

The stored metrics are rendered once per build, each family once for as
long as it is unchanged, and compressed once per build; a response only adds
the exporter's own metrics to them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import Metric

import metric_keys
from collector import UNTYPED, Build, Family

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EOF_LINE = b"# EOF\n"


def header(family: Family, content_type: str) -> str:
    """Return the HELP and TYPE lines of a family in one format."""
    if content_type == TEXT:
        return (
            f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.kind}\n"
        )
    name = family.openmetrics_name()
    kind = "unknown" if family.kind == UNTYPED else family.kind
    return f"# TYPE {name} {kind}\n# HELP {name} {family.help}\n"


def chunk(family: Family, content_type: str) -> bytes:
    """Return a family rendered in one format, rendering it only once."""
    found = family.chunks.get(content_type)
    if found is None:
        text = header(family, content_type) + "".join(family.lines)
        found = text.encode("utf-8")
        family.chunks[content_type] = found
    return found


def render(families: Iterable[Family], content_type: str) -> bytes:
    """Write families in one format (OpenMetrics without its # EOF line)."""
    return b"".join([chunk(family, content_type) for family in families])


def stored(build: Build, content_type: str) -> bytes:
    """Return the stored metrics of a build in one format, rendered once."""
    found = build.rendered.get(content_type)
    if found is None:
        found = render(build.families, content_type)
        build.rendered[content_type] = found
    return found


def stored_gzip(build: Build, content_type: str) -> tuple[bytes, zlib._Compress]:
    """Return the start of a gzip stream of stored(), and the compressor to end it."""
    key = "gzip " + content_type
    found = build.rendered.get(key)
    if found is None:
        compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        data = stored(build, content_type)
        start = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        found = (start, compressor)
        build.rendered[key] = found
    return found


class Exposition:
    """The response bodies of one snapshot: the stored metrics, then our own.

    A body is a list of byte strings.  A compressed body is one gzip stream:
    the compressed stored metrics, shared by every snapshot of the build,
    continued with the exporter's own metrics.
    """

    def __init__(self, own: list[Family], build: Build | None) -> None:
        self._own = {
            TEXT: render(own, TEXT),
            OPENMETRICS: render(own, OPENMETRICS) + EOF_LINE,
        }
        self._build = build
        self._gzip_ends: dict[str, bytes] = {}

    def body(self, content_type: str, compressed: bool = False) -> list[bytes]:
        own = self._own[content_type]
        if not compressed:
            if self._build is None:
                return [own]
            return [stored(self._build, content_type), own]
        if self._build is None:
            return [_gzip(own)]
        start, compressor = stored_gzip(self._build, content_type)
        end = self._gzip_ends.get(content_type)
        if end is None:
            finishing = compressor.copy()
            end = finishing.compress(own) + finishing.flush()
            self._gzip_ends[content_type] = end
        return [start, end]


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def to_metrics(families: Iterable[Family]) -> Iterator[Metric]:
    """Build prometheus_client Metric objects holding the same samples."""
    for family in families:
        kind = "unknown" if family.kind == UNTYPED else family.kind
        metric = Metric(family.openmetrics_name(), family.help, kind)
        for line in family.lines:
            key, text = line[:-1].rsplit(" ", 1)
            name, labels = metric_keys.parse_key(key)
            metric.add_sample(name, labels, float(text))
        yield metric
