"""``python -m bench.tuning``: successive halving vs a plain random search, same candidates, on 2 cores.

    python -m bench.tuning                          # 600k training rows x 22 features, 27 candidates
    python -m bench.tuning --rows 100k --candidates 9   # a quick look

Both searches run on a ``distributed`` LocalCluster of ``--workers`` processes x 1 thread
(LightGBM ``num_threads=1`` per fit), one after the other, and score every fit on the same
out-of-time validation rows (``jobs.training.synthetic``: the training files and the validation
file are generated with different seeds; label and features as in the training benchmark):

* ``halving``: ``jobs.training.search.search`` — candidate 0 the defaults, ``N - 1`` draws from
  ``tune.search_space()``, rungs of ``rows / eta**k`` rows up to the *full* training set, the
  best ``1/eta`` kept (plus the defaults, the job's incumbent guard), early stopping on the
  validation AUC;
* ``random``: the peer, ``dask_ml.model_selection.RandomizedSearchCV`` over exactly the same
  ``N`` configurations (a list of one-point grids, so the sampler draws each once), every one
  fit on the full training set, with a ``PredefinedSplit`` (training rows vs validation rows),
  ``scoring="roc_auc"``, ``refit=False`` and the same early stopping on the validation rows.

Wall time covers loading the Parquet inputs and the whole search. The final score of each is
the best validation AUC of a configuration fit on the full training set. Target (issue 7):
halving >= 3x faster, its final validation AUC within 0.005 of the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from bench.data import parse_size

TARGETS = {"speedup": 3.0, "auc": 0.005}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tuning", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="600k", help="training rows (default 600k)")
    p.add_argument("--valid-rows", default=None, help="validation rows (default: rows / 6)")
    p.add_argument("--features", type=int, default=22)
    p.add_argument("--candidates", type=int, default=27)
    p.add_argument("--eta", type=int, default=3)
    p.add_argument("--rounds", type=int, default=300, help="boosting rounds cap per fit")
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes x 1 thread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="halving,random")
    p.add_argument("--out", default="bench/results/tuning")
    return p.parse_args(argv)


def prepare(args, rows: int, valid_rows: int) -> dict:
    from jobs.training import synthetic

    root = os.path.join(args.out, "data")
    key = {"rows": rows, "valid_rows": valid_rows, "features": args.features, "v": 1}
    stamp = os.path.join(root, "params.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == key:
                return {
                    "train": sorted(os.path.join(root, "train", n) for n in os.listdir(os.path.join(root, "train"))),
                    "valid": [os.path.join(root, "valid", "part-00000.parquet")],
                }
    print(f"generating {rows:,} training + {valid_rows:,} validation rows x {args.features} features ...", flush=True)
    paths = {
        "train": synthetic.write_files(os.path.join(root, "train"), rows, args.features, files=4, seed=11),
        "valid": synthetic.write_files(os.path.join(root, "valid"), valid_rows, args.features, files=1, seed=12),
    }
    with open(stamp, "w") as f:
        json.dump(key, f)
    return paths


class LoadSampler:
    """The 1-minute load average, sampled every 5 s while a variant runs."""

    def __init__(self):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(5):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, memory_limit="6GiB", dashboard_address=None
    )
    return cluster, Client(cluster)


def run_halving(args, paths, features, rows: int) -> dict:
    import math

    from jobs.training import search as tune

    # as many rungs as halving needs to get from N candidates to 1: r_0 = rows / eta**s
    s = math.floor(math.log(args.candidates, args.eta) + 1e-9)
    min_rows = rows // args.eta**s

    cluster, client = _cluster(args.workers)
    try:
        with LoadSampler() as load:
            t0 = time.perf_counter()
            res = tune.search(
                client,
                paths["train"],
                paths["valid"],
                features,
                "label",
                n_candidates=args.candidates,
                eta=args.eta,
                min_rows=min_rows,
                max_rows=rows,
                seed=args.seed,
                num_boost_round=args.rounds,
                patience=args.patience,
                max_seconds=10**9,
                progress=lambda m: print("  " + m, flush=True),
            )
            wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    rows = res.settings["rung_rows"]
    return {
        "ok": True,
        "wall_s": wall,
        "best_auc": res.best_auc,
        "best_candidate": res.best_id,
        "best_params": res.best_params,
        "fits": res.n_fits,
        "rung_rows": rows,
        "load_avg": load.mean,
        "cpu_fit_s": sum(r.seconds for r in res.records),
        "rungs": res.rungs,
        "table": [
            {
                "candidate": r.candidate,
                "rung": r.rung,
                "rows": r.rows,
                "auc": r.valid_auc,
                "rounds": r.rounds,
                "seconds": r.seconds,
            }
            for r in res.records
        ],
    }


def run_random(args, paths, features) -> dict:
    import lightgbm as lgb
    import numpy as np
    from dask_ml.model_selection import RandomizedSearchCV
    from sklearn.model_selection import PredefinedSplit

    from jobs.training import search as tune
    from jobs.training.sequence import load_matrix, read_column

    cluster, client = _cluster(args.workers)
    try:
        with LoadSampler() as load:
            t0 = time.perf_counter()
            x = load_matrix(paths["train"], features)
            y = read_column(paths["train"], "label")
            xv = load_matrix(paths["valid"], features)
            yv = read_column(paths["valid"], "label")
            cands = tune.sample_candidates(args.candidates, args.seed)
            grid = [{k: [v] for k, v in c.items()} for c in cands]
            est = lgb.LGBMClassifier(
                objective="binary",
                n_estimators=args.rounds,
                n_jobs=1,
                random_state=args.seed,
                deterministic=True,
                force_row_wise=True,
                verbosity=-1,
                metric="auc",
                data_random_seed=args.seed,
            )
            xa = np.concatenate([x, xv])
            ya = np.concatenate([y, yv])
            split = PredefinedSplit(np.r_[np.full(len(y), -1), np.zeros(len(yv), dtype=int)])
            search = RandomizedSearchCV(
                est,
                grid,
                n_iter=len(cands),
                cv=split,
                scoring="roc_auc",
                refit=False,
                random_state=args.seed,
                scheduler=client,
            )
            search.fit(
                xa,
                ya,
                eval_X=(xv,),
                eval_y=(yv,),
                eval_metric="auc",
                callbacks=[lgb.early_stopping(args.patience, first_metric_only=True, verbose=False)],
            )
            wall = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    scores = search.cv_results_["mean_test_score"]
    best = int(np.argmax(scores))
    params = search.cv_results_["params"][best]
    return {
        "ok": True,
        "wall_s": wall,
        "best_auc": float(scores[best]),
        "best_params": params,
        "best_candidate": cands.index({k: params[k] for k in cands[0]}),
        "fits": len(scores),
        "load_avg": load.mean,
        "table": [
            {"candidate": cands.index({k: p[k] for k in cands[0]}), "auc": float(s)}
            for p, s in zip(search.cv_results_["params"], scores)
        ],
    }


def report(results: dict, args, rows: int, valid_rows: int) -> str:
    h, r = results.get("halving", {}), results.get("random", {})
    lines = [
        (
            f"Search over {args.candidates} LightGBM configurations, {rows:,} training rows x {args.features} "
            f"features, {valid_rows:,} validation rows, up to {args.rounds} rounds (patience {args.patience}), "
            f"{args.workers} Dask workers x 1 thread, seed {args.seed}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        ),
        "",
        "| search | fits | wall s | best validation AUC (full data) | best candidate | load avg |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in (
        (f"successive halving (eta {args.eta}, rungs {h.get('rung_rows')})", h),
        ("dask-ml RandomizedSearchCV, full data", r),
    ):
        if not res:
            continue
        if not res.get("ok"):
            lines.append(f"| {name} | failed: {res.get('error')} |||||")
            continue
        lines.append(
            f"| {name} | {res['fits']} | {res['wall_s']:.0f} | {res['best_auc']:.5f} | "
            f"{res['best_candidate']} | {res['load_avg']:.1f} |"
        )
    if h.get("ok") and r.get("ok"):
        speed = r["wall_s"] / h["wall_s"]
        diff = h["best_auc"] - r["best_auc"]
        ok = speed >= TARGETS["speedup"] and diff >= -TARGETS["auc"]
        lines += [
            "",
            "| speed-up (random / halving) | AUC halving - random | target | status |",
            "|---|---|---|---|",
            (
                f"| {speed:.2f}x | {diff:+.5f} | >= {TARGETS['speedup']:g}x, within {TARGETS['auc']} AUC | "
                f"{'MET' if ok else 'MISSED'} |"
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = parse_size(args.rows)
    valid_rows = parse_size(args.valid_rows) if args.valid_rows else rows // 6
    os.makedirs(args.out, exist_ok=True)
    paths = prepare(args, rows, valid_rows)
    from jobs.training.synthetic import feature_names

    features = feature_names(args.features)
    results = {}
    for name in [v.strip() for v in args.only.split(",") if v.strip()]:
        print(f"[{name}] running (load {os.getloadavg()[0]:.1f}) ...", flush=True)
        try:
            results[name] = (
                run_halving(args, paths, features, rows) if name == "halving" else run_random(args, paths, features)
            )
        except Exception as exc:  # noqa: BLE001 - a failed variant is reported in the table
            import traceback

            traceback.print_exc()
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        r = results[name]
        print(
            f"[{name}] {'ok' if r.get('ok') else 'FAILED'} "
            + (f"in {r['wall_s']:.0f}s, best AUC {r['best_auc']:.5f}" if r.get("ok") else ""),
            flush=True,
        )
    table = report(results, args, rows, valid_rows)
    print()
    print(table)
    with open(os.path.join(args.out, "..", "tuning.md"), "a") as f:
        f.write(f"\n{table}")
    with open(os.path.join(args.out, "tuning.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
