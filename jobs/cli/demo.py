"""``lockstep demo``: the whole pipeline on an embedded Airflow (``jobs.local.demo``), or only the CDNOW
ingest and a month of snapshots."""

from __future__ import annotations

import os
import time

from features import registry
from jobs.cli.common import days
from jobs.config import Config
from jobs.ingest.cdnow import ingest_cdnow
from jobs.local import demo
from jobs.snapshots import build_snapshots, snapshot_table

DEMO_FROM, DEMO_TO = "1997-03-01", "1997-03-31"


def add_parsers(subparsers) -> None:
    """``lockstep demo [--from D] [--days N] [--no-airflow [--to E]] [--ui]``."""
    s = subparsers.add_parser(
        "demo", help="run the whole pipeline on an embedded Airflow over CDNOW; print where the outputs are"
    )
    s.add_argument("--from", dest="ds_from", default=None, help="first features day")
    s.add_argument("--days", type=int, default=None, help="features days to backfill (Airflow demo)")
    s.add_argument("--to", dest="ds_to", default=DEMO_TO, help="last snapshot day (--no-airflow)")
    s.add_argument("--no-airflow", action="store_true", help="only ingest CDNOW and build snapshots, without Airflow")
    s.add_argument("--ui", action="store_true", help="open the demo's Airflow (airflow standalone) instead")
    s.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    """The whole pipeline on an embedded Airflow (``jobs.local.demo``), or with ``--no-airflow`` only
    the CDNOW ingest and a month of daily snapshots."""
    if args.ui:
        return demo.main(["ui"] + (["--lake", args.lake] if args.lake else []))
    if not args.no_airflow:
        if args.engine:
            os.environ["LOCKSTEP_ENGINE"] = args.engine
        argv = (
            ["run"]
            + (["--lake", args.lake] if args.lake else [])
            + (["--from", args.ds_from] if args.ds_from else [])
            + (["--days", str(args.days)] if args.days else [])
        )
        return demo.main(argv)
    args.ds_from = args.ds_from or DEMO_FROM
    cfg = Config.from_args(args)
    lake = cfg.lake()
    t0 = time.perf_counter()
    raw = ingest_cdnow(lake)
    print(
        f"[1/2] raw_events: {len(raw)} daily partitions, {sum(m.rows for m in raw)} CDNOW transactions "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    t1 = time.perf_counter()
    snaps = build_snapshots(cfg, days(args.ds_from, args.ds_to))
    print(
        f"[2/2] feature snapshots on the {cfg.engine} engine: {len(snaps)} days, "
        f"{snaps[-1].rows} customers on {snaps[-1].ds} ({time.perf_counter() - t1:.1f}s)"
    )
    fs = registry.get("customer_activity_v1")
    table = snapshot_table(lake, fs)
    print("\nOutputs")
    print(f"  raw events         {lake.path('raw_events')}/ds=YYYY-MM-DD/")
    print(f"  feature snapshots  {table.partition_path(snaps[-1].ds)}  (+ _manifest.json)")
    print(f"  feature set        {fs.name} fingerprint {fs.fingerprint}")
    print(
        '\nLook at one:  .venv/bin/python -c "import pandas as pd; '
        f"print(pd.read_parquet('{table.partition_path(snaps[-1].ds)}').describe().T)\""
    )
    print(f"Inspect:      .venv/bin/lockstep --lake {lake.root} show {table.name} --ds {snaps[-1].ds}")
    return 0
