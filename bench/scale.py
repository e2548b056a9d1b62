"""``python -m bench.scale``: issue #14's three targets in one run, one table.

    python -m bench.scale            # 20M events x 90 days backfill, 5M/20M point-in-time, 2M-row scoring
    python -m bench.scale --quick    # the same runners on small inputs (~3 min): a smoke run, no verdict

Each part is the existing benchmark in its own process, one after the other on the same machine:

* ``python -m bench.backfill`` — a 90-day backfill of daily snapshots at 20M events (100k entities, 20
  earlier days of history), Dask and Spark: the range pass vs one build per day (target >= 10x, every
  compared day identical). One build per day is timed for ``--single-sample`` days spread evenly over the
  range and EXTRAPOLATED (mean x 90; the table says so): 90 single builds at 20M would take ~21 min on Dask,
  ~31 min on Spark (2026-12-04, by that extrapolation).
* ``python -m bench`` — the point-in-time build at 5M and 20M events: the Dask engine vs the fastest
  DuckDB/Polars variant (target >= 2x faster).
* ``python -m bench.training --only streamed_bin,scoring`` — Parquet -> predict -> Parquet vs
  ``booster.predict`` on the same rows in memory (target >= 0.85x).

Writes ``<out>/scale.md`` (and each part's own results under ``<out>/<part>/``). The load average is
printed per part: on a shared machine the ratios say little (README, Benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TARGETS = {"backfill": 10.0, "pit": 2.0, "scoring": 0.85}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results/scale")
    p.add_argument("--quick", action="store_true", help="small inputs: checks the runners, not the targets")
    p.add_argument("--single-sample", type=int, default=5, help="single-day builds timed per engine (default 5)")
    p.add_argument("--parts", default="backfill,pit,scoring", help="comma separated subset")
    return p.parse_args(argv)


def commands(args) -> dict[str, list[str]]:
    py, out = sys.executable, args.out
    if args.quick:
        backfill = ["--events", "200k", "--entities", "5k", "--days", "4", "--history", "6", "--single-sample", "2"]
        pit = ["--quick"]
        training = [
            "--rows",
            "200k",
            "--rounds",
            "10",
            "--files",
            "2",
            "--holdback-rows",
            "50k",
            "--score-rows",
            "200k",
        ]
    else:
        backfill = ["--events", "20M", "--entities", "100k", "--days", "90", "--history", "20"]
        backfill += ["--single-sample", str(args.single_sample)]
        pit = ["--sizes", "5M,20M"]
        training = ["--rows", "1M"]
    return {
        "backfill": [py, "-m", "bench.backfill", *backfill, "--engines", "dask,spark", "--out", f"{out}/backfill"],
        "pit": [
            py,
            "-m",
            "bench",
            *pit,
            "--only",
            "kernel,dask,duckdb_asof,polars_asof,polars_rolling",
            "--out",
            f"{out}/pit",
            "--name",
            "pit",
        ],
        "scoring": [
            py,
            "-m",
            "bench.training",
            *training,
            "--only",
            "streamed_bin,scoring",
            "--out",
            f"{out}/training",
        ],
    }


def backfill_rows(out: str) -> list[tuple]:
    with open(f"{out}/backfill/backfill.json") as f:
        got = json.load(f)
    rows = []
    for r in got["rows"]:
        ext = f", extrapolated from {r['compared_days']} builds" if r["extrapolated"] else ""
        rows.append(
            (
                f"range backfill of daily snapshots, {r['engine']}",
                f"{got['args']['events']} events, {got['args']['entities']} entities, {r['days']}",
                f"{r['ratio']:.1f}x ({r['single_s']:.0f} s one build per day{ext}; range pass {r['range_s']:.0f} s); "
                f"identical on {r['compared_days']} days: {'yes' if r['identical'] else 'NO'}",
                f">= {TARGETS['backfill']:.0f}x, identical",
                "ok" if r["ratio"] >= TARGETS["backfill"] and r["identical"] else "MISSED",
            )
        )
    return rows


def pit_rows(out: str) -> list[tuple]:
    from bench.report import fastest_native

    with open(f"{out}/pit/pit.json") as f:
        got = json.load(f)
    results, rows = got["results"], []
    for size in dict.fromkeys(r["size"] for r in results):
        dask = next((r for r in results if r["size"] == size and r["variant"] == "dask" and r.get("ok")), None)
        native = fastest_native(results, size)
        if dask is None or native is None:
            rows.append((f"Dask vs DuckDB/Polars, {size} events", "", "a variant failed (see pit.md)", "", "MISSED"))
            continue
        ratio = native["wall_s"] / dask["wall_s"]
        check = dask.get("check", {}).get("status")
        rows.append(
            (
                f"Dask engine vs the fastest DuckDB/Polars variant, {size} events",
                got["meta"]["inputs"].get(size, "").split("; generated")[0] + "; Dask: " + dask["info"]["config"],
                f"{ratio:.2f}x faster (Dask {dask['wall_s']:.1f} s, {dask['cpu_s']:.0f} CPU-s; {native['variant']} "
                f"{native['wall_s']:.1f} s, {native['cpu_s']:.0f} CPU-s); Dask output {check}; load "
                f"{dask['load_avg']:.1f} / {native['load_avg']:.1f}",
                f">= {TARGETS['pit']:.0f}x",
                "ok" if ratio >= TARGETS["pit"] and check == "equal" else "MISSED",
            )
        )
    return rows


def scoring_rows(out: str) -> list[tuple]:
    with open(f"{out}/training/training.json") as f:
        got = json.load(f)
    r = got["results"]["scoring"]
    if not r.get("ok"):
        return [("Parquet batch scoring vs in-memory predict", "", r.get("error", "failed"), "", "MISSED")]
    ratio = r["stream_rows_per_s"] / r["memory_rows_per_s"]
    return [
        (
            "Parquet batch scoring vs in-memory booster.predict",
            f"{r['rows']:,} rows x {got['args']['features']} features, best of 3 alternating",
            f"{ratio:.2f}x ({r['stream_rows_per_s']:,.0f} vs {r['memory_rows_per_s']:,.0f} rows/s); identical scores: "
            f"{'yes' if r['identical'] else 'NO'}; load {r['load_avg']:.1f}",
            f">= {TARGETS['scoring']:.2f}x",
            "ok" if ratio >= TARGETS["scoring"] and r["identical"] else "MISSED",
        )
    ]


READERS = {"backfill": backfill_rows, "pit": pit_rows, "scoring": scoring_rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(READERS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; expected {sorted(READERS)}")
    os.makedirs(args.out, exist_ok=True)
    cmds, rows, log = commands(args), [], []
    for part in parts:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        print(f"[{part}] {' '.join(cmds[part][1:])}", flush=True)
        proc = subprocess.run(cmds[part])
        seconds = time.perf_counter() - t0
        log.append(f"- {part}: exit {proc.returncode}, {seconds:.0f} s, load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
        try:
            rows += READERS[part](args.out)
        except (OSError, KeyError, ValueError) as exc:  # a part that wrote no results is a row, not a crash
            rows.append((part, "", f"no results: {type(exc).__name__}: {exc}", "", "MISSED"))
    head = f"# bench.scale ({'--quick: small inputs, no verdict' if args.quick else 'issue #14 targets'})\n\n"
    table = "| measurement | setup | result | target | status |\n|---|---|---|---|---|\n"
    for r in rows:
        status = "smoke" if args.quick else r[4]
        table += f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {status} |\n"
    text = head + table + "\n" + "\n".join(log) + f"\n\n{os.cpu_count()} cores\n"
    print("\n" + text)
    with open(f"{args.out}/scale.md", "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
