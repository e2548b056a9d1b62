"""``lockstep validate``: validate lake partitions against their Great Expectations suites."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.cli import errors
from jobs.cli.common import days as day_list
from jobs.config import Config
from jobs.lake import MissingPartitionError
from jobs.quality.suites import DATASETS, SuiteError
from jobs.quality.validate import DEFAULT_BATCH_ROWS, suite_for, table_name, validate_range


def add_validate_parser(subparsers) -> argparse.ArgumentParser:
    """``lockstep validate DATASET --ds D [--to E]`` (exit 0 pass, 1 a failed or missing day, 2 usage)."""
    s = subparsers.add_parser(
        "validate",
        help="validate partitions against their Great Expectations suite (exit 0 pass, "
        "1 a day failed or has no partition, 2 usage error)",
    )
    s.add_argument("dataset", choices=DATASETS)
    s.add_argument("--ds", help="partition day YYYY-MM-DD (first day with --to)")
    s.add_argument("--to", help="last day of a range (inclusive); each day is validated on its own")
    s.add_argument("--source", help="source the raw_events suite is derived from (default: the repo's first)")
    s.add_argument(
        "--feature-set", help="feature set the feature_snapshots suite is derived from (default: the model's first)"
    )
    s.add_argument(
        "--model",
        help="model the training_sets / predictions / serving_logs suite is derived from (default: the repo's default)",
    )
    s.add_argument("--table", help="validate this table instead of the dataset's default one")
    s.add_argument("--batch-rows", type=int, help=f"rows per batch (default {DEFAULT_BATCH_ROWS})")
    s.add_argument(
        "--no-quarantine",
        action="store_true",
        help="report only: leave a failed partition published (a failed candidate pending)",
    )
    s.add_argument("--no-alert", action="store_true", help="do not send alerts")
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="validate a range in this many processes, each a run of consecutive days (default 1)",
    )
    s.add_argument("--show-suite", action="store_true", help="print the bound suite as JSON and exit")
    s.set_defaults(func=cmd_validate)
    return s


def add_quarantine_parser(subparsers) -> argparse.ArgumentParser:
    """``lockstep quarantine --table T --ds D --reason R``: withdraw a partition and everything built from it."""
    s = subparsers.add_parser(
        "quarantine",
        help="quarantine a partition and withdraw every partition built from it (and their SQL rows), one alert",
    )
    s.add_argument("--table", required=True, help="the lake table, e.g. raw_events/<source>")
    s.add_argument("--ds", required=True, help="the partition day YYYY-MM-DD")
    s.add_argument("--reason", required=True, help="why: recorded with each quarantined partition and in the alert")
    s.add_argument("--sql-url", help="SQLAlchemy URL of the prediction tables (default: as `lockstep publish`)")
    s.add_argument("--no-alert", action="store_true", help="do not send the alert")
    s.set_defaults(func=cmd_quarantine)
    return s


def cmd_quarantine(args) -> int:
    """Run ``lockstep quarantine``; prints what was withdrawn (``jobs.lineage.withdraw``)."""
    from jobs.lineage import withdraw

    cfg = Config.from_args(args)
    result = withdraw(cfg, args.table, args.ds, args.reason, sql_url=args.sql_url, alert=not args.no_alert)
    print(result.describe())
    return 0


def cmd_validate(args) -> int:
    """Run ``lockstep validate``; prints one verdict per day: passed, FAILED (why, the report, the
    quarantine) or MISSING. A bad day does not stop the others (``validate_range``)."""
    debug = getattr(args, "debug", False)
    try:
        names = {"source": args.source, "feature_set": args.feature_set, "model": args.model}
        if args.show_suite:
            print(json.dumps(suite_for(Config.from_args(args), args.dataset, **names).to_json_dict(), indent=2))
            return 0
        if not args.ds:
            raise ValueError("--ds is required")
        cfg = Config.from_args(args)
        days = day_list(args.ds, args.to)
        table = args.table or table_name(cfg, args.dataset, **names)
        results = validate_range(
            cfg,
            args.dataset,
            args.ds,
            args.to,
            **names,
            table=args.table,
            batch_rows=args.batch_rows,
            quarantine=not args.no_quarantine,
            alert=not args.no_alert,
            raise_on_failure=False,
            skip_missing=True,
            workers=args.workers,
        )
    except (SuiteError, KeyError, ValueError) as exc:  # bad flags or names: a usage error
        return errors.report(exc, "validate", debug=debug, status=2)
    by_day = {r.ds: r for r in results}
    for d in days:
        r = by_day.get(d)
        if r is None:
            print(f"{args.dataset} {table}/ds={d}: MISSING (no published partition)")
        elif r.success:
            print(
                f"{r.dataset} {r.partition}: passed {len(r.outcomes)} expectations ({r.rows} rows); "
                f"report: {r.report_path}"
            )
        else:
            print(r.describe())
    missing = [d for d in days if d not in by_day]
    if missing:
        errors.report(MissingPartitionError(table, missing), "validate", debug=debug)
    failed = [r for r in results if not r.success]
    if failed:
        print(f"{len(failed)} of {len(days)} partition(s) failed validation", file=sys.stderr)
    return errors.FAILED if failed or missing else 0
