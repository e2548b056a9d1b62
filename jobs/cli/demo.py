"""``lockstep demo``: the whole pipeline on an embedded Airflow (``jobs.local.demo``), or only the landing
and a month of snapshots of a model's sources and feature sets."""

from __future__ import annotations

import datetime as dt
import os
import time

from jobs.cli.common import add_model_arg, days
from jobs.config import Config
from jobs.local import demo
from jobs.snapshots import build_snapshots, snapshot_table


def add_parsers(subparsers) -> None:
    """``lockstep demo [--model M] [--from D] [--days N] [--no-airflow [--to E]] [--ui]``."""
    s = subparsers.add_parser(
        "demo",
        help="run the whole pipeline of a declared model on an embedded Airflow (default: the CDNOW example); "
        "print where the outputs are",
    )
    add_model_arg(s)
    s.add_argument("--from", dest="ds_from", default=None, help="first features day (default: from the source's span)")
    s.add_argument("--days", type=int, default=None, help="features days to backfill (Airflow demo)")
    s.add_argument("--to", dest="ds_to", default=None, help="last snapshot day (--no-airflow)")
    s.add_argument(
        "--no-airflow", action="store_true", help="only land the sources and build snapshots, without Airflow"
    )
    s.add_argument("--ui", action="store_true", help="open the demo's Airflow (airflow standalone) instead")
    s.set_defaults(func=cmd_demo)


def snapshot_window(source, ds_from: str | None = None, ds_to: str | None = None) -> tuple[str, str]:
    """The ``--no-airflow`` snapshots: by default the third calendar month of the source's declared span (two
    months of history before it; for the CDNOW example, March 1997)."""
    if ds_from is None:
        if not source.span:
            raise ValueError(f"source {source.name!r} declares no span: pass --from")
        first = dt.date.fromisoformat(source.span[0]).replace(day=1)
        ds_from = (
            first.replace(month=first.month + 2)
            if first.month <= 10
            else first.replace(year=first.year + 1, month=first.month - 10)
        ).isoformat()
    if ds_to is None:
        start = dt.date.fromisoformat(ds_from)
        nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        ds_to = (nxt.replace(day=1) - dt.timedelta(days=1)).isoformat()
    return ds_from, ds_to


def cmd_demo(args) -> int:
    """The whole pipeline on an embedded Airflow (``jobs.local.demo``), or with ``--no-airflow`` only the
    landing of the model's sources and a month of daily snapshots of its feature sets."""
    if getattr(args, "repo", None) and not args.no_airflow:
        os.environ["LOCKSTEP_REPO"] = args.repo  # Airflow's processes read the declarations from the environment
    if args.ui:
        return demo.main(["ui"] + (["--lake", args.lake] if args.lake else []))
    if not args.no_airflow:
        if args.engine:
            os.environ["LOCKSTEP_ENGINE"] = args.engine
        argv = (
            ["run"]
            + (["--lake", args.lake] if args.lake else [])
            + (["--model", args.model] if args.model else [])
            + (["--from", args.ds_from] if args.ds_from else [])
            + (["--days", str(args.days)] if args.days else [])
        )
        return demo.main(argv)
    cfg = Config.from_args(args)
    model = demo.demo_model(cfg, args.model)
    ds_from, ds_to = snapshot_window(model.queries.source, args.ds_from, args.ds_to)
    lake = cfg.lake()
    t0 = time.perf_counter()
    raw = demo.land_history(cfg, model, validate_through=ds_to)  # a snapshot of D reads the days through D
    tables = sorted({m.table for m in raw})
    print(
        f"[1/2] {', '.join(tables)}: {len(raw)} daily partitions, {sum(m.rows for m in raw)} events, "
        f"validated through {ds_to} "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    t1 = time.perf_counter()
    snaps = {fs.name: build_snapshots(cfg, days(ds_from, ds_to), fs.name) for fs in model.feature_sets}
    for name, manifests in snaps.items():
        fs = cfg.repo().feature_set(name)
        print(
            f"[2/2] {name} snapshots on the {cfg.engine} engine: {len(manifests)} days, "
            f"{manifests[-1].rows} {fs.entity} keys on {manifests[-1].ds} ({time.perf_counter() - t1:.1f}s)"
        )
    print("\nOutputs")
    for t in tables:
        print(f"  raw events         {lake.path(t)}/ds=YYYY-MM-DD/")
    for name, manifests in snaps.items():
        fs = cfg.repo().feature_set(name)
        path = snapshot_table(lake, fs).partition_path(manifests[-1].ds)
        print(f"  feature snapshots  {path}  (+ _manifest.json)")
        print(f"  feature set        {fs.name} fingerprint {fs.fingerprint}")
    last_name, last = next(reversed(snaps.items()))
    table = snapshot_table(lake, cfg.repo().feature_set(last_name))
    print(
        '\nLook at one:  .venv/bin/python -c "import pandas as pd; '
        f"print(pd.read_parquet('{table.partition_path(last[-1].ds)}').describe().T)\""
    )
    print(f"Inspect:      .venv/bin/lockstep --lake {lake.root} show {table.name} --ds {last[-1].ds}")
    return 0
