"""``lockstep snapshot``, ``show`` and ``features``: feature snapshots, lake tables and feature sets."""

from __future__ import annotations

import time

from jobs.cli.common import days, staged_note
from jobs.config import Config
from jobs.snapshots import build_snapshot_range, build_snapshots, feature_set_of, snapshot_table


def add_parsers(subparsers) -> None:
    """``lockstep snapshot --ds D [--to E]``, ``lockstep show TABLE [--ds D]``, ``lockstep features [-v]``."""
    s = subparsers.add_parser(
        "snapshot", help="build feature_snapshots/<set>/ds=D: every entity as known at D+1 00:00 UTC"
    )
    s.add_argument("--ds", required=True, help="snapshot day YYYY-MM-DD (first day with --to)")
    s.add_argument(
        "--to",
        help="last day of a range (inclusive): one engine pass over the raw history, each day its own "
        "partition, validated before it is published; the first failing day stops the range",
    )
    s.add_argument(
        "--per-day", action="store_true", help="with --to: one build per day instead (unvalidated, as --ds alone)"
    )
    s.add_argument("--feature-set", help="the declared feature set (default: the default model's first set)")
    s.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="build from raw days that did not pass `lockstep validate` (exploration: the snapshot is marked "
        "as built from unvalidated input and never counts as validated)",
    )
    s.set_defaults(func=cmd_snapshot)

    s = subparsers.add_parser("show", help="list a table's partitions, or print one partition's manifest")
    s.add_argument("table", help="e.g. raw_events/<source>, feature_snapshots/<feature set>")
    s.add_argument("--ds")
    s.set_defaults(func=cmd_show)

    s = subparsers.add_parser("features", help="list the feature sets, their fingerprints and (-v) their features")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_features)


def cmd_snapshot(args) -> int:
    cfg = Config.from_args(args)
    t0 = time.perf_counter()
    span = days(args.ds, args.to)
    if len(span) > 1 and not args.per_day:
        manifests = build_snapshot_range(
            cfg, span[0], span[-1], args.feature_set, progress=True, allow_unvalidated=args.allow_unvalidated
        )
    else:
        manifests = build_snapshots(cfg, span, args.feature_set, allow_unvalidated=args.allow_unvalidated)
    for m in manifests:
        print(f"{m.table}/ds={m.ds}: {m.rows} rows, content {m.content_fingerprint[:12]}")
    where = snapshot_table(cfg.lake(), feature_set_of(cfg, args.feature_set)).partition_path(manifests[-1].ds)
    print(f"{len(manifests)} snapshot(s) on {cfg.engine} in {time.perf_counter() - t0:.1f}s; latest: {where}")
    if note := staged_note(cfg.lake(), manifests):
        print(note)
    return 0


def cmd_show(args) -> int:
    lake = Config.from_args(args).lake()
    table = lake.table(args.table)
    parts = table.partitions()
    if not parts:
        print(f"{args.table}: no published partitions under {lake.root}")
        return 1
    if args.ds:
        print(table.manifest(args.ds).to_json())
        return 0
    total = 0
    for ds in parts:
        m = table.manifest(ds)
        total += m.rows
    print(
        f"{args.table}: {len(parts)} partitions {parts[0]}..{parts[-1]}, {total} rows, at {table.partition_path(parts[-1])}"
    )
    return 0


def cmd_features(args) -> int:
    for name, fs in Config.from_args(args).repo().feature_sets.items():
        print(f"{name}  fingerprint={fs.fingerprint}  entity={fs.entity}  features={len(fs.features)}")
        if args.verbose:
            for f in fs.features:
                w = "all history" if f.window_days is None else f"{f.window_days:g}d"
                src = f.column or (f"{f.numerator}/{f.denominator}" if f.agg == "ratio" else "events")
                print(f"  {f.name:<24} {f.agg:<17} {src:<28} {w:<12} default={f.default}")
    return 0
