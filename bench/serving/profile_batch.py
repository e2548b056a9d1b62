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
    "model: scores_of (matrix + LightGBM)": [("jobs/serving/app.py", "scores_of")],
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

    batches = ct("jobs/serving/app.py", "scores_of")[1] or 1
    total = stats.total_tt
    rows, top = [], 0.0
    for stage, funcs in STAGES.items():
        sec = sum(ct(f, fn)[0] for f, fn in funcs)
        if not stage.startswith("  "):
            top += sec
        rows.append((stage, sec))
    rows[0] = (rows[0][0], total - top)
    return batches, total, rows


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
    args = p.parse_args(argv)

    from bench.serving.__main__ import batch_bodies, cdnow_lake, lgbm_model, wrk_script
    from jobs.serving.app import Settings, create_app
    from jobs.serving.model import StaticSource

    day = "1997-04-10"
    with tempfile.TemporaryDirectory(prefix="profile-batch-") as tmp:
        root = Path(tmp)
        cfg = cdnow_lake(root, day)
        model = lgbm_model(cfg, day)
        script = wrk_script(batch_bodies(cfg, day, size=args.size), root / "batch.lua", "/predict/batch")
        runs = iter(range(10))

        def factory():
            settings = Settings(
                lake_root=cfg.lake_root, wal_dir=str(root / f"wal{next(runs)}"), mode=args.mode, refresh_s=0
            )
            return create_app(settings, model_source=StaticSource(model), cfg=cfg)

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
