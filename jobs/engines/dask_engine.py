"""Dask engine: hash-bucket the inputs to files, then one ``compute`` task per bucket.

Phase 1 streams the input files into ``<scratch>/<events|queries>/bucket=<b>/``
(one task per group of consecutive files, two groups per worker thread). Phase 2 runs one task per bucket: read that bucket's events
and queries (or build a Snapshot's queries from the bucket's events), call
``features.kernel.compute``, write ``<scratch>/out/bucket=<b>.arrow`` and
return its path. The driver yields each bucket's frame as its task completes, so
no process ever holds more than a bucket — the table may be far bigger than
memory. Plain futures, not dask.dataframe: aligned buckets need no shuffle, and
``map_partitions`` over frames with different partition counts fails (MEASURED.md).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator

import fsspec
import pandas as pd
import pyarrow as pa
from distributed import Client, LocalCluster, as_completed, default_client, get_worker
from tqdm.auto import tqdm

from features import kernel
from features.spec import FeatureSet, kernel_fingerprint
from jobs.engines import Snapshot, Snapshots, shipping, snapshot_queries
from jobs.engines.bucketing import (
    SCRATCH_SUFFIX,
    bucket_frame,
    bucket_parquet_files,
    default_events_schema,
    default_queries_schema,
    file_groups,
    file_schema,
    normalize_keys,
    normalize_table,
    read_frame,
    read_scratch,
    write_scratch,
)

log = logging.getLogger(__name__)

#: every Dask worker this platform starts runs it at start (``dask worker --preload ...``)
WORKER_PRELOAD = "jobs.dask_preload"


def run(
    cfg, fs: FeatureSet, events_files: list[str], queries, mode: str, client: Client | None = None
) -> Iterator[pd.DataFrame]:
    """Yields one frame per non-empty bucket (or one empty frame when there is no output).

    The cluster is, in order: ``client`` if given, ``Client(cfg.dask_address)`` when
    set, the current default client, else a LocalCluster created for this run (and
    closed after it). Scratch is ``cfg.scratch("dask")``, removed afterwards; on a
    remote cluster it must be storage the workers can reach (a shared volume, S3...).
    Before anything is submitted the driver's ``features`` package is shipped and every worker's
    kernel checked (``shipping``): a mismatch raises ``KernelMismatchError`` and nothing runs.
    """
    opts = getattr(cfg, "storage_options", None) or {}
    with _connect(cfg, client) as c:
        prepare_client(c)
        scratch = str(cfg.scratch("dask")).rstrip("/")
        try:
            yield from _run(c, cfg.buckets, fs, events_files, queries, mode, scratch, opts)
        finally:
            _remove(scratch, opts)


@contextlib.contextmanager
def _connect(cfg, client: Client | None):
    if client is not None:
        yield client
        return
    if getattr(cfg, "dask_address", None):
        with Client(cfg.dask_address) as c:
            yield c
        return
    try:
        yield default_client()
        return
    except ValueError:
        pass
    with (
        LocalCluster(
            n_workers=cfg.dask_workers,
            threads_per_worker=cfg.dask_threads_per_worker,
            memory_limit=cfg.dask_memory_limit,
            processes=True,
            dashboard_address=":0",  # a free port: several runs may share a machine
            preload=[WORKER_PRELOAD],
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def prepare_client(c: Client) -> None:
    """Ship the ``features`` package to ``c``'s workers and check the kernel each imports."""
    t0 = time.monotonic()
    shipping.ship_to_dask(c)
    reports = shipping.verify_dask(c)
    log.info(
        "dask: %d worker(s) run kernel %s (checked in %.2fs)", len(reports), kernel_fingerprint(), time.monotonic() - t0
    )


def _run(c: Client, n_buckets: int, fs: FeatureSet, events_files, queries, mode, scratch, opts):
    t0 = time.monotonic()
    expected = kernel_fingerprint()
    ev_root, q_root, out_root = f"{scratch}/events", f"{scratch}/queries", f"{scratch}/out"
    # Phase 1: bucket the input files, a group of consecutive files per task (queries held by the
    # driver are bucketed there): two groups per worker thread balance the load, and a bucket gets
    # one file per group instead of one per input file (README, Benchmarks: PIT).
    n_groups = 2 * max(1, sum(c.nthreads().values()))
    event_groups = file_groups(events_files, n_groups)
    jobs = [
        c.submit(
            bucket_parquet_files,
            group,
            ev_root,
            i,
            n_buckets,
            fs.entity,
            list(fs.event_columns),
            opts,
            pure=False,
            key=f"lockstep-bucket-events-{i}-{_token()}",
        )
        for i, group in enumerate(event_groups)
    ]
    frame_query_buckets: dict[int, list[str]] = {}
    if isinstance(queries, pd.DataFrame):
        frame_query_buckets = bucket_frame(queries, q_root, 0, n_buckets, fs.entity, opts)
    elif not isinstance(queries, (Snapshot, Snapshots)):
        jobs += [
            c.submit(
                bucket_parquet_files,
                group,
                q_root,
                i,
                n_buckets,
                fs.entity,
                None,
                opts,
                pure=False,
                key=f"lockstep-bucket-queries-{i}-{_token()}",
            )
            for i, group in enumerate(file_groups(queries, n_groups))
        ]
    events_by_bucket: dict[int, list[str]] = {}
    queries_by_bucket: dict[int, list[str]] = {b: list(p) for b, p in frame_query_buckets.items()}
    is_events = {fut.key: i < len(event_groups) for i, fut in enumerate(jobs)}
    try:
        with tqdm(total=len(jobs), desc="bucketing files", unit="file", disable=None) as bar:
            for fut in as_completed(jobs):
                target = events_by_bucket if is_events[fut.key] else queries_by_bucket
                for b, paths in fut.result().items():
                    target.setdefault(b, []).extend(paths)
                fut.release()
                bar.update()
    finally:
        _cancel(c, jobs)
    for paths in (*events_by_bucket.values(), *queries_by_bucket.values()):
        paths.sort()  # part-<file index>: a deterministic read order
    log.info(
        "dask: bucketed %d file(s) in %d task(s) into %d bucket(s) in %.1fs",
        len(events_files) + (0 if isinstance(queries, (pd.DataFrame, Snapshot, Snapshots)) else len(queries)),
        len(jobs),
        n_buckets,
        time.monotonic() - t0,
    )

    events_schema = (
        file_schema(events_files[0], fs.entity, fs.event_columns, opts) if events_files else default_events_schema(fs)
    )
    if isinstance(queries, (Snapshot, Snapshots)):
        work = {b: queries for b in events_by_bucket}
        decode = True
    else:
        work = queries_by_bucket
        decode = not isinstance(queries, pd.DataFrame)  # a frame's categoricals round-trip as such

    # Phase 2: one compute task per bucket that has queries (or, for a Snapshot, events).
    futs = [
        c.submit(
            compute_bucket,
            expected,
            fs,
            mode,
            events_by_bucket.get(b, []),
            q,
            f"{out_root}/bucket={b}{SCRATCH_SUFFIX}",
            events_schema,
            decode,
            opts,
            pure=False,
            key=f"lockstep-compute-{b}-{_token()}",
        )
        for b, q in sorted(work.items())
    ]
    yielded = 0
    try:
        with tqdm(total=len(futs), desc="computing buckets", unit="bucket", disable=None) as bar:
            for fut in as_completed(futs):
                path, rows = fut.result()
                fut.release()
                bar.update()
                if rows:
                    yielded += 1
                    yield _read(path, opts)
    finally:
        _cancel(c, futs)  # a consumer that stops early (or a failed task) leaves nothing running
    if not yielded:
        yield _empty_result(fs, queries, events_schema, mode, opts)
    log.info("dask: %d bucket(s) computed in %.1fs", len(futs), time.monotonic() - t0)


def compute_bucket(
    expected_kernel: str,
    fs: FeatureSet,
    mode: str,
    event_paths: list[str],
    queries,
    out_path: str,
    events_schema: pa.Schema,
    decode_queries: bool,
    opts: dict,
) -> tuple[str, int]:
    """One bucket on a worker: check the kernel, read, ``compute``, write ``out_path``; returns (path, rows)."""
    shipping.check_here(expected_kernel, get_worker().address)
    events = read_frame(event_paths, fs.entity, fs.event_columns, opts, empty=events_schema)
    if isinstance(queries, (Snapshot, Snapshots)):
        q = snapshot_queries(events, fs, queries, mode)
    else:
        q = read_frame(queries, fs.entity, None, opts, decode_dictionaries=decode_queries)
    out = kernel.compute(events, q, fs, mode)
    del events, q
    if len(out):
        fsys, p = fsspec.core.url_to_fs(out_path, **opts)
        fsys.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        with fsys.open(p, "wb") as f:
            write_scratch(f, pa.Table.from_pandas(out, preserve_index=False))
    return out_path, len(out)


def _read(path: str, opts: dict) -> pd.DataFrame:
    fsys, p = fsspec.core.url_to_fs(path, **opts)
    with fsys.open(p, "rb") as f:
        return read_scratch(f).to_pandas()


def _empty_result(fs, queries, events_schema, mode, opts) -> pd.DataFrame:
    events = events_schema.empty_table().to_pandas()
    if isinstance(queries, (Snapshot, Snapshots)):
        q = snapshot_queries(events, fs, queries, mode)
    elif isinstance(queries, pd.DataFrame):
        q = queries.iloc[:0].copy()
        q[fs.entity] = normalize_keys(q[fs.entity])
    else:
        schema = file_schema(queries[0], fs.entity, None, opts) if queries else default_queries_schema(fs)
        q = normalize_table(schema.empty_table(), fs.entity).to_pandas()
    return kernel.compute(events, q, fs, mode)


def _cancel(c: Client, futures, timeout: float = 60.0) -> None:
    """Cancel ``futures`` and wait until none of them is still running on a worker.

    Cancelling does not stop a task already running; one that finishes after the
    scratch directory was removed would write its output into a re-created one.
    """
    keys = {f.key for f in futures}
    c.cancel(futures)
    deadline = time.monotonic() + timeout
    while keys and time.monotonic() < deadline:
        running = {k for ks in c.processing().values() for k in ks}
        if not running & keys:
            return
        time.sleep(0.05)


def _remove(root: str, opts: dict) -> None:
    fsys, p = fsspec.core.url_to_fs(root, **opts)
    try:
        if fsys.exists(p):
            fsys.rm(p, recursive=True)
    except OSError as exc:  # cleanup must not hide the run's own error
        log.warning("dask: could not remove scratch %s: %s", root, exc)


def _token() -> str:
    return uuid.uuid4().hex[:12]
