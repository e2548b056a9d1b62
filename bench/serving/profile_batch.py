"""Where the time of ``POST /predict/batch`` goes: ``python -m bench.serving.profile_batch``.

Runs the real service (CDNOW, 200-tree LightGBM, embedded store, WAL) in THIS process on uvicorn
(httptools + uvloop, one worker) and drives it with ``wrk`` (C, 1 thread, 4 connections, batches of
100, the bench.serving batch row's bodies). Two runs:

1. unprofiled: predictions/s, wrk p99, and CPU time per prediction of the server process (all its
   threads: event loop + WAL writer + refresher) and of its event-loop thread alone;
2. under ``cProfile`` (event-loop thread only): the cumulative time of each stage of a batch —
   HTTP parsing, body JSON + pydantic validation, key parsing, kernel, model, records, WAL submit,
   metrics, answers, response serialisation — as ms per batch and share of the loop's time.

The profiler inflates Python-heavy stages; the unprofiled CPU time per prediction is the number to
compare across changes. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

#: stage -> the functions whose cumulative time is its time (per function: the largest matching entry,
#: i.e. the outermost; a stage sums its functions). Only plain functions: cProfile counts a coroutine
#: once per resumption, so its cumulative time is not a stage's.
STAGES = {
    "HTTP: uvicorn/httptools parse + ASGI plumbing (rest of the loop)": [],
    "FastAPI: body json.loads + pydantic validation": [
        ("json/__init__.py", "loads"),
        ("fastapi/dependencies/utils.py", "_validate_value_with_model_field"),
    ],
    "parse_query (keys + request_time) x N": [("jobs/serving/app.py", "parse_query")],
    "request ids (uuid4 x N / uuid4_hexes)": [("uuid.py", "uuid4"), ("jobs/serving/app.py", "uuid4_hexes")],
    "features: ModelPredictor.batch_features (fetch + kernel)": [("jobs/serving/app.py", "batch_features")],
    "  of which compute_many (the kernel)": [("features/online.py", "compute_many")],
    "model: scores_of (matrix + LightGBM)": [("jobs/serving/model.py", "scores_of")],
    "  of which LightGBM predict": [("lightgbm/basic.py", "predict")],
    "log records: record() x N / make_records": [
        ("jobs/serving/app.py", "record"),
        ("jobs/serving/log.py", "make_records"),
    ],
    "WAL: submit_many (queue put)": [("jobs/serving/log.py", "submit_many")],
    "metrics: served()": [("jobs/serving/app.py", "served")],
    "shadow offer": [("jobs/serving/shadow.py", "offer")],
    "answers: answer() x N": [("jobs/serving/app.py", "answer")],
    "response: jsonable_encoder": [("fastapi/encoders.py", "jsonable_encoder")],
    "response: JSON render / encode_json": [
        ("starlette/responses.py", "render"),
        ("jobs/serving/app.py", "encode_json"),
    ],
    "response: socket send": [("httptools_impl.py", "send")],
}


def _profile_rows(stats: pstats.Stats) -> tuple[int, float, list[tuple[str, float]]]:
    """(batches, the loop's profiled seconds, [(stage, seconds)])."""
    items = stats.stats.items()

    def ct(fname: str, func: str) -> tuple[float, int]:
        got = [(v[3], v[1]) for (f, _line, fn), v in items if f.endswith(fname) and fn == func]
        return max(got) if got else (0.0, 0)

    batches = ct("jobs/serving/model.py", "scores_of")[1] or 1
    total = stats.total_tt
    rows, top = [], 0.0
    for stage, funcs in STAGES.items():
        sec = sum(ct(f, fn)[0] for f, fn in funcs)
        if not stage.startswith("  "):
            top += sec
        rows.append((stage, sec))
    rows[0] = (rows[0][0], total - top)
    return batches, total, rows


def stage_times(cfg, model, bodies: list[dict], mode: str, wal: Path) -> list[tuple[str, float, float]]:
    """Unprofiled (wall: perf_counter, CPU: process_time of every thread) ms per batch of the batch endpoint's steps, in process, in its order:
    body JSON + pydantic validation, key/time parsing + ids, features (fetch + kernel), model, log
    records, WAL submit + ack, answers, response encoding. No HTTP, no metrics."""
    import asyncio as aio
    import json
    import uuid

    import numpy as np
    import pandas as pd

    from jobs.serving import app as A
    from jobs.serving import model as M
    from jobs.serving.log import ServingLog, log_feature_sets, log_keys, make_record, make_records, model_wal_dir
    from jobs.serving.store import EmbeddedStore, L1Cache, SnapshotVectors, read_lake_events

    decl = cfg.repo().default_model()
    keys = log_keys(decl)
    fs = decl.joins[0].feature_set
    pred = A.Predictor(
        fs, L1Cache(EmbeddedStore(fs, read_lake_events(cfg, fs)), ttl_s=1.0), SnapshotVectors(cfg, fs), model
    )
    mp = A.ModelPredictor(decl, [(decl.joins[0], pred)], model)
    slog = ServingLog(model_wal_dir(wal, decl), decl).start()
    raw = [json.dumps(b).encode() for b in bodies]
    names = list(decl.feature_names)
    laps: dict[str, list[tuple[float, float]]] = {}

    def lap(name: str, t: tuple[float, float]) -> tuple[float, float]:
        now = (time.perf_counter(), time.process_time())
        laps.setdefault(name, []).append((now[0] - t[0], now[1] - t[1]))
        return now

    async def one(body: bytes):
        t = (time.perf_counter(), time.process_time())
        req = A.BatchRequest.model_validate(json.loads(body))
        t = lap("body: json.loads + pydantic validation", t)
        parsed = [A.parse_query(q, keys) for q in req.queries]
        ids = A.uuid4_hexes(len(parsed))
        queries, times = [p[0] for p in parsed], [p[1] for p in parsed]
        t = lap("parse_query x N + request ids", t)
        values, reasons, snaps = mp.batch_features(queries, times, mode)
        t = lap("features: batch_features (fetch + kernel)", t)
        scores = M.scores_of(model, names, values)
        t = lap("model: scores_of (matrix + LightGBM)", t)
        by = (model.name, str(model.version))
        rows = [
            {
                "request_id": i,
                **{lc: q[c] for lc, c, _ in keys},
                "request_time": tt,
                "model_name": by[0],
                "model_version": by[1],
                "score": sc,
                "degraded": r is not None,
                "degraded_reason": r,
                "snapshot_ds": ds,
                "arm": "champion",
                **v,
            }
            for i, q, tt, sc, r, ds, v in zip(ids, queries, times, scores, reasons, snaps, values)
        ]
        common = {
            "mode": mode,
            "feature_set": log_feature_sets(decl),
            "feature_set_fingerprint": mp.fingerprint,
            "latency_ms": 1.0,
        }
        records = make_records(decl, rows, served_at=pd.Timestamp.now(tz="UTC"), **common)
        t = lap("log records: make_records", t)
        fut = slog.submit_many(records)
        t = lap("WAL: submit_many", t)
        await aio.wrap_future(fut)
        t = lap("WAL: wait for the writer's ack", t)
        answers = [
            {
                "request_id": i,
                "entity_id": q[keys[0][1]],
                "keys": q,
                "request_time": tt.isoformat(),
                "mode": mode,
                "score": sc,
                "model": decl.name,
                "model_name": by[0],
                "model_version": by[1],
                "arm": "champion",
                "feature_set_fingerprint": mp.fingerprint,
                "degraded": r is not None,
                "degraded_reason": r,
                "features": v,
            }
            for i, q, tt, sc, r, v in zip(ids, queries, times, scores, reasons, values)
        ]
        t = lap("answers (dicts)", t)
        A.encode_json({"count": len(answers), "predictions": answers})
        t = lap("response: encode_json", t)
        # what the batch path did before (not in the total): FastAPI's encoding, a record and a uuid4 each
        from fastapi.encoders import jsonable_encoder
        from starlette.responses import JSONResponse

        JSONResponse(jsonable_encoder({"count": len(answers), "predictions": answers}))
        t = lap("replaced: jsonable_encoder + JSONResponse", t)
        [make_record(decl, **row, **common, served_at=pd.Timestamp.now(tz="UTC")) for row in rows]
        t = lap("replaced: make_record x N", t)
        [uuid.uuid4().hex for _ in ids]
        lap("replaced: uuid4 x N", t)

    async def run():
        for body in raw:
            await one(body)

    aio.run(run())
    slog.close()
    return [(name, *(np.mean(np.array(v[1:]), axis=0) * 1000)) for name, v in laps.items()]


def _serve(app, port: int):
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False
    )
    return uvicorn.Server(config)


def _wait_up(url: str) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("service did not come up")


def run_once(app_factory, script: Path, seconds: float, connections: int, profile: bool) -> dict:
    import psutil
    import uvloop

    from bench.serving.__main__ import parse_wrk

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _serve(app_factory(), port)
    url = f"http://127.0.0.1:{port}"
    out: dict = {}
    main_tid = threading.get_native_id()

    def drive():
        _wait_up(url)
        proc = psutil.Process()
        threads0 = {t.id: t.user_time + t.system_time for t in proc.threads()}
        if prof is not None:  # on the loop's thread: cProfile profiles the thread that enables it
            out["loop"].call_soon_threadsafe(prof.enable)
        cpu0, t0 = proc.cpu_times(), time.perf_counter()
        text = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu1, wall = proc.cpu_times(), time.perf_counter() - t0
        if prof is not None:
            done = threading.Event()
            out["loop"].call_soon_threadsafe(lambda: (prof.disable(), done.set()))
            done.wait(30)
        threads1 = {t.id: t.user_time + t.system_time for t in proc.threads()}
        names = {t.native_id: t.name for t in threading.enumerate()}
        per: dict[str, float] = {}
        for tid, cpu in threads1.items():
            name = "event loop" if tid == main_tid else names.get(tid, "other (native)")
            per[name] = per.get(name, 0.0) + cpu - threads0.get(tid, 0.0)
        out["threads"] = per
        out["wrk"] = parse_wrk(text)
        out["wall"] = wall
        out["cpu"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        out["loop_cpu"] = threads1.get(main_tid, 0.0) - threads0.get(main_tid, 0.0)
        out["load"] = os.getloadavg()
        server.should_exit = True

    prof = cProfile.Profile() if profile else None
    th = threading.Thread(target=drive, daemon=True)

    async def serve():
        out["loop"] = asyncio.get_running_loop()
        th.start()
        await server.serve()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    th.join()
    if prof is not None:
        out["stats"] = pstats.Stats(prof)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving.profile_batch")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--mode", default="fresh", choices=["fresh", "materialized"])
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--no-profile", action="store_true", help="only the unprofiled run")
    p.add_argument("--dump", help="write the cProfile stats here (pstats format)")
    p.add_argument(
        "--single", action="store_true", help="POST /predict one query per request (the lifecycle rows' load)"
    )
    p.add_argument("--shadow", action="store_true", help="a second 200-tree version shadows every request")
    p.add_argument("--switch-interval-ms", type=float, help="Settings.switch_interval_ms of the service")
    p.add_argument("--shadow-linger-ms", type=float, default=0.0, help="Settings.shadow_linger_ms of the service")
    args = p.parse_args(argv)

    from bench.serving.__main__ import FS, batch_bodies, cdnow_lake, lgbm_model, wrk_script
    from jobs.serving.app import Settings, create_app
    from jobs.serving.model import StaticSource

    day = "1997-04-10"
    with tempfile.TemporaryDirectory(prefix="profile-batch-") as tmp:
        root = Path(tmp)
        cfg = cdnow_lake(root, day)
        model = lgbm_model(cfg, day)
        models = (model, lgbm_model(cfg, day, version=2, seed=1)) if args.shadow else (model,)
        challenger = (model.name, "2") if args.shadow else None
        if args.single:
            from jobs.serving.replay import plan_day
            from jobs.serving.store import read_lake_events

            plan = plan_day(read_lake_events(cfg, FS), day, 20_000, seed=4)
            single = [
                {"entity_id": int(r.entity_id), "request_time": r.request_time.isoformat()} for r in plan.itertuples()
            ]
            script = wrk_script(single, root / "single.lua", "/predict")
            args.size = 1
        else:
            script = wrk_script(batch_bodies(cfg, day, size=args.size), root / "batch.lua", "/predict/batch")
        print(f"lake and model ready; load avg {os.getloadavg()[0]:.2f}", flush=True)
        runs = iter(range(10))

        def factory():
            settings = Settings(
                lake_root=cfg.lake_root,
                wal_dir=str(root / f"wal{next(runs)}"),
                mode=args.mode,
                refresh_s=0,
                shadow=args.shadow,
                switch_interval_ms=args.switch_interval_ms,
                shadow_linger_ms=args.shadow_linger_ms,
            )
            return create_app(settings, model_source=StaticSource(*models, challenger=challenger), cfg=cfg)

        bodies = batch_bodies(cfg, day, size=100)
        stages = [] if args.single else stage_times(cfg, model, bodies, args.mode, root / "wal-stages")
        load = os.getloadavg()
        if stages:
            kept = [st for st in stages if not st[0].startswith("replaced")]
            wall, cpu = sum(w for _, w, _ in kept), sum(c for _, _, c in kept)
            print(f"\n## stages in process, unprofiled ({len(bodies)} batches of 100, load avg {load[0]:.2f})\n")
            print("| step | wall ms per batch | CPU ms per batch (all threads) | CPU share |")
            print("|---|---|---|---|")
            for name, w, c in stages:
                print(f"| {name} | {w:.2f} | {c:.2f} | {c / cpu:.0%} |")
            print(f"| total | {wall:.2f} | {cpu:.2f} | |")
        plain = run_once(factory, script, args.seconds, args.connections, profile=False)
        w = plain["wrk"]
        preds = w["requests"] * args.size
        rate = w["rps"] * args.size
        print(
            f"\n## profile_batch {args.mode}, batches of {args.size}, wrk 1 thread x {args.connections} connections, "
            f"{args.seconds:.0f} s, load avg {plain['load'][0]:.2f} {plain['load'][1]:.2f}\n"
        )
        print(
            f"unprofiled: {rate:,.0f} predictions/s ({w['rps']:.0f} batches/s), wrk p50 {w['p50_ms']:.1f} ms "
            f"p99 {w['p99_ms']:.1f} ms; server CPU {plain['cpu'] / preds * 1e6:.1f} us/prediction "
            f"({plain['cpu'] / w['requests'] * 1000:.2f} ms/batch; event-loop thread "
            f"{plain['loop_cpu'] / w['requests'] * 1000:.2f} ms/batch)"
        )
        print("\n| thread | CPU us per request | share of the process |")
        print("|---|---|---|")
        for name, sec in sorted(plain["threads"].items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {sec / w['requests'] * 1e6:.1f} | {sec / plain['cpu']:.1%} |")
        if args.no_profile:
            return 0
        prof = run_once(factory, script, args.seconds, args.connections, profile=True)
        stats = prof["stats"]
        if args.dump:
            stats.dump_stats(args.dump)
        batches, total, rows = _profile_rows(stats)
        print(
            f"\nprofiled (event-loop thread, cProfile): {batches} batches, {total / batches * 1000:.2f} ms/batch "
            f"profiled ({prof['loop_cpu'] / batches * 1000:.2f} ms/batch thread CPU)\n"
        )
        print("| stage (cProfile, cumulative) | ms per batch | share |")
        print("|---|---|---|")
        for stage, sec in rows:
            print(f"| {stage} | {sec / batches * 1000:.2f} | {sec / total:.0%} |")
        print()
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
