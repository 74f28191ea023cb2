#!/usr/bin/env python3
"""Export the TAO metrics document from MongoDB to a backup file."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from collections.abc import Sequence

import analysis
import cli_support
import metric_keys
import metrics_file

RULE = "=" * 80


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write the metrics document to a backup file (MongoDB Extended "
        "JSON) with a .sha256 checksum beside it.",
    )
    parser.add_argument(
        "-o",
        "--output",
        help="file to write; '-' writes to stdout; a name ending in .gz is "
        "compressed (default metrics_backup_YYYYMMDD_HHMMSS.json)",
    )
    parser.add_argument(
        "-p", "--pretty", action="store_true", help="indent the JSON for reading"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output file if it exists (default: refuse)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as one JSON object"
    )
    cli_support.add_connection_options(parser)
    cli_support.add_version(parser)
    return parser


def default_output(now: datetime.datetime) -> str:
    return now.strftime("metrics_backup_%Y%m%d_%H%M%S.json")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli_support.run(export, args)


def export(args: argparse.Namespace) -> int:
    output = args.output or default_output(datetime.datetime.now())
    to_stdout = output == metrics_file.STDIO
    with cli_support.open_store(args) as store:
        document = store.read()
        if document is None:
            raise cli_support.UsageError(
                f"no metrics document in {store.location.describe()}; check --db, "
                "--collection and --document-name"
            )
        others = store.count_other_documents()
    written = metrics_file.write_document(output, document, args.pretty, args.overwrite)
    report = analysis.analyze(document, check_keys=False)
    # With the data on stdout, the report goes to stderr.
    stream = sys.stderr if to_stdout else sys.stdout
    if args.json:
        summary = {
            "output": output,
            "bytes": written.size,
            "sha256": written.sha256,
            "metrics": report.metric_count,
            "families": report.counts,
            "other_documents": others,
        }
        print(json.dumps(summary), file=stream)
    else:
        print_report(stream, output, written, report, others)
    return 0


def print_report(
    stream,
    output: str,
    written: metrics_file.WrittenFile,
    report: analysis.Analysis,
    others: int,
) -> None:
    def say(line: str = "") -> None:
        print(line, file=stream)

    say("TAO Telemetry: Export Metrics from MongoDB")
    say(RULE)
    say()
    say(f"   ✓ Exported {report.metric_count} metrics")
    for family in metric_keys.FAMILIES:
        if family != metric_keys.BOOKKEEPING and report.counts[family]:
            say(f"     {family:<14} {report.counts[family]:>8}")
    size_mb = written.size / 2**20
    say(f"   ✓ File size: {written.size:,} bytes ({size_mb:.2f} MB)")
    if output != metrics_file.STDIO:
        say(f"   ✓ Written to {output}")
        say(f"   ✓ Checksum: {output}.sha256")
    if others:
        noun = "document" if others == 1 else "documents"
        say(
            f"   ⚠  The collection holds {others} other {noun} besides the metrics "
            "document; they were not exported"
        )
    say()
    say("To import it on the new server, run:")
    shown = shlex.quote(output) if output != metrics_file.STDIO else "FILE"
    say(f"  python import_metrics.py --input {shown} --dry-run")


if __name__ == "__main__":
    sys.exit(main())
