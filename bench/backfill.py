"""``python -m bench.backfill``: a range backfill of daily snapshots, one engine pass vs one build per day.

    python -m bench.backfill --events 1M --entities 20k --days 10 --history 20 --engines dask,spark
    python -m bench.backfill --events 20M --entities 100k --days 90 --single-sample 5   # extrapolated singles

Generates ``--history + --days`` days of synthetic CDNOW-shaped events (``jobs.ingest.cdnow_synthetic``,
late arrivals and duplicates included) into a lake under ``<out>/data/``, then per engine, each phase in
its own child process (its own Dask LocalCluster / Spark session, started before the clock):

* ``single``: ``build_snapshot`` for each of the last ``--days`` days (or for ``--single-sample`` days
  spread evenly over them: the total is then EXTRAPOLATED as mean x days, and says so);
* ``range``: ``build_snapshot_range`` over the same days.

Both publish ungated (``validate=False`` for the range: the gate costs the same per day either way, and
the DAG validates a single-day build in its own task). Checks that every day built both ways has the
same rows, content fingerprint and inputs fingerprint, and prints a table (also ``<out>/backfill.md``).
Peak RSS is the driver process's (``ru_maxrss``), not the Dask workers' or the Spark JVM's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

from bench.data import parse_size

# allow_unvalidated=True: this bench's lake is landed or generated and never validated (validation is
# not what it measures, and would dominate the time); the outputs are marked as built from unvalidated input.

FS = "customer_activity_v1"
START = "2024-01-01"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", default="1M", help="events over the whole history (default 1M)")
    p.add_argument("--entities", default="100k", help="distinct entities (default 100k)")
    p.add_argument("--days", type=int, default=10, help="days to backfill (default 10)")
    p.add_argument("--history", type=int, default=20, help="event days before the backfilled range (default 20)")
    p.add_argument("--engines", default="dask,spark", help="comma separated: local, dask, spark")
    p.add_argument("--single-sample", type=int, default=0, help="build only this many single days, extrapolate")
    p.add_argument("--buckets", type=int, default=16)
    p.add_argument("--out", default="bench/results/backfill")
    p.add_argument("--phase", help=argparse.SUPPRESS)  # child mode: single | range
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--lake", help=argparse.SUPPRESS)
    p.add_argument("--only-days", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _days(args) -> list[str]:
    import datetime as dt

    from jobs.lake import day_range

    first = dt.date.fromisoformat(START) + dt.timedelta(days=args.history)
    return day_range(first.isoformat(), (first + dt.timedelta(days=args.days - 1)).isoformat())


def _lake(args) -> str:
    from jobs.config import Config
    from jobs.ingest.cdnow_synthetic import generate_events

    events, entities = parse_size(args.events), parse_size(args.entities)
    root = os.path.abspath(f"{args.out}/data/e{events}_n{entities}_d{args.history + args.days}")
    meta = f"{root}/meta.json"
    want = {"events": events, "entities": entities, "days": args.history + args.days, "start": START}
    if os.path.exists(meta) and json.load(open(meta)) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    generate_events(Config(lake_root=root).lake(), entities=entities, events=events, days=want["days"], start=START)
    json.dump(want, open(meta, "w"))
    print(f"generated {events:,} events in {time.perf_counter() - t0:.0f}s -> {root}", flush=True)
    return root


def _child(args) -> None:
    """One phase on one engine; prints one JSON line."""
    from jobs.config import Config
    from jobs.snapshots import build_snapshot, build_snapshot_range

    cfg = Config(lake_root=args.lake, engine=args.engine, buckets=args.buckets, dask_workers=2)
    opts, closer = {}, None
    if args.engine == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        opts["client"] = client = Client(cluster)
        closer = lambda: (client.close(), cluster.close())  # noqa: E731
    elif args.engine == "spark":
        from jobs.engines.spark_engine import get_spark

        opts["spark"] = get_spark("local[2]")
    days = args.only_days.split(",")
    t0 = time.perf_counter()
    if args.phase == "single":
        manifests = [build_snapshot(cfg, d, FS, **opts, allow_unvalidated=True) for d in days]
    else:
        manifests = build_snapshot_range(cfg, days[0], days[-1], FS, validate=False, **opts, allow_unvalidated=True)
    seconds = time.perf_counter() - t0
    if closer:
        closer()
    out = {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "days": {m.ds: [m.rows, m.content_fingerprint, m.inputs] for m in manifests},
    }
    print("RESULT " + json.dumps(out), flush=True)


def _run_child(args, lake: str, engine: str, phase: str, days: list[str]) -> dict:
    shutil.rmtree(f"{lake}/feature_snapshots", ignore_errors=True)
    cmd = [sys.executable, "-m", "bench.backfill", "--phase", phase, "--engine", engine, "--lake", lake]
    cmd += ["--only-days", ",".join(days), "--buckets", str(args.buckets)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{engine} {phase} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        _child(args)
        return 0
    lake = _lake(args)
    days = _days(args)
    if args.single_sample and args.single_sample < len(days):
        step = (len(days) - 1) / max(args.single_sample - 1, 1)
        sample = sorted({days[round(i * step)] for i in range(args.single_sample)})
    else:
        sample = days
    rows = []
    for engine in filter(None, args.engines.split(",")):
        single = _run_child(args, lake, engine, "single", sample)
        ranged = _run_child(args, lake, engine, "range", days)
        same = all(ranged["days"][d] == single["days"][d] for d in sample)
        single_total = single["seconds"] / len(sample) * len(days)
        rows.append(
            {
                "engine": engine,
                "single_s": single_total,
                "extrapolated": len(sample) < len(days),
                "range_s": ranged["seconds"],
                "ratio": single_total / ranged["seconds"],
                "identical": same,
                "compared_days": len(sample),
                "rss_single_mb": single["peak_rss_mb"],
                "rss_range_mb": ranged["peak_rss_mb"],
                "rows_last_day": ranged["days"][days[-1]][0],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    head = (
        f"{parse_size(args.events):,} events, {parse_size(args.entities):,} entities, {args.history} history days + "
        f"{args.days} backfilled days ({days[0]}..{days[-1]}), {args.buckets} buckets; "
        f"load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)\n\n"
    )
    table = "| engine | single-day builds | range pass | speed-up | identical (days compared) | driver peak RSS single / range |\n"
    table += "|---|---|---|---|---|---|\n"
    for r in rows:
        ext = " (extrapolated)" if r["extrapolated"] else ""
        table += (
            f"| {r['engine']} | {r['single_s']:.1f} s{ext} | {r['range_s']:.1f} s | {r['ratio']:.1f}x | "
            f"{'yes' if r['identical'] else 'NO'} ({r['compared_days']}) | "
            f"{r['rss_single_mb']:.0f} / {r['rss_range_mb']:.0f} MB |\n"
        )
    print("\n" + head + table)
    os.makedirs(args.out, exist_ok=True)
    with open(f"{args.out}/backfill.md", "w") as f:
        f.write(head + table)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
