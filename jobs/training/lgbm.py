"""LightGBM on training-set Parquet: streamed (external memory), in-memory (reference) and Dask.

Streamed: one ``ParquetSequence`` per file feeds ``lgb.Dataset`` — bins from a sample of
``bin_construct_sample_cnt`` rows, then one sequential pass — and only the binned dataset and
the labels stay in memory. With ``construct="subprocess"`` the dataset is built in a spawned
process and handed over as LightGBM's binary file, so the training process never holds a
raw row (the allocator does not give a construct's peak back to the OS; MEASURED.md: 2.4 GiB
instead of 3.3 GiB at 10M x 50). Early stopping watches the first metric on the out-of-time
validation range.

Dask: ``DaskLGBMClassifier`` on a ``distributed`` cluster trains a fixed number of rounds;
the best iteration is then chosen with the same patience rule from the staged validation
AUC, computed on the driver over the whole validation range (LightGBM's Dask evaluation would
see only one worker's share).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np

from jobs.training import BACKENDS, CONSTRUCT, metrics
from jobs.training.sequence import (
    iter_tables,
    load_matrix,
    parquet_sequences,
    read_column,
    to_matrix,
)

DEFAULT_PARAMS: dict = {
    "objective": "binary",
    "metric": ["auc", "binary_logloss"],  # the first one drives early stopping
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.9,
    "bin_construct_sample_cnt": 200_000,
    "seed": 0,
    # Explicit, because the Sequence path samples bin boundaries with the dataset parameters
    # only (where ``seed`` is not passed on): without it, streamed and in-memory bins differ.
    "data_random_seed": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


@dataclass
class TrainResult:
    booster: lgb.Booster
    best_iteration: int
    history: dict[str, list[float]] = field(default_factory=dict)  # validation metric per iteration
    seconds: dict[str, float] = field(default_factory=dict)
    train_rows: int = 0
    valid_rows: int = 0


def resolve_params(params: dict | None) -> dict:
    """``DEFAULT_PARAMS`` updated with ``params``; a given ``seed`` also seeds bin sampling."""
    out = {**DEFAULT_PARAMS, **(params or {})}
    if params and "seed" in params and "data_random_seed" not in params:
        out["data_random_seed"] = params["seed"]
    return out


def peak_rss_bytes() -> int:
    """Peak resident set of this process and of its reaped children (the larger), in bytes.

    This process's own peak is VmHWM: ``ru_maxrss`` of RUSAGE_SELF would also carry the
    RSS of the process this one was forked from (Linux keeps it across exec), so a small
    job started by a large parent (pytest with Spark loaded) would report the parent's peak.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as fh:
            own = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) * 1024  # KiB


# ---- datasets -----------------------------------------------------------------------------------
def streamed_dataset(
    files: Sequence[str],
    features: Sequence[str],
    label: str,
    params: dict,
    *,
    reference: lgb.Dataset | None = None,
    batch_size: int = 65_536,
    storage_options: dict | None = None,
) -> lgb.Dataset:
    """A constructed ``lgb.Dataset`` streamed from ``files``; no reference to the readers survives."""
    seqs = parquet_sequences(files, features, batch_size=batch_size, storage_options=storage_options)
    y = read_column(files, label, storage_options=storage_options)
    if not seqs:
        raise ValueError("no rows in the training-set files")
    ds = lgb.Dataset(seqs, label=y, feature_name=list(features), params=params, reference=reference, free_raw_data=True)
    ds.construct()
    for s in seqs:
        s.release()
    del seqs
    return ds


def memory_dataset(
    files: Sequence[str],
    features: Sequence[str],
    label: str,
    params: dict,
    *,
    reference: lgb.Dataset | None = None,
    storage_options: dict | None = None,
) -> lgb.Dataset:
    """The same dataset from a float64 matrix of all rows (the in-memory reference path)."""
    x = load_matrix(files, features, storage_options)
    y = read_column(files, label, storage_options=storage_options)
    ds = lgb.Dataset(x, label=y, feature_name=list(features), params=params, reference=reference, free_raw_data=True)
    ds.construct()
    del x
    return ds


def construct_binary(
    files: Sequence[str],
    features: Sequence[str],
    label: str,
    params: dict,
    path: str,
    storage_options: dict | None = None,
) -> str:
    """Stream ``files`` into LightGBM's binary dataset file at ``path``; returns ``path``."""
    ds = streamed_dataset(files, features, label, params, storage_options=storage_options)
    ds.save_binary(path)
    del ds
    return path


def construct_binary_in_subprocess(files, features, label, params, path, storage_options=None) -> str:
    """``construct_binary`` in a fresh interpreter (``python -m jobs.training.lgbm construct SPEC``).

    A fresh process rather than multiprocessing: fork would clone OpenMP state, and spawn
    re-imports the caller's ``__main__`` (a DAG, a test runner). Its peak memory shows in
    ``peak_rss_bytes`` (``RUSAGE_CHILDREN``) once it has exited.
    """
    spec = {
        "files": list(files),
        "features": list(features),
        "label": label,
        "params": dict(params),
        "path": path,
        "storage_options": storage_options or {},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.training.lgbm", "construct", fh.name],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(
            f"LightGBM dataset construction failed in a subprocess (exit code "
            f"{proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return path


# ---- training -----------------------------------------------------------------------------------
def train_local(
    train_files: Sequence[str],
    valid_files: Sequence[str],
    features: Sequence[str],
    label: str,
    params: dict | None = None,
    *,
    num_boost_round: int = 500,
    patience: int = 30,
    backend: str = "streamed",
    construct: str = "inline",
    binary_path: str | None = None,
    storage_options: dict | None = None,
) -> TrainResult:
    """Train on one machine with early stopping on the validation files.

    ``backend="streamed"`` (Sequence readers) or ``"memory"`` (float matrix). With
    ``binary_path`` the constructed training dataset is saved there and training reads the
    ``.bin``; ``construct="subprocess"`` builds it in a child process (a temp path if none).
    """
    if backend not in ("streamed", "memory"):
        raise ValueError(f"backend must be 'streamed' or 'memory' here, got {backend!r}")
    if construct not in CONSTRUCT:
        raise ValueError(f"construct must be one of {CONSTRUCT}, got {construct!r}")
    params = resolve_params(params)
    t0 = time.perf_counter()
    tmp = None
    if construct == "subprocess":
        if backend != "streamed":
            raise ValueError("construct='subprocess' needs backend='streamed'")
        if binary_path is None:
            tmp = tempfile.TemporaryDirectory(prefix="lockstep-lgb-")
            binary_path = os.path.join(tmp.name, "train.bin")
        construct_binary_in_subprocess(train_files, features, label, params, binary_path, storage_options)
        train = lgb.Dataset(binary_path, params=params, free_raw_data=True).construct()
    elif backend == "streamed":
        train = streamed_dataset(train_files, features, label, params, storage_options=storage_options)
    else:
        train = memory_dataset(train_files, features, label, params, storage_options=storage_options)
    if binary_path is not None and construct == "inline":
        train.save_binary(binary_path)
        del train
        train = lgb.Dataset(binary_path, params=params, free_raw_data=True).construct()
    t1 = time.perf_counter()
    valid = None
    if valid_files:
        make = streamed_dataset if backend == "streamed" else memory_dataset
        valid = make(valid_files, features, label, params, reference=train, storage_options=storage_options)
    evals: dict = {}
    callbacks = [lgb.record_evaluation(evals)]
    if valid is not None:
        callbacks.append(lgb.early_stopping(patience, first_metric_only=True, verbose=False))
    booster = lgb.train(
        params,
        train,
        num_boost_round=num_boost_round,
        valid_sets=[valid] if valid is not None else [],
        valid_names=["valid"] if valid is not None else [],
        callbacks=callbacks,
    )
    t2 = time.perf_counter()
    best = booster.best_iteration or booster.current_iteration()
    result = TrainResult(
        booster,
        int(best),
        history=dict(evals.get("valid", {})),
        seconds={"construct": t1 - t0, "train": t2 - t1},
        train_rows=int(train.num_data()),
        valid_rows=int(valid.num_data()) if valid else 0,
    )
    del train, valid
    if tmp is not None:
        tmp.cleanup()
    return result


def train_dask(
    client,
    train_files: Sequence[str],
    valid_files: Sequence[str],
    features: Sequence[str],
    label: str,
    params: dict | None = None,
    *,
    num_boost_round: int = 500,
    patience: int = 30,
    storage_options: dict | None = None,
) -> TrainResult:
    """Train with ``lightgbm.DaskLGBMClassifier`` on ``client``'s cluster; best iteration from the
    staged validation AUC (same patience rule as early stopping)."""
    import dask.dataframe as dd
    from distributed import wait

    params = resolve_params(params)
    t0 = time.perf_counter()
    ddf = dd.read_parquet(list(train_files), columns=[*features, label], storage_options=storage_options or None)
    # lightgbm issue #6920: split X and y only from a persisted frame (MEASURED.md) — and one
    # already in the dtype contract: casting after the persist failed the same way here.
    ddf = ddf.astype({**{f: "float64" for f in features}, label: "int64"}).persist()
    wait(ddf)
    x, y = ddf[list(features)], ddf[label]
    # Dask sets the threads per worker itself (num_threads would be ignored with a warning).
    kwargs = {k: v for k, v in params.items() if k not in ("objective", "metric", "num_threads", "n_jobs")}
    model = lgb.DaskLGBMClassifier(client=client, objective="binary", n_estimators=num_boost_round, **kwargs)
    model.fit(x, y, feature_name=list(features))
    booster = model.booster_
    train_rows = len(ddf)
    del model, x, y, ddf
    t1 = time.perf_counter()
    best, history, valid_rows = num_boost_round, {}, 0
    if valid_files:
        best, aucs, valid_rows = staged_best_iteration(booster, valid_files, features, label, patience, storage_options)
        history = {"auc": aucs}
    return TrainResult(
        booster,
        best,
        history,
        {"train": t1 - t0, "validate": time.perf_counter() - t1},
        train_rows=train_rows,
        valid_rows=valid_rows,
    )


def staged_best_iteration(
    booster: lgb.Booster, files, features, label, patience: int, storage_options: dict | None = None
) -> tuple[int, list[float], int]:
    """(best iteration, validation AUC per iteration, rows) with early stopping's patience rule.

    Tree ``i``'s raw contribution is predicted alone and summed, so all iterations cost one
    full prediction. The validation range is held in memory (it is a few cut-offs).
    """
    x = load_matrix(files, features, storage_options)
    y = read_column(files, label, storage_options=storage_options)
    raw = np.zeros(len(y))
    aucs: list[float] = []
    best, best_auc = 0, -np.inf
    for i in range(booster.current_iteration()):
        raw += booster.predict(x, start_iteration=i, num_iteration=1, raw_score=True)
        aucs.append(metrics.auc(y, raw))
        if aucs[-1] > best_auc:
            best, best_auc = i, aucs[-1]
        elif i - best >= patience:
            break
    return best + 1, aucs, len(y)


# ---- scoring ------------------------------------------------------------------------------------
def pipelined(fn: Callable, items: Iterable, workers: int | None = None, *, name: str = "predict") -> Iterator:
    """``fn(item)`` for each of ``items``, in their order, computed by ``workers`` threads (default:
    the CPUs this process may run on) while the caller consumes the results before.

    ``items`` is drawn in the calling thread (a reader decoding there keeps a third thread busy
    next to the workers); at most ``2 * workers`` items are in flight, so memory stays bounded. An
    exception from ``fn`` comes out at its item, after every result before it; stopping early (or an
    exception) cancels what has not started and joins the threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, workers or cpus)
    items = iter(items)
    pool = ThreadPoolExecutor(n, thread_name_prefix=name)
    try:
        flight = [pool.submit(fn, item) for _, item in zip(range(2 * n), items)]
        while flight:
            done = flight.pop(0).result()
            nxt = next(items, _END)
            if nxt is not _END:
                flight.append(pool.submit(fn, nxt))
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


class WorkerBuffers:
    """One flat float64 buffer per worker thread of :func:`pipelined`, reused from batch to batch (the
    pages of a fresh matrix are faulted in on every batch) and grown when a batch needs more."""

    def __init__(self):
        import threading

        self._local = threading.local()

    def get(self, size: int) -> np.ndarray:
        """This thread's buffer, of at least ``size`` values."""
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < size:
            buf = self._local.buf = np.empty(size, dtype=np.float64)
        return buf


def predict_batches(
    booster: lgb.Booster,
    files: Sequence[str],
    features: Sequence[str],
    *,
    num_iteration: int | None = None,
    extra: Sequence[str] = (),
    batch_rows: int = 100_000,
    storage_options: dict | None = None,
    workers: int | None = None,
) -> Iterator[tuple[np.ndarray, object]]:
    """``(scores, Arrow table of extra columns)`` per batch of at most ``batch_rows`` rows of ``files``,
    in file order.

    The calling thread decodes the Parquet batches (``iter_tables``, single-threaded) and ``pipelined``
    workers each fill one into a column-major float64 buffer of their own, reused from batch to batch,
    and predict it with ONE LightGBM thread. Rows are independent in LightGBM's predict, so the thread
    count does not change a bit (the bits equal the in-memory matrix's:
    tests/jobs/training/test_predict_arrow.py); but one OpenMP team per batch waits at its barrier for
    its slowest thread, and a decode between two predicts leaves the cores idle (README, Benchmarks).
    The batches, not the row groups, are the unit: a lake file is often one row group. Not the Arrow
    table itself: LightGBM's Arrow predict gives the same bits but took 7-11% more CPU than filling and
    predicting the matrix (README, Benchmarks).
    """
    wanted = list(dict.fromkeys([*features, *extra]))
    buffers = WorkerBuffers()

    def job(tbl) -> tuple[np.ndarray, object]:
        x = to_matrix(tbl, features, order="F", out=buffers.get(batch_rows * len(features)))
        return booster.predict(x, num_iteration=num_iteration, num_threads=1), tbl.select(list(extra))

    tables = iter_tables(files, wanted, batch_rows=batch_rows, storage_options=storage_options)
    yield from pipelined(job, tables, workers)


def score_files(
    booster: lgb.Booster,
    files: Sequence[str],
    features: Sequence[str],
    label: str,
    *,
    num_iteration: int | None = None,
    storage_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of every row of ``files``, streamed in bounded batches."""
    ys, ps = [], []
    for p, tbl in predict_batches(
        booster, files, features, num_iteration=num_iteration, extra=[label], storage_options=storage_options
    ):
        ps.append(p)
        ys.append(tbl.column(label).to_numpy().astype(np.float64))
    if not ps:
        raise ValueError("no rows to score")
    return np.concatenate(ys), np.concatenate(ps)


__all__ = [
    "BACKENDS",
    "DEFAULT_PARAMS",
    "TrainResult",
    "construct_binary",
    "memory_dataset",
    "peak_rss_bytes",
    "WorkerBuffers",
    "pipelined",
    "predict_batches",
    "score_files",
    "staged_best_iteration",
    "streamed_dataset",
    "train_dask",
    "train_local",
]


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "construct":
        print("usage: python -m jobs.training.lgbm construct SPEC.json", file=sys.stderr)
        return 2
    with open(argv[1]) as fh:
        spec = json.load(fh)
    construct_binary(
        spec["files"], spec["features"], spec["label"], spec["params"], spec["path"], spec["storage_options"] or None
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
