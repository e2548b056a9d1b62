"""Where a ``/predict`` handler's time goes, shadow off vs on: ``python -m bench.serving.handler_split``.

The shadow worker is a thread of the service process: what it can take from a request is the GIL.
On this shared 2-core machine a request also loses time to the OS (its thread runnable but another
process on the core). This splits the handler's synchronous work (``ModelPredictor.features`` +
``score``, on the event-loop thread, no awaits in between) of every request into

* thread CPU (``time.thread_time_ns``),
* run-queue wait (``/proc/thread-self/schedstat``: runnable, not running — the machine),
* the rest: asleep inside code that does no I/O, i.e. waiting to take the GIL back (LightGBM and
  numpy release it; another thread — WAL writers, the shadow worker — may hold it meanwhile),

for runs of the real service in THIS process (uvicorn, httptools + uvloop, as
``bench.serving.profile_batch``) under ``wrk`` (1 thread x 16 connections), arms interleaved
(``--arms off,on,on,off``; ``on:1`` = shadow on with ``switch_interval_ms=1``). Also the CPU per
request of each thread. Linux only (schedstat).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving.handler_split")
    p.add_argument("--arms", default="off,on,on,off,off,on", help="comma-separated off|on[:switch interval ms]")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument(
        "--registry", action="store_true", help="models from the lake's MLflow registry (as bench.serving's rows)"
    )
    args = p.parse_args(argv)

    from bench.serving.__main__ import FS, cdnow_lake, lgbm_model, register_versions, wrk_script
    from bench.serving.profile_batch import run_once
    from jobs.serving import app as appmod
    from jobs.serving.app import Settings, create_app
    from jobs.serving.model import StaticSource
    from jobs.serving.replay import plan_day
    from jobs.serving.store import read_lake_events

    day = "1997-04-10"
    with tempfile.TemporaryDirectory(prefix="handler-split-") as tmp:
        root = Path(tmp)
        cfg = cdnow_lake(root, day)
        champion, challenger = lgbm_model(cfg, day), lgbm_model(cfg, day, version=2, seed=1)
        if args.registry:
            register_versions(cfg, day)  # v1 champion, v2 challenger alias
        plan = plan_day(read_lake_events(cfg, FS), day, 20_000, seed=4)
        bodies = [
            {"entity_id": int(r.entity_id), "request_time": r.request_time.isoformat()} for r in plan.itertuples()
        ]
        script = wrk_script(bodies, root / "single.lua", "/predict")
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)  # this (the event loop's) thread's
        samples: list[tuple[int, int, int]] = []

        def runq() -> int:
            return int(os.pread(fd, 64, 0).split()[1])

        def timed(fn):
            def inner(*a, **k):
                w0, c0, q0 = time.perf_counter_ns(), time.thread_time_ns(), runq()
                try:
                    return fn(*a, **k)
                finally:
                    samples.append((time.perf_counter_ns() - w0, time.thread_time_ns() - c0, runq() - q0))

            return inner

        mp = appmod.ModelPredictor
        mp.features, mp.score = timed(mp.features), timed(mp.score)
        print(f"\n## handler_split, wrk 1 thread x {args.connections} connections, {args.seconds:.0f} s per run\n")
        print(
            "| arm | req/s | client p99 ms | handler wall mean / p99 us | CPU mean us | run-queue mean / p99 us "
            "| GIL wait mean / p99 us | threads, CPU us per request | load |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for n, spec in enumerate(args.arms.split(",")):
            arm, _, interval = spec.partition(":")
            on = arm == "on"

            def factory(on=on, interval=interval, n=n):
                settings = Settings(
                    lake_root=cfg.lake_root,
                    wal_dir=str(root / f"wal{n}"),
                    refresh_s=0,
                    shadow=on,
                    switch_interval_ms=float(interval) if interval else None,
                    model_poll_s=30.0,
                )
                if args.registry:  # the service's own registry source (shadow on: the challenger alias)
                    return create_app(settings, cfg=cfg)
                src = StaticSource(champion, challenger, challenger=(champion.name, "2") if on else None)
                return create_app(settings, model_source=src, cfg=cfg)

            samples.clear()
            out = run_once(factory, script, args.seconds, args.connections, profile=False)
            a = np.array(samples[: len(samples) // 2 * 2], dtype=np.float64) / 1e3  # us
            per = a[0::2] + a[1::2]  # features + score of one request
            wall, cpu, queued = per[:, 0], per[:, 1], per[:, 2]
            gil = np.maximum(wall - cpu - queued, 0.0)
            w, threads = out["wrk"], out["threads"]
            top = sorted(threads.items(), key=lambda kv: -kv[1])[:4]
            print(
                f"| {spec} | {w['rps']:.0f} | {w['p99_ms']:.1f} | {wall.mean():.0f} / {np.percentile(wall, 99):.0f} "
                f"| {cpu.mean():.0f} | {queued.mean():.0f} / {np.percentile(queued, 99):.0f} | {gil.mean():.0f} / "
                f"{np.percentile(gil, 99):.0f} | "
                + ", ".join(f"{k} {v / max(w['requests'], 1) * 1e6:.0f}" for k, v in top)
                + f" | {os.getloadavg()[0]:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
