#!/usr/bin/env python3
"""Import a metrics backup file into the TAO metrics document in MongoDB."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import cli_support
import import_plan
import metrics_file
import mongo_store
from cli_support import UsageError
from import_plan import MERGE, REPLACE, SUM, Plan
from mongo_store import MAX_DOCUMENT_BYTES, MetricsStore, StoreError

RULE = "=" * 80
SHOWN = 5
MODE_TEXT = {
    (MERGE, import_plan.OVERWRITE): "MERGE (imported metrics added to existing)",
    (MERGE, import_plan.SUM): "MERGE, strategy sum (imported counts added to existing)",
    (MERGE, import_plan.MISSING): "MERGE, strategy missing (only keys not yet present)",
    (REPLACE, import_plan.OVERWRITE): "REPLACE (every existing metric deleted first)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Import a metrics backup into MongoDB. Without --dry-run or "
        "--replace it merges: imported values win for keys on both sides.",
    )
    parser.add_argument("-i", "--input", required=True, help="backup file ('-': stdin)")
    parser.add_argument(
        "--dry-run", action="store_true", help="check and preview; write nothing"
    )
    # Running without --dry-run executes; the word is accepted for old habits.
    parser.add_argument("--execute", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--replace",
        action="store_true",
        help="delete every existing metric and write exactly the file's (asks for "
        "YES on a terminal)",
    )
    parser.add_argument(
        "--strategy",
        choices=import_plan.STRATEGIES,
        default=import_plan.OVERWRITE,
        help="how a merge treats keys on both sides: overwrite (file wins), sum "
        "(add the counts), missing (add only absent keys); default %(default)s",
    )
    parser.add_argument(
        "--allow-decrease",
        action="store_true",
        help="allow a merge to lower counters (an older backup over newer counts)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --strategy sum, add a file that was already imported",
    )
    parser.add_argument(
        "--yes", action="store_true", help="confirm --replace without a terminal"
    )
    parser.add_argument(
        "--backup-dir",
        default=cli_support.env_default("TAO_BACKUP_DIR", "."),
        help="folder for the backup taken before writing (env TAO_BACKUP_DIR; "
        "default the current folder)",
    )
    parser.add_argument(
        "--no-backup", action="store_true", help="skip the backup before writing"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the plan or result as JSON"
    )
    cli_support.add_connection_options(parser)
    cli_support.add_version(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.execute and args.dry_run:
        build_parser().error("--execute and --dry-run contradict each other")
    if args.replace and args.strategy != import_plan.OVERWRITE:
        build_parser().error("--strategy applies to merges, not to --replace")
    return cli_support.run(run_import, args)


class Report:
    """Print the step-by-step report, unless JSON is asked for."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, line: str = "") -> None:
        if not self.quiet:
            print(line, flush=True)


def run_import(args: argparse.Namespace) -> int:
    say = Report(args.json)
    mode = REPLACE if args.replace else MERGE
    say("TAO Telemetry: Import Metrics to MongoDB")
    say(RULE)
    say()
    loaded, imported = load_file(args, say)
    with cli_support.open_store(args) as store:
        say("[2/4] Loading current metrics from MongoDB...")
        current = store.read()
        if current is None:
            say("   \u2139  No existing metrics in MongoDB (will create new)")
        else:
            existing = import_plan.count_metrics(current)
            say(f"   ✓ Found {existing} existing metrics")
        say()
        say("[3/4] Planning import operation...")
        plan = import_plan.plan_import(
            current, imported, mode, args.strategy, store.location.document_name
        )
        show_plan(say, plan)
        problems = refusals(plan, args, store, loaded.sha256)
        if args.dry_run:
            show_dry_run(say, plan, args, problems)
            if args.json:
                print(json.dumps({"dry_run": True, **plan.summary()}))
            if problems:
                raise UsageError(problems[0])
            return 0
        if problems:
            raise UsageError(problems[0])
        after, backup = execute(store, plan, current, args, loaded, say)
    say()
    show_result(say, plan, after)
    if args.json:
        print(json.dumps({"dry_run": False, "backup": backup, **plan.summary()}))
    return 0


def load_file(
    args: argparse.Namespace, say: Report
) -> tuple[metrics_file.LoadedFile, dict[str, Any]]:
    """Read and check the backup file; return it and its metrics."""
    say(f"[1/4] Loading metrics from {args.input}...")
    loaded = metrics_file.read_document(args.input)
    imported = import_plan.validate(loaded.document)
    count = import_plan.count_metrics(imported)
    if count == 0:
        raise UsageError(f"{args.input} holds no metrics; nothing to import")
    say(f"   ✓ Loaded {count} metric entries")
    say(f"   ✓ File size: {loaded.size:,} bytes ({loaded.size / 2**20:.2f} MB)")
    say()
    return loaded, imported


def execute(
    store: MetricsStore,
    plan: Plan,
    current: dict[str, Any] | None,
    args: argparse.Namespace,
    loaded: metrics_file.LoadedFile,
    say: Report,
) -> tuple[dict[str, Any], str | None]:
    """Back up, write and verify; return the document after and the backup's path."""
    store.check_can_write()
    confirm_replace(plan, args)
    say("[4/4] Writing to MongoDB...")
    backup = take_backup(store, current, args)
    if backup:
        say(f"   ✓ Backup of the previous document: {backup}")
        undo = ["--input", backup, "--replace", *target_arguments(args)]
        say(f"     (undo with: python import_metrics.py {shlex.join(undo)})")
    entry = history_entry(plan, args, loaded, backup)
    after = write(store, plan, entry, claim_id(plan, args, loaded.sha256))
    check_written(plan, after, backup)
    return after, backup


def show_plan(say: Report, plan: Plan) -> None:
    say(f"   Mode: {MODE_TEXT[(plan.mode, plan.strategy)]}")
    say()
    summary = plan.summary()
    say(f"   Current metrics: {summary['current']}")
    say(f"   Imported metrics: {summary['imported']}")
    say(f"   Final metrics: {summary['final']}")
    if plan.decreases:
        say()
        say(f"   ⚠  {len(plan.decreases)} counters would go down (current -> new):")
        for key, old, new in plan.decreases[:SHOWN]:
            say(f"      {key}: {old} -> {new}")
        if len(plan.decreases) > SHOWN:
            say(f"      ... and {len(plan.decreases) - SHOWN} more")
    say()


def refusals(
    plan: Plan, args: argparse.Namespace, store: MetricsStore, sha256: str
) -> list[str]:
    """Say why the real run would refuse this plan; empty when it would not."""
    problems = []
    if plan.final_bytes > MAX_DOCUMENT_BYTES:
        problems.append(
            f"the resulting document would be {plan.final_bytes:,} bytes, over "
            f"MongoDB's {MAX_DOCUMENT_BYTES:,}-byte limit; nothing was written"
        )
    if plan.decreases and plan.mode == MERGE and not args.allow_decrease:
        first = ", ".join(
            f"{key} ({old} -> {new})" for key, old, new in plan.decreases[:SHOWN]
        )
        problems.append(
            f"{len(plan.decreases)} counters would go down, first: {first}; the "
            "file is older than the server's counts (try --strategy sum or "
            "missing), or pass --allow-decrease"
        )
    if plan.mode == MERGE and plan.strategy == SUM and not args.force:
        applied = store.find_history(sha256)
        if applied:
            when = applied[-1]["time"].isoformat(timespec="seconds")
            problems.append(
                f"this file was already imported on {when}; adding it again "
                "would count its jobs twice (pass --force if that is intended)"
            )
    return problems


def show_dry_run(
    say: Report, plan: Plan, args: argparse.Namespace, problems: list[str]
) -> None:
    summary = plan.summary()
    say("[4/4] DRY RUN - Previewing...")
    say()
    say("DRY RUN MODE - No changes made to MongoDB")
    say(RULE)
    say()
    say("What will happen:")
    verb = "replace" if plan.mode == REPLACE else "merge"
    say(f"  ✓ {summary['final']} total metrics after {verb}")
    say(f"  ✓ {summary['added']} new metrics will be added")
    say(f"  ✓ {summary['updated']} existing metrics will be updated")
    if summary["unchanged"]:
        say(f"  ✓ {summary['unchanged']} existing metrics already hold these values")
    if plan.mode == REPLACE:
        say(f"  ⚠  {summary['removed']} existing metrics will be deleted")
    size_mb = plan.final_bytes / 2**20
    say(
        f"  ✓ Document size after import: {plan.final_bytes:,} bytes ({size_mb:.2f} MB)"
    )
    say()
    if problems:
        say("The import would be refused:")
        for problem in problems:
            say(f"  ✗ {problem}")
        return
    say("To execute this import, run:")
    say(f"  python import_metrics.py {shlex.join(execute_arguments(args))}")


def execute_arguments(args: argparse.Namespace) -> list[str]:
    """Return the flags of this command without --dry-run, for copying."""
    words = ["--input", args.input, *target_arguments(args)]
    if args.backup_dir != ".":
        words += ["--backup-dir", args.backup_dir]
    if args.replace:
        words.append("--replace")
    if args.strategy != import_plan.OVERWRITE:
        words += ["--strategy", args.strategy]
    for flag in ("allow_decrease", "force", "no_backup"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    return words


def target_arguments(args: argparse.Namespace) -> list[str]:
    """Return the options naming this run's database and document, for copying."""
    # Without them a copied command could write to another database.
    words = []
    # A URI holding a password is left out: a *** copy could not log in.
    if args.uri and mongo_store.uri_password(args.uri) is None:
        words += ["--uri", args.uri]
    for option, value, default in (
        ("--db", args.db, mongo_store.DEFAULT_DB),
        ("--collection", args.collection, mongo_store.DEFAULT_COLLECTION),
        ("--document-name", args.document_name, mongo_store.DEFAULT_DOCUMENT_NAME),
    ):
        if value != default:
            words += [option, value]
    return words


def confirm_replace(plan: Plan, args: argparse.Namespace) -> None:
    if plan.mode != REPLACE or args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            "--replace deletes every existing metric; with no terminal to confirm "
            "on, pass --yes"
        )
    removed = import_plan.count_metrics(plan.current)
    written = import_plan.count_metrics(plan.imported)
    # The question goes to stderr so that stdout holds only the report or JSON.
    print(
        f"This deletes all {removed} current metrics and writes {written} from "
        "the file. Type YES to continue: ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    # An empty answer at end of input (Ctrl-D) cancels too.
    answer = sys.stdin.readline()
    if answer.strip() != "YES":
        raise UsageError("replace cancelled; nothing was written")


def take_backup(
    store: MetricsStore, current: dict[str, Any] | None, args: argparse.Namespace
) -> str | None:
    """Save the current document in the export format; return its path."""
    if args.no_backup or current is None:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    name = f"pre_import_backup_{store.location.db}_{stamp}.json"
    path = os.path.join(args.backup_dir, name)
    if not os.path.isdir(args.backup_dir):
        raise UsageError(f"backup folder {args.backup_dir} does not exist")
    try:
        metrics_file.write_document(path, current, pretty=False)
    except metrics_file.FileError as exc:
        raise metrics_file.FileError(
            f"{exc}; nothing was written to MongoDB (free some space, choose "
            "another --backup-dir, or pass --no-backup)"
        ) from None
    return path


def check_written(plan: Plan, after: dict[str, Any], backup: str | None) -> None:
    wrong = import_plan.mismatches(plan, after)
    if wrong:
        undo = f"; {backup} holds the previous document" if backup else ""
        raise StoreError(
            f"verification failed: {len(wrong)} keys do not hold the imported "
            f"values after writing, first: {', '.join(wrong[:SHOWN])}{undo}"
        )


def claim_id(plan: Plan, args: argparse.Namespace, sha256: str) -> str | None:
    """Name the one sum of this file into this document, unless --force."""
    if plan.mode != MERGE or plan.strategy != SUM or args.force:
        return None
    return f"sum:{args.document_name}:{sha256}"


def write(
    store: MetricsStore, plan: Plan, entry: dict[str, Any], claim: str | None
) -> dict[str, Any]:
    """Apply the plan and record it in the import history.

    A sum first claims its file in the history, atomically, so that two runs
    of the same command, even at once, cannot both add it.  If the write then
    fails, the claim stays: the write may have reached the server.
    """
    if claim is None:
        after = store.apply(plan.pipeline, f"writing the {plan.mode}")
        # Recorded before the check: a written file counts as imported even
        # when its check fails, so that summing it again is still refused.
        try:
            store.record_history(entry)
        except StoreError as exc:
            raise StoreError(
                f"the metrics were written, but {exc}; do not run this import "
                "again with --strategy sum"
            ) from None
        return after
    if not store.claim_history(claim, {**entry, "status": "writing"}):
        raise UsageError(
            "this file is already being added or was added to this document; "
            "adding it again would count its jobs twice (pass --force if intended)"
        )
    try:
        after = store.apply(plan.pipeline, f"writing the {plan.mode}")
    except StoreError as exc:
        raise StoreError(
            f"{exc}; the counts may or may not have been added: check them with "
            "convert_to_labeled.py --analyze before running again with --force"
        ) from None
    try:
        store.update_history(claim, {**entry, "status": "done"})
    except StoreError as exc:
        raise StoreError(f"the metrics were written, but {exc}") from None
    return after


def history_entry(
    plan: Plan,
    args: argparse.Namespace,
    loaded: metrics_file.LoadedFile,
    backup: str | None,
) -> dict[str, Any]:
    summary = plan.summary()
    return {
        "document_name": args.document_name,
        "time": datetime.datetime.now(datetime.UTC),
        "file": os.path.abspath(args.input) if args.input != "-" else "-",
        "sha256": loaded.sha256,
        "mode": plan.mode,
        "strategy": summary["strategy"],
        "counts": {
            key: summary[key]
            for key in ("current", "imported", "final", "added", "updated", "removed")
        },
        "backup": backup,
    }


def show_result(say: Report, plan: Plan, after: dict[str, Any]) -> None:
    say("✅ Import Successful!")
    say(RULE)
    say()
    say("Replaced metrics:" if plan.mode == REPLACE else "Merged metrics:")
    say(f"  Previous: {import_plan.count_metrics(plan.current)}")
    say(f"  Imported: {import_plan.count_metrics(plan.imported)}")
    say(f"  Final: {import_plan.count_metrics(after)}")


if __name__ == "__main__":
    sys.exit(main())
