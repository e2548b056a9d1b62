"""Run ONE training-benchmark variant in this fresh process: ``python -m bench.training.child CTX.json``.

Writes ``ctx["result_path"]``: timings, AUC, and this process's ``ru_maxrss`` for itself and
its reaped children (the construct subprocess of ``streamed_bin``), in bytes.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback


def _train(ctx: dict, backend: str, construct: str = "inline", binary: bool = False) -> dict:
    from jobs.training import lgbm, metrics

    params = dict(ctx["params"])
    t0 = time.perf_counter()
    binary_path = os.path.join(ctx["work"], f"{ctx['variant']}.bin") if binary else None
    r = lgbm.train_local(
        ctx["train"],
        [],
        ctx["features"],
        "label",
        params,
        num_boost_round=ctx["rounds"],
        backend=backend,
        construct=construct,
        binary_path=binary_path,
    )
    wall = time.perf_counter() - t0
    r.booster.save_model(os.path.join(ctx["work"], f"{ctx['variant']}.model.txt"))
    peak_train = _maxrss()
    t1 = time.perf_counter()
    y, p = lgbm.score_files(r.booster, ctx["holdback"], ctx["features"], "label")
    return {
        "wall_s": wall,
        "construct_s": r.seconds["construct"],
        "train_s": r.seconds["train"],
        "score_s": time.perf_counter() - t1,
        "auc": metrics.auc(y, p),
        "rounds": r.booster.current_iteration(),
        "peak_until_trained": peak_train,
    }


def _scoring(ctx: dict) -> dict:
    """Rows/s: streaming Parquet -> predict -> Parquet in bounded batches, vs predict on an in-memory matrix.

    The two alternate ``ctx["repeats"]`` times and the best of each is reported: on a shared
    machine the load drifts, and alternating exposes both to the same drift.
    """
    import lightgbm as lgb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.training import lgbm
    from jobs.training.sequence import load_matrix

    booster = lgb.Booster(model_file=ctx["model"])
    files, feats = ctx["score_files"], ctx["features"]
    out = os.path.join(ctx["work"], "scored.parquet")

    def stream() -> int:
        writer, rows = None, 0
        for p, tbl in lgbm.predict_batches(booster, files, feats, extra=["entity_id"], batch_rows=100_000):
            res = pa.table({"entity_id": tbl.column("entity_id"), "score": p})
            writer = writer or pq.ParquetWriter(out, res.schema, compression="zstd")
            writer.write_table(res)
            rows += len(p)
        writer.close()
        return rows

    x = load_matrix(files, feats)
    stream_s, memory_s = [], []
    for _ in range(ctx.get("repeats", 3)):
        t0 = time.perf_counter()
        rows = stream()
        stream_s.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        mem = booster.predict(x)
        memory_s.append(time.perf_counter() - t1)
    same = bool((pq.read_table(out).column("score").to_numpy() == mem).all())
    return {
        "rows": rows,
        "stream_rows_per_s": rows / min(stream_s),
        "memory_rows_per_s": rows / min(memory_s),
        "stream_s": stream_s,
        "memory_s": memory_s,
        "identical": same,
    }


VARIANTS = {
    "memory": lambda ctx: _train(ctx, "memory"),
    "streamed": lambda ctx: _train(ctx, "streamed"),
    "streamed_bin": lambda ctx: _train(ctx, "streamed", construct="subprocess", binary=True),
    "scoring": _scoring,
}


def _maxrss() -> int:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return max(own, kids)


def main(ctx_path: str) -> int:
    with open(ctx_path) as f:
        ctx = json.load(f)
    result = {"variant": ctx["variant"], "ok": False}
    try:
        result.update(VARIANTS[ctx["variant"]](ctx))
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported in the table, not a crash of the whole benchmark
        result["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_s"] = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    result["ru_maxrss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["ru_maxrss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    with open(ctx["result_path"], "w") as f:
        json.dump(result, f, indent=1)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
