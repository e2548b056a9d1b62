"""``python -m bench.training``: streamed vs in-memory LightGBM and scoring throughput, in one run.

    python -m bench.training                       # 10M rows x 50 features, 100 rounds, 63 leaves
    python -m bench.training --rows 1M --rounds 30 # a quick look

Variants, each in a fresh process (``bench/training/child.py``), on the same synthetic
training-set Parquet (``jobs.training.synthetic``: float64 and int64 count features with 2%
nulls, a nonlinear label; 100k-row row groups, generated once into ``<out>/data``):

* ``memory``: every row read into one float64 matrix, ``lgb.Dataset`` from it (the reference);
* ``streamed``: ``ParquetSequence`` per file into ``lgb.Dataset``, trained in the same process;
* ``streamed_bin``: the same construction in a subprocess that saves LightGBM's binary
  dataset, then training from the ``.bin`` — the job's ``construct="subprocess"`` path;
* ``scoring``: the ``streamed_bin`` model scoring ``--score-rows`` rows Parquet -> Parquet in
  100k-row batches vs ``booster.predict`` on the same rows already in memory.

Peak RSS is the kernel's ``ru_maxrss`` of the variant's process and its reaped children
(the construct subprocess), cross-checked by polling the process tree. Wall time covers
dataset construction and training (not the holdback scoring, which is reported apart).
Targets: streamed peak RSS <= 40% of in-memory, time <= 1.1x, AUC within 0.001; scoring
>= 0.85x (issue #14). The machine may be shared: the mean load average is printed with each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.data import parse_size

TARGETS = {"rss": 0.40, "time": 1.10, "auc": 0.001, "scoring": 0.85}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="10M", help="training rows (default 10M)")
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--leaves", type=int, default=63)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--files", type=int, default=10, help="training Parquet files")
    p.add_argument("--holdback-rows", default="1M")
    p.add_argument("--score-rows", default="2M")
    p.add_argument("--only", default="memory,streamed,streamed_bin,scoring")
    p.add_argument("--out", default="bench/results/training")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per variant")
    return p.parse_args(argv)


def prepare(args, rows: int) -> dict:
    """Generate (or reuse) the Parquet inputs; returns their paths."""
    from jobs.training import synthetic

    key = {
        "rows": rows,
        "features": args.features,
        "files": args.files,
        "holdback": parse_size(args.holdback_rows),
        "score": parse_size(args.score_rows),
        "v": 1,
    }
    root = os.path.join(args.out, "data")
    stamp = os.path.join(root, "params.json")
    paths = {
        "train": [os.path.join(root, "train", f"part-{i:05d}.parquet") for i in range(args.files)],
        "holdback": [os.path.join(root, "holdback", "part-00000.parquet")],
        "score_files": [os.path.join(root, "score", f"part-{i:05d}.parquet") for i in range(2)],
    }
    if os.path.exists(stamp) and _load(stamp) == key and all(os.path.exists(p) for ps in paths.values() for p in ps):
        return paths
    t0 = time.perf_counter()
    print(f"generating {rows:,} x {args.features} training rows into {root} ...", flush=True)
    paths["train"] = synthetic.write_files(os.path.join(root, "train"), rows, args.features, files=args.files, seed=1)
    paths["holdback"] = synthetic.write_files(
        os.path.join(root, "holdback"), key["holdback"], args.features, files=1, seed=2
    )
    paths["score_files"] = synthetic.write_files(
        os.path.join(root, "score"), key["score"], args.features, files=2, seed=3
    )
    with open(stamp, "w") as f:
        json.dump(key, f)
    print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
    return paths


def _load(path: str):
    with open(path) as f:
        return json.load(f)


def run_variant(ctx: dict, timeout: float) -> dict:
    """The variant in a fresh process; polls the process tree for its summed RSS."""
    work = ctx["work"]
    ctx_path = os.path.join(work, f"{ctx['variant']}.ctx.json")
    ctx["result_path"] = os.path.join(work, f"{ctx['variant']}.result.json")
    with open(ctx_path, "w") as f:
        json.dump(ctx, f)
    if os.path.exists(ctx["result_path"]):
        os.remove(ctx["result_path"])
    loads, t0 = [os.getloadavg()[0]], time.monotonic()
    with open(os.path.join(work, f"{ctx['variant']}.log"), "w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.training.child", ctx_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        try:
            peak_tree = _watch(child, t0, timeout, loads)
        finally:
            child.wait()
    result = {"variant": ctx["variant"], "ok": False, "error": "no result (timeout or crash; see log)"}
    if os.path.exists(ctx["result_path"]):
        result = _load(ctx["result_path"])
    result["peak_bytes"] = max(result.get("ru_maxrss_self", 0), result.get("ru_maxrss_children", 0))
    result["peak_tree_bytes"] = max(peak_tree, result["peak_bytes"])
    result["load_avg"] = sum(loads) / len(loads)
    result["process_s"] = time.monotonic() - t0
    return result


def _watch(child: subprocess.Popen, t0: float, timeout: float, loads: list) -> int:
    """Poll the child's process tree until it exits; returns the largest summed RSS seen."""
    import psutil

    proc, peak_tree, last = psutil.Process(child.pid), 0, t0
    while child.poll() is None:
        total = 0
        try:
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            procs = [proc]
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak_tree = max(peak_tree, total)
        if time.monotonic() - last > 5:
            loads.append(os.getloadavg()[0])
            last = time.monotonic()
        if time.monotonic() - t0 > timeout:
            for p in [*proc.children(recursive=True), proc]:  # only what this run started, by pid
                try:
                    p.kill()
                except psutil.Error:
                    pass
            break
        time.sleep(0.2)
    return peak_tree


def report(results: dict, args, rows: int) -> str:
    gib = 2**30
    lines = [
        (
            f"LightGBM {rows:,} rows x {args.features} features, {args.rounds} rounds, {args.leaves} leaves, "
            f"{args.threads} threads"
        ),
        "",
        (
            "| variant | peak RSS | vs in-memory | wall s (construct + train) | vs in-memory | holdback AUC | "
            "AUC - in-memory | CPU s | load avg |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = results.get("memory", {})
    for name in ("memory", "streamed", "streamed_bin"):
        r = results.get(name)
        if r is None:
            continue
        if not r.get("ok"):
            lines.append(f"| {name} | failed: {r.get('error', '?')} ||||||||")
            continue
        rss = r["peak_bytes"] / gib
        rel_rss = r["peak_bytes"] / ref["peak_bytes"] if ref.get("ok") else float("nan")
        rel_t = r["wall_s"] / ref["wall_s"] if ref.get("ok") else float("nan")
        d_auc = r["auc"] - ref["auc"] if ref.get("ok") else float("nan")
        lines.append(
            f"| {name} | {rss:.2f} GiB | {rel_rss:.0%} | {r['wall_s']:.0f} ({r['construct_s']:.0f} + "
            f"{r['train_s']:.0f}) | {rel_t:.2f}x | {r['auc']:.5f} | {d_auc:+.5f} | {r.get('cpu_s', float('nan')):.0f} | "
            f"{r['load_avg']:.1f} |"
        )
    s = results.get("scoring")
    if s:
        lines += [
            "",
            (
                "| scoring (best of 3, alternating) | rows | Parquet -> predict -> Parquet | in-memory predict | "
                "ratio | identical | "
                "peak RSS | load avg |"
            ),
            "|---|---|---|---|---|---|---|---|",
        ]
        if s.get("ok"):
            lines.append(
                f"| {args.score_rows} rows | {s['rows']:,} | {s['stream_rows_per_s']:,.0f} rows/s | "
                f"{s['memory_rows_per_s']:,.0f} rows/s | {s['stream_rows_per_s'] / s['memory_rows_per_s']:.2f}x"
                f" | {s['identical']} | {s['peak_bytes'] / gib:.2f} GiB | {s['load_avg']:.1f} |"
            )
        else:
            lines.append(f"| failed: {s.get('error')} |||||||")
    lines.append("")
    if ref.get("ok"):
        for name in ("streamed", "streamed_bin"):
            r = results.get(name)
            if not r or not r.get("ok"):
                continue
            checks = [
                ("peak RSS <= 40% of in-memory", r["peak_bytes"] <= TARGETS["rss"] * ref["peak_bytes"]),
                ("time <= 1.1x in-memory", r["wall_s"] <= TARGETS["time"] * ref["wall_s"]),
                ("AUC within 0.001", abs(r["auc"] - ref["auc"]) <= TARGETS["auc"]),
            ]
            lines.append(f"{name}: " + "; ".join(f"{t} {'PASS' if ok else 'FAIL'}" for t, ok in checks))
    if s and s.get("ok"):
        ok = s["stream_rows_per_s"] >= TARGETS["scoring"] * s["memory_rows_per_s"]
        lines.append(f"scoring: Parquet throughput >= {TARGETS['scoring']}x in-memory {'PASS' if ok else 'FAIL'}")
    return "\n".join(lines)


def _previous(args) -> dict:
    """Results of an earlier run with the same data and parameters (``--only`` re-runs replace theirs)."""
    path = os.path.join(args.out, "training.json")
    if not os.path.exists(path):
        return {}
    old = _load(path)
    same = ("rows", "features", "rounds", "leaves", "threads", "files", "holdback_rows", "score_rows")
    if any(old["args"].get(k) != getattr(args, k) for k in same):
        return {}
    return old["results"]


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = parse_size(args.rows)
    os.makedirs(args.out, exist_ok=True)
    paths = prepare(args, rows)
    from jobs.training.synthetic import feature_names

    work = os.path.join(args.out, "runs")
    os.makedirs(work, exist_ok=True)
    params = {
        "num_leaves": args.leaves,
        "learning_rate": 0.1,
        "num_threads": args.threads,
        "min_data_in_leaf": 100,
        "metric": ["auc"],
    }
    base = {**paths, "features": feature_names(args.features), "rounds": args.rounds, "params": params, "work": work}
    results = _previous(args)
    for name in [v.strip() for v in args.only.split(",") if v.strip()]:
        ctx = {**base, "variant": name}
        if name == "scoring":
            ctx["model"] = next(
                (
                    os.path.join(work, f"{v}.model.txt")
                    for v in ("streamed_bin", "streamed", "memory")
                    if os.path.exists(os.path.join(work, f"{v}.model.txt"))
                ),
                None,
            )
            if ctx["model"] is None:
                results[name] = {"ok": False, "error": "no trained model to score with"}
                continue
        print(f"[{name}] running ...", flush=True)
        results[name] = r = run_variant(ctx, args.timeout)
        print(
            f"[{name}] {'ok' if r.get('ok') else 'FAILED: ' + str(r.get('error'))} in {r['process_s']:.0f}s, "
            f"peak {r['peak_bytes'] / 2**30:.2f} GiB, load {r['load_avg']:.1f}",
            flush=True,
        )
        table = report(results, args, rows)
        with open(os.path.join(args.out, "training.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(args.out, "training.json"), "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1, default=str)
    print()
    print(report(results, args, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
