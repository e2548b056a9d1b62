"""``python -m bench``: the point-in-time build benchmark, every variant, one command.

    python -m bench                      # 5M and 20M events, every variant
    python -m bench --quick              # 200k events / 50k queries smoke run (~1 min)
    python -m bench --only kernel,dask   # a subset (the kernel is the checks' reference)
    python -m bench --big                # add the 50M-event Dask run with a 2 GiB worker limit

Results: a table on stdout, ``<out>/pit.md`` and ``<out>/pit.json`` (``pit_quick.*`` for
``--quick``, ``pit_big.*`` for ``--big-only``); inputs are
cached in ``<out>/data/<size>/``, outputs and logs in ``<out>/runs/<size>/<variant>/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import sys
import time

import numpy as np
import psutil

from bench import check, data, report
from bench.variants import DEFAULT, EXACT, VARIANTS

QUICK_SIZE, QUICK_QUERIES = "200k", 50_000
BIG_SIZE = "50M"


def _knobs(text: str) -> dict:
    """``"buckets=32,dask_workers=1"`` -> ``{"buckets": 32, "dask_workers": 1}`` (ints where they parse)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="5M,20M", help="event counts, comma separated (default 5M,20M)")
    p.add_argument("--queries", default="1M", help="queries per size (default 1M)")
    p.add_argument("--only", default=None, help=f"variants to run, comma separated (default {','.join(DEFAULT)})")
    p.add_argument(
        "--big", action="store_true", help=f"add the {BIG_SIZE}-event run: dask_2GiB (and the kernel as its reference)"
    )
    p.add_argument("--big-only", action="store_true", help="run only the --big part")
    p.add_argument(
        "--big-reference",
        choices=("sample", "full"),
        default="sample",
        help="check of the 50M run: 'sample' = the kernel on the 1/16 of entities with "
        "customer_id %% 16 == 0 (exact for those rows, ~1/16 of the memory; default), "
        "'full' = the kernel variant on everything (~10 GiB)",
    )
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SIZE} events, {QUICK_QUERIES:,} queries")
    p.add_argument("--out", default="bench/results", help="results directory (default bench/results)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per variant before it is killed (default 900)")
    p.add_argument("--dask-knobs", default="buckets=8", help="Config overrides of the dask_knobs variant")
    p.add_argument("--spark-knobs", default="buckets=64", help="Config overrides of the spark_knobs variant")
    p.add_argument(
        "--polars-rolling",
        default="by_over",
        choices=("by_over", "group_rolling"),
        help="formulation of the polars_rolling variant (see bench/variants/polars_rolling.py)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="results file stem in --out (default pit; pit_quick with --quick, pit_big with --big-only)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the results in <out>/<name>.json of (size, variant) pairs that completed or timed "
        "out (same inputs) and run only the rest, e.g. after a run was stopped",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: re-render <out>/<name>.md and the target lines from <out>/<name>.json",
    )
    p.add_argument("--keep-outputs", action="store_true", help="keep every variant's result Parquet")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM as an exception, so the running variant's process tree is killed on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, t_start = dt.datetime.now().isoformat(timespec="seconds"), time.monotonic()
    only = [v.strip() for v in args.only.split(",")] if args.only else list(DEFAULT)
    unknown = [v for v in only if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    only = [v for v in VARIANTS if v in only]  # run order: the reference first
    options = {
        "dask_knobs": {"knobs": _knobs(args.dask_knobs)},
        "spark_knobs": {"knobs": _knobs(args.spark_knobs)},
        "polars_rolling": {"method": args.polars_rolling},
    }

    plan: list[tuple[str, data.DataSpec, list[str]]] = []
    if not args.big_only:
        if args.quick:
            plan.append((QUICK_SIZE, data.DataSpec(data.parse_size(QUICK_SIZE), QUICK_QUERIES), only))
        else:
            n_q = data.parse_size(args.queries)
            for size in filter(None, (s.strip() for s in args.sizes.split(","))):
                plan.append((size, data.DataSpec(data.parse_size(size), n_q), only))
    if args.big or args.big_only:
        plan.append(
            (
                BIG_SIZE,
                data.DataSpec(data.parse_size(BIG_SIZE), data.parse_size(args.queries)),
                ["dask_2GiB", "kernel"] if args.big_reference == "full" else ["dask_2GiB"],
            )
        )

    out = os.path.abspath(args.out)
    stem = args.name or ("pit_big" if args.big_only else "pit_quick" if args.quick else "pit")
    results: list[dict] = []
    inputs_meta: dict[str, str] = {}
    if args.report_only:
        import json

        with open(os.path.join(out, f"{stem}.json")) as f:
            prev = json.load(f)
        md, _ = report.write(out, stem, prev["results"], prev["meta"])
        print(report.text_table(prev["results"]), "", *report.targets(prev["results"]), "", f"written: {md}", sep="\n")
        return 0
    earlier, invocations = _earlier(out, stem) if args.resume else ({}, [])
    for size, spec, variants in plan:
        inputs = data.ensure(os.path.join(out, "data"), size, spec)
        if inputs.fresh:  # new data: an earlier run's kernel output is no reference any more
            shutil.rmtree(os.path.join(out, "runs", size), ignore_errors=True)
        inputs_meta[size] = (
            f"{spec.events:,} events in {len(inputs.events_files)} files, "
            f"{spec.queries:,} queries in {len(inputs.queries_files)} files, "
            f"{spec.entities:,} entities, {spec.days} days, nulls {spec.null_rate}, "
            f"ties {spec.tie_rate}, dups {spec.dup_rate}; generated in {inputs.generate_s:.0f}s"
        )
        size_results = []
        for variant in variants:
            r = None if inputs.fresh else earlier.get((size, variant))
            if r is not None:
                print(f"[{size}] {variant}: kept from run {r['run']} (--resume)", flush=True)
            else:
                r = run_variant(args, out, inputs, variant, options.get(variant, {}))
                r["run"] = len(invocations) + 1
            results.append(r)
            size_results.append(r)
            print(f"    -> {report.rows([x for x in results if x['size'] == size])[-1]}", flush=True)
            # Rewritten after every variant, so a killed run still leaves its results.
            report.write(out, stem, results, _meta(args, started, t_start, inputs_meta, invocations))
        # Checked once the size is done, so the reference may run last (the --big run does).
        ref = _load_reference(out, size)  # this run's kernel output, else an earlier run's
        sampled = False
        if ref is None and "kernel" not in variants and any(r.get("ok") for r in size_results):
            print(f"[{size}] reference: the kernel on the entities with customer_id % 16 == 0 ...", flush=True)
            ref = check.sample_reference(inputs.events_files, inputs.queries_files)
            sampled = True
        for r in size_results:
            if r["variant"] != "kernel" and r.get("ok") and "check" not in r:
                r["check"] = _check(ref, r, r["variant"], sampled, data.count_rows(inputs.queries_files))
                print(f"    check {r['variant']}: {check.label(r['check'])}", flush=True)
            if r["variant"] != "kernel" and not args.keep_outputs:
                shutil.rmtree(r["out_dir"], ignore_errors=True)
            if r["variant"] != "kernel" and r.get("ok") and "check" not in r:
                r["check"] = {"error": "output gone before it was checked"}
        report.write(out, stem, results, _meta(args, started, t_start, inputs_meta, invocations))
    meta = _meta(args, started, t_start, inputs_meta, invocations)
    md, js = report.write(out, stem, results, meta)
    print()
    print(report.text_table(results))
    print()
    for line in report.targets(results):
        print(line)
    print(f"\nwritten: {md}, {js} (total {meta['elapsed_s']:.0f}s)")
    return 0


def run_variant(args, out: str, inputs: data.Inputs, variant: str, options: dict) -> dict:
    from bench.measure import run_child

    run_dir = os.path.join(out, "runs", inputs.size, variant)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    scratch = os.path.join(out, "scratch", inputs.size, variant)
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    ctx = {
        "variant": variant,
        "size": inputs.size,
        "events_files": inputs.events_files,
        "queries_files": inputs.queries_files,
        "out_dir": os.path.join(run_dir, "out"),
        "scratch": scratch,
        "result_path": os.path.join(run_dir, "result.json"),
        "options": options,
    }
    print(f"[{inputs.size}] {variant} ...", flush=True)
    r = run_child(ctx, os.path.join(run_dir, "ctx.json"), os.path.join(run_dir, "log.txt"), args.timeout)
    shutil.rmtree(scratch, ignore_errors=True)
    r.update(out_dir=ctx["out_dir"], timeout_s=args.timeout)
    if not r.get("ok"):
        print(f"    {variant} failed: {r.get('error')} (log {r['log']})", flush=True)
    return r


def _load_reference(out: str, size: str):
    d = os.path.join(out, "runs", size, "kernel", "out")
    return check.load(d) if os.path.isdir(d) else None


def _check(ref, r: dict, variant: str, sampled: bool = False, expected_rows: int = 0) -> dict | None:
    if ref is None:
        return None
    try:
        got = check.load(r["out_dir"])
        if got is None:
            return {"error": "no output files"}
        if sampled:
            n = len(got[check.QUERY_ID])
            ids = got[check.QUERY_ID]
            if n != expected_rows or len(np.unique(ids)) != n:  # the unsampled rows: all there, once
                return {
                    "status": "MISMATCH",
                    "mismatch_rows": abs(n - expected_rows) or n - len(np.unique(ids)),
                    "max_abs_diff": None,
                    "columns": {check.QUERY_ID: f"{n} rows for {expected_rows} queries"},
                }
            got = check.restrict(got, ref[check.QUERY_ID])
            return {
                **check.compare(ref, got, exact=variant in EXACT),
                "sampled_rows": len(ref[check.QUERY_ID]),
                "output_rows": n,
            }
        return check.compare(ref, got, exact=variant in EXACT)
    except Exception as exc:  # noqa: BLE001 (a broken output is a finding, not a crash of the whole run)
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _earlier(out: str, stem: str) -> tuple[dict, list]:
    """Results of an earlier run of ``stem`` that count as done (completed or timed out), and its runs."""
    import json

    path = os.path.join(out, f"{stem}.json")
    if not os.path.exists(path):
        return {}, []
    with open(path) as f:
        prev = json.load(f)
    invocations = prev["meta"].get("invocations") or [{k: prev["meta"][k] for k in ("command", "started", "elapsed_s")}]
    import features.kernel
    import features.spec
    from bench.featureset import FEATURE_SET

    # A result without a recorded fingerprint used today's kernel if it started after the
    # kernel's (and the feature set's) last modification.
    sources = max(
        os.path.getmtime(m.__file__) for m in (features.kernel, features.spec, sys.modules["bench.featureset"])
    )
    done = {}
    for r in prev["results"]:
        if "fingerprint" not in r:
            ctx = os.path.join(out, "runs", r["size"], r["variant"], "ctx.json")
            if os.path.exists(ctx) and os.path.getmtime(ctx) > sources:
                r["fingerprint"] = FEATURE_SET.fingerprint
        # The kernel and its engines are re-run when the kernel changed since (fingerprint).
        stale = r["variant"] in EXACT and r.get("fingerprint") != FEATURE_SET.fingerprint
        if (r.get("ok") or r.get("timed_out")) and not stale:
            r.setdefault("run", 1)
            done[(r["size"], r["variant"])] = r
    return done, invocations


def _meta(args, started, t_start, inputs_meta, invocations=()) -> dict:
    this = {
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": started,
        "elapsed_s": time.monotonic() - t_start,
    }
    return {
        "invocations": [*invocations, this],
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "started": started,
        "elapsed_s": time.monotonic() - t_start,
        "cpus": psutil.cpu_count(),
        "mem_gib": psutil.virtual_memory().total / 1024**3,
        "args": vars(args),
        "inputs": inputs_meta,
    }


if __name__ == "__main__":
    sys.exit(main())
