"""What re-verifying the content fingerprint on read costs (``python -m bench.lake``).

Writes one partition of raw-event-shaped rows (7 columns: 3 int64, 2 timestamps, a float, a short
string) and times every reader path with ``verify_content`` off and on, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd

from jobs.lake import Lake


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400_000_000, n), unit="us")
    return pd.DataFrame(
        {
            "event_id": np.arange(n, dtype="int64"),
            "customer_id": rng.integers(1, 200_000, n),
            "event_ts": ts,
            "ingested_at": ts + pd.Timedelta(minutes=5),
            "n_items": rng.integers(1, 10, n),
            "amount": rng.gamma(2.0, 15.0, n).round(2),
            "category": rng.choice(["a-low", "b-mid", "c-high", "d-bulk"], n),
        }
    )


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.lake")
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        Lake(tmp, key=b"").table("events").write_partition("2024-01-01", frame(args.rows), producer={"job": "bench"})
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
        print(f"{args.rows:,} rows, {size / 2**20:.1f} MiB of Parquet; {os.cpu_count()} cpus; load {os.getloadavg()}")
        paths = {
            "read": lambda t: t.read("2024-01-01"),
            "read 2 columns": lambda t: t.read("2024-01-01", columns=["customer_id", "amount"]),
            "iter_batches": lambda t: sum(len(b) for b in t.iter_batches("2024-01-01")),
            "files (engines)": lambda t: t.files("2024-01-01"),
            "dataset().to_table()": lambda t: t.dataset("2024-01-01").to_table(),
        }
        print(f"{'reader':<22}{'off s':>8}{'on s':>8}{'on/off':>8}")
        for name, fn in paths.items():
            off = best(lambda fn=fn: fn(Lake(tmp, verify_content=False, key=b"").table("events")), args.repeat)
            on = best(lambda fn=fn: fn(Lake(tmp, verify_content=True, key=b"").table("events")), args.repeat)
            print(f"{name:<22}{off:>8.3f}{on:>8.3f}{on / off:>8.2f}")
        print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
