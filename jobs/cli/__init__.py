"""``lockstep``: the jobs as subcommands. Every subcommand takes the lake and engine from
``--lake``/``--engine`` or the LOCKSTEP_* environment (see ``jobs.config.Config``)."""
from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

DEMO_FROM, DEMO_TO = "1997-03-01", "1997-03-31"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (ValueError, KeyError, LookupError, OSError) as exc:
        from jobs.lake import LakeError

        if isinstance(exc, (ValueError, KeyError, LakeError, FileNotFoundError)):
            print(f"lockstep {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


def _config(args):
    from jobs.config import Config

    return Config.from_env(lake_root=args.lake, engine=args.engine, dask_address=args.dask_address,
                           spark_master=args.spark_master, buckets=args.buckets)


def _days(start: str, end: str | None) -> list[str]:
    return list(pd.date_range(start, end or start, freq="D").strftime("%Y-%m-%d"))


def cmd_ingest_cdnow(args) -> int:
    from jobs.ingest import ingest_cdnow

    manifests = ingest_cdnow(_config(args).lake(), args.ds_from, args.ds_to)
    rows = sum(m.rows for m in manifests)
    print(f"raw_events: {len(manifests)} partitions, {rows} rows "
          f"({manifests[0].ds}..{manifests[-1].ds}) in {_config(args).lake().path('raw_events')}")
    return 0


def cmd_generate(args) -> int:
    from jobs.generate import generate_events

    manifests = generate_events(_config(args).lake(), entities=args.entities, events=args.events, days=args.days,
                                start=args.start, seed=args.seed)
    print(f"raw_events: {len(manifests)} partitions, {sum(m.rows for m in manifests)} rows (generated, seed={args.seed})")
    return 0


def cmd_snapshot(args) -> int:
    from jobs.snapshots import build_snapshots, snapshot_table

    cfg = _config(args)
    t0 = time.perf_counter()
    manifests = build_snapshots(cfg, _days(args.ds, args.to), args.feature_set)
    for m in manifests:
        print(f"{m.table}/ds={m.ds}: {m.rows} rows, content {m.content_fingerprint[:12]}")
    from features import registry

    where = snapshot_table(cfg.lake(), registry.get(args.feature_set)).partition_path(manifests[-1].ds)
    print(f"{len(manifests)} snapshot(s) on {cfg.engine} in {time.perf_counter() - t0:.1f}s; latest: {where}")
    return 0


def cmd_show(args) -> int:
    lake = _config(args).lake()
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
    print(f"{args.table}: {len(parts)} partitions {parts[0]}..{parts[-1]}, {total} rows, at {table.partition_path(parts[-1])}")
    return 0


def cmd_features(args) -> int:
    from features import registry

    for name, fs in registry.FEATURE_SETS.items():
        print(f"{name}  fingerprint={fs.fingerprint}  entity={fs.entity}  features={len(fs.features)}")
        if args.verbose:
            for f in fs.features:
                w = "all history" if f.window_days is None else f"{f.window_days:g}d"
                src = f.column or (f"{f.numerator}/{f.denominator}" if f.agg == "ratio" else "events")
                print(f"  {f.name:<24} {f.agg:<17} {src:<28} {w:<12} default={f.default}")
    return 0


def cmd_demo(args) -> int:
    """The whole pipeline on an embedded Airflow (``jobs.demo``), or with ``--no-airflow`` only
    the CDNOW ingest and a month of daily snapshots."""
    if args.ui:
        from jobs import demo

        return demo.main(["ui"] + (["--lake", args.lake] if args.lake else []))
    if not args.no_airflow:
        import os

        from jobs import demo

        if args.engine:
            os.environ["LOCKSTEP_ENGINE"] = args.engine
        argv = ["run"] + (["--lake", args.lake] if args.lake else []) + \
            (["--from", args.ds_from] if args.ds_from else []) + (["--days", str(args.days)] if args.days else [])
        return demo.main(argv)
    args.ds_from = args.ds_from or DEMO_FROM
    from features import registry
    from jobs.ingest import ingest_cdnow
    from jobs.snapshots import build_snapshots, snapshot_table

    cfg = _config(args)
    lake = cfg.lake()
    t0 = time.perf_counter()
    raw = ingest_cdnow(lake)
    print(f"[1/2] raw_events: {len(raw)} daily partitions, {sum(m.rows for m in raw)} CDNOW transactions "
          f"({time.perf_counter() - t0:.1f}s)")
    t1 = time.perf_counter()
    snaps = build_snapshots(cfg, _days(args.ds_from, args.ds_to))
    print(f"[2/2] feature snapshots on the {cfg.engine} engine: {len(snaps)} days, "
          f"{snaps[-1].rows} customers on {snaps[-1].ds} ({time.perf_counter() - t1:.1f}s)")
    fs = registry.get("customer_activity_v1")
    table = snapshot_table(lake, fs)
    print("\nOutputs")
    print(f"  raw events         {lake.path('raw_events')}/ds=YYYY-MM-DD/")
    print(f"  feature snapshots  {table.partition_path(snaps[-1].ds)}  (+ _manifest.json)")
    print(f"  feature set        {fs.name} fingerprint {fs.fingerprint}")
    print("\nLook at one:  .venv/bin/python -c \"import pandas as pd; "
          f"print(pd.read_parquet('{table.partition_path(snaps[-1].ds)}').describe().T)\"")
    print(f"Inspect:      .venv/bin/lockstep --lake {lake.root} show {table.name} --ds {snaps[-1].ds}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lockstep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", help="lake root: a path or fsspec URL (env LOCKSTEP_LAKE; default ./.lockstep/lake)")
    p.add_argument("--engine", choices=("local", "dask", "spark"), help="feature engine (env LOCKSTEP_ENGINE; default local)")
    p.add_argument("--dask-address", help="dask.distributed scheduler address (default: a LocalCluster per run)")
    p.add_argument("--spark-master", help="Spark master URL (default local[2])")
    p.add_argument("--buckets", type=int, help="hash buckets for the Dask/Spark engines (default 16)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("demo", help="run the whole pipeline on an embedded Airflow over CDNOW; print where the outputs are")
    s.add_argument("--from", dest="ds_from", default=None, help="first features day")
    s.add_argument("--days", type=int, default=None, help="features days to backfill (Airflow demo)")
    s.add_argument("--to", dest="ds_to", default=DEMO_TO, help="last snapshot day (--no-airflow)")
    s.add_argument("--no-airflow", action="store_true", help="only ingest CDNOW and build snapshots, without Airflow")
    s.add_argument("--ui", action="store_true", help="open the demo's Airflow (airflow standalone) instead")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("ingest-cdnow", help="land the shipped CDNOW log as raw_events partitions by ingest date")
    s.add_argument("--from", dest="ds_from", help="first ingest day (default: the data's first)")
    s.add_argument("--to", dest="ds_to", help="last ingest day (default: the data's last)")
    s.set_defaults(func=cmd_ingest_cdnow)

    s = sub.add_parser("generate", help="write synthetic raw_events of the CDNOW schema at any scale (streamed)")
    s.add_argument("--entities", type=int, default=100_000)
    s.add_argument("--events", type=int, default=5_000_000)
    s.add_argument("--days", type=int, default=60)
    s.add_argument("--start", default="2024-01-01")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("snapshot", help="build feature_snapshots/<set>/ds=D: every entity as known at D+1 00:00 UTC")
    s.add_argument("--ds", required=True, help="snapshot day YYYY-MM-DD (first day with --to)")
    s.add_argument("--to", help="last day of a range (inclusive); each day is its own partition")
    s.add_argument("--feature-set", default="customer_activity_v1")
    s.set_defaults(func=cmd_snapshot)

    s = sub.add_parser("show", help="list a table's partitions, or print one partition's manifest")
    s.add_argument("table", help="e.g. raw_events, feature_snapshots/customer_activity_v1")
    s.add_argument("--ds")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("features", help="list the feature sets, their fingerprints and (-v) their features")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_features)

    # The jobs of the other stages declare their own subcommands.
    from jobs import labels, scoring, skew, sql, train, training_set
    from jobs import tune as tune_job
    from jobs.serving import app as serving_app
    from jobs.serving import log as serving_log
    from jobs.serving import replay as serving_replay
    from jobs.training import baseline
    from jobs.validate import add_validate_parser

    add_validate_parser(sub)
    for module in (labels, training_set, train, baseline, tune_job, scoring, sql, serving_app, serving_log, serving_replay, skew):
        module.add_parsers(sub)
    return p


if __name__ == "__main__":
    sys.exit(main())
