"""Out of core: the Dask engine on an events table more than twice a worker's memory limit.

Worker processes are capped (``memory_limit``; the nanny kills a worker at 95%
of it, and ``allowed-failures=0`` turns one kill into a failed run), so the run
only completes if no task ever holds much more than one bucket. A sample of
entities is then checked against ``compute`` on just their own events.
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features import kernel
from features.registry import get
from jobs import engines
from jobs.engines import Snapshot

FS = get("customer_activity_v1")
KEY = FS.entity
#: 320 MiB until the kernel's loops were numba-compiled: numba and the loaded kernel add ~110-130 MiB
#: to every worker process (peaks 249 -> 361-377 MiB on 11M events). 448 MiB then, until a fresh CI
#: machine's worker crossed the nanny's 95% (425 MiB): a cold numba cache (loops compiled in each
#: worker) measured 382-390 MiB here. The peak does not grow with the table (same peaks at 11M and
#: 15.5M events): it is the worker's fixed cost, so the limit keeps ~100 MiB above it and the table
#: stays > 2x the limit.
WORKER_LIMIT = 512 * 2**20
EVENTS = 17_500_000
BUCKETS = 128


def _memory_peak(dask_worker) -> float:
    return max(dask_worker.monitor.quantities["memory"])


@pytest.mark.slow
@pytest.mark.dask
@pytest.mark.timeout(600)
def test_dask_engine_runs_tables_bigger_than_worker_memory(tmp_path, make_config):
    from distributed import Client, LocalCluster

    from jobs.ingest.cdnow_synthetic import write_parquet_files

    files = write_parquet_files(
        tmp_path / "events", entities=100_000, events=EVENTS, days=20, seed=11, chunk_rows=200_000, progress=False
    )
    # What the table takes in memory as pandas (what the local engine would hold), file by file.
    in_memory = sum(pq.read_table(f).to_pandas().memory_usage(deep=True).sum() for f in files)
    assert in_memory > 2 * WORKER_LIMIT, f"table is only {in_memory / 2**20:.0f} MiB"

    as_of = pd.Timestamp("2024-01-15 12:00", tz="UTC")
    rng = np.random.default_rng(0)
    sample = set(rng.choice(100_000, 300, replace=False).tolist())
    cfg = make_config("dask", buckets=BUCKETS)
    # Workers keep no managed data (tasks return file paths), so spilling and pausing are
    # off: a worker over its limit is killed, and with allowed-failures=0 the run fails.
    settings = {
        "distributed.scheduler.allowed-failures": 0,
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
    }
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=WORKER_LIMIT, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        rows, n_frames, picked = 0, 0, []
        for frame in engines.run(cfg, FS, files, Snapshot(as_of), "known_at", client=client):
            rows += len(frame)
            n_frames += 1
            picked.append(frame[frame[KEY].isin(sample)])
        peaks = client.run(_memory_peak)
    assert n_frames == BUCKETS
    assert all(p < WORKER_LIMIT for p in peaks.values())
    print(
        f"\nevents {EVENTS:,}: {in_memory / 2**20:.0f} MiB in memory; worker limit "
        f"{WORKER_LIMIT / 2**20:.0f} MiB; worker peaks " + ", ".join(f"{p / 2**20:.0f} MiB" for p in peaks.values())
    )

    got = pd.concat(picked, ignore_index=True).sort_values(KEY, ignore_index=True)
    events = pq.read_table(files, filters=[(KEY, "in", sorted(sample))]).to_pandas()
    want = kernel.compute(events, kernel.snapshot_queries(events, FS, as_of), FS)
    assert len(want) > 200
    pd.testing.assert_frame_equal(got, want, check_exact=True)

    visible = pq.read_table(files, columns=[KEY, FS.ingested_at, FS.timestamp]).to_pandas()
    n_visible = visible.loc[(visible[FS.ingested_at] < as_of) & (visible[FS.timestamp] < as_of), KEY].nunique()
    assert rows == n_visible
