#!/usr/bin/env python3
"""Analyse the TAO metrics document: families, totals, odd keys and size.

Old metrics need no conversion: new jobs add labeled metrics beside them.
This command only reports, from the live database or from a backup file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import analysis
import cli_support
import metrics_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Report what the metrics document holds. It converts nothing: "
        "labeled metrics come from new jobs."
    )
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="analyse the document (the only action; accepted for familiarity)",
    )
    parser.add_argument(
        "-i", "--input", help="analyse this backup file instead of the database"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the analysis as one JSON object"
    )
    cli_support.add_connection_options(parser)
    cli_support.add_version(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli_support.run(analyse, args)


def analyse(args: argparse.Namespace) -> int:
    if args.input:
        document = metrics_file.read_document(args.input).document
        source = args.input
    else:
        with cli_support.open_store(args) as store:
            found = store.read()
            source = store.location.describe()
        if found is None:
            raise cli_support.UsageError(f"no metrics document in {source}")
        document = found
    result = analysis.analyze(document)
    if args.json:
        print(json.dumps({"source": source, **result.as_json()}))
        return 0
    print(f"TAO Telemetry: analysis of {source}")
    print("=" * 80)
    for line in analysis.format_report(result):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
