"""Spark engine: ``groupBy(bucket).cogroup(...).applyInPandas`` of the one kernel over Arrow.

Rows are grouped by ``pmod(xxhash64(entity as long), buckets)`` — a few large
groups, never one group per entity (MEASURED.md: 313 s vs 14 s) — and each group
is one ``features.kernel.compute`` call. Two pitfalls are handled here:

* time zones: Spark hands LTZ timestamps to pandas as naive wall-clock time of
  the *session* zone, so the session zone is pinned to UTC on every run (and the
  JVMs' default zone with ``-Duser.timezone=UTC``), and the UDF re-attaches UTC;
* key types: ``xxhash64`` hashes int32 and int64 values differently, so an integer key
  is cast to long before hashing; a string key (``fs.entity_type == "string"``) is hashed
  as a string.

The result is written to a scratch Parquet directory and yielded in batches of at most
``READ_ROWS`` rows, so the driver holds one batch at a time, whatever the file sizes. The session ships the driver's ``features``
package to the executors (``addPyFile``), and every run first checks the kernel the executors
import (``shipping``): a mismatch raises ``KernelMismatchError`` before any row is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import kernel
from features.spec import FeatureSet, kernel_fingerprint
from jobs.engines import Snapshot, Snapshots, shipping, snapshot_queries
from jobs.engines.bucketing import default_events_schema, default_queries_schema

log = logging.getLogger(__name__)

BUCKET = "__lockstep_bucket"
#: Rows per frame the driver reads back from the output files (its memory bound, not a file's size).
READ_ROWS = 262_144
AS_OF = kernel.AS_OF

#: Settings of the session this module builds. The JVM options only take effect when the
#: session (and its JVM) is created here; the session zone is re-pinned on every run.
SPARK_CONF = {
    "spark.app.name": "lockstep",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
    # Spark's default INT96 would come back to pyarrow as naive nanoseconds.
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.ui.showConsoleProgress": "true",
    "spark.driver.memory": "2g",
    # pyspark 4.3 warns on every pandas UDF call that pandas 3 is "not fully supported";
    # the paths used here are covered by the parity tests.
    "spark.executorEnv.PYTHONWARNINGS": "ignore:PySpark does not yet fully support pandas:FutureWarning",
}

_session = None
_session_lock = threading.Lock()


def get_spark(master: str = "local[2]", conf: dict[str, str] | None = None):
    """This process's SparkSession, built on first use (``SPARK_CONF`` + ``conf``) and reused after,
    with the driver's ``features`` package shipped to its executors.

    A later call with another master returns the running session (one SparkContext
    per process) and logs a warning.
    """
    global _session
    with _session_lock:
        if _session is not None and not _stopped(_session):
            running = _session.sparkContext.master
            if running != master:
                log.warning("spark: reusing the running session on %s (asked for %s)", running, master)
            return _session
        from pyspark.sql import SparkSession

        settings = dict(SPARK_CONF)
        python = os.environ.get("PYSPARK_PYTHON")
        if master.startswith("local"):
            settings["spark.ui.enabled"] = "false"
            # Local Python workers must run this interpreter (the one with features/ installed),
            # not whatever "python3" is on PATH; SparkContext reads PYSPARK_PYTHON once, at start.
            python = python or sys.executable
        builder = SparkSession.builder.master(master)
        for k, v in {**settings, **(conf or {})}.items():
            builder = builder.config(k, v)
        with _env("PYSPARK_PYTHON", python), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
            _session = builder.getOrCreate()
        _session.sparkContext.setLogLevel("ERROR")
        shipping.ship_to_spark(_session)
        return _session


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _stopped(session) -> bool:
    jsc = session.sparkContext._jsc
    return jsc is None or jsc.sc().isStopped()


def run(cfg, fs: FeatureSet, events_files: list[str], queries, mode: str, spark=None) -> Iterator[pd.DataFrame]:
    """Yields one frame per non-empty output file (or one empty frame when there is no output)."""
    spark = spark or get_spark(getattr(cfg, "spark_master", "local[2]"))
    prepare_session(spark)
    opts = getattr(cfg, "storage_options", None) or {}
    scratch = str(cfg.scratch("spark")).rstrip("/")
    try:
        yield from _run(spark, cfg.buckets, fs, events_files, queries, mode, scratch, opts)
    finally:
        _remove(scratch, opts)


def prepare_session(spark) -> None:
    """Ship the ``features`` package to ``spark``'s executors (once) and check the kernel they import."""
    t0 = time.monotonic()
    shipping.ship_to_spark(spark)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
        reports = shipping.verify_spark(spark)
    log.info(
        "spark: %d python worker(s) run kernel %s (checked in %.2fs)",
        len(reports),
        kernel_fingerprint(),
        time.monotonic() - t0,
    )


def _run(spark, n_buckets: int, fs: FeatureSet, events_files, queries, mode, scratch, opts):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
        out_dir, out_schema, out_names = _compute(spark, n_buckets, fs, events_files, queries, mode, scratch, opts)
    fsys, root = fsspec.core.url_to_fs(out_dir, **opts)
    yielded = 0
    for path in sorted(fsys.glob(f"{root}/part-*.parquet")):
        with fsys.open(path, "rb") as f:
            # In batches: Spark may coalesce the buckets into few files (adaptive execution), and one
            # file of a range build's output holds every day of its buckets.
            for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS):
                frame = pa.Table.from_batches([batch]).to_pandas()
                if len(frame):
                    yielded += 1
                    yield _restore(frame[out_names], queries, fs.entity)
    if not yielded:
        yield _restore(_empty_output(out_schema), queries, fs.entity)


def _compute(spark, n_buckets: int, fs: FeatureSet, events_files, queries, mode, scratch, opts):
    """Plan and run the job; returns (output dir, Spark schema, column names)."""
    from pyspark.sql import functions as F

    t0 = time.monotonic()
    # Runtime settings, re-pinned per run: someone may have changed the shared session.
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.shuffle.partitions", str(n_buckets))

    # Before hashing: int32 and int64 hash differently, so integer keys are cast to long; string
    # keys are hashed as strings (xxhash64 of the UTF-8 bytes).
    key = F.col(fs.entity).cast("string" if fs.entity_type == "string" else "long")
    events_paths = events_files or [_write_empty(default_events_schema(fs), f"{scratch}/empty_events.parquet", opts)]
    events = spark.read.parquet(*map(_spark_path, events_paths)).select(*fs.event_columns)
    events = events.withColumn(fs.entity, key).withColumn(BUCKET, F.pmod(F.xxhash64(fs.entity), F.lit(n_buckets)))
    ev_fields = _fields(events.schema, exclude=BUCKET)

    if isinstance(queries, (Snapshot, Snapshots)):
        out_schema, out_names = _output_schema(fs, [fs.entity, AS_OF], {})
        fn = _snapshot_fn(kernel_fingerprint(), fs, mode, queries, ev_fields, out_names)
        result = events.groupBy(BUCKET).applyInPandas(fn, out_schema)
    else:
        if isinstance(queries, pd.DataFrame):
            q_paths = [_write_frame(queries, f"{scratch}/queries.parquet", opts)]
        else:
            q_paths = queries or [_write_empty(default_queries_schema(fs), f"{scratch}/empty_queries.parquet", opts)]
        qdf = spark.read.parquet(*map(_spark_path, q_paths))
        missing = [c for c in (fs.entity, AS_OF) if c not in qdf.columns]
        if missing:
            raise KeyError(f"query files are missing column(s) {missing}; they have {qdf.columns}")
        qdf = qdf.withColumn(fs.entity, key).withColumn(BUCKET, F.pmod(F.xxhash64(fs.entity), F.lit(n_buckets)))
        q_fields = _fields(qdf.schema, exclude=BUCKET)
        extra = {
            name: typ
            for name, typ in ((f.name, f.dataType) for f in qdf.schema.fields)
            if name not in (fs.entity, AS_OF, BUCKET)
        }
        out_schema, out_names = _output_schema(fs, [n for n, _ in q_fields], extra)
        fn = _cogroup_fn(kernel_fingerprint(), fs, mode, ev_fields, q_fields, out_names)
        result = events.groupBy(BUCKET).cogroup(qdf.groupBy(BUCKET)).applyInPandas(fn, out_schema)

    out_dir = f"{scratch}/out"
    result.write.mode("overwrite").parquet(_spark_path(out_dir))
    log.info("spark: computed %d bucket(s) in %.1fs", n_buckets, time.monotonic() - t0)
    return out_dir, out_schema, out_names


# --------------------------------------------------------------------------- inside the UDF


def _cogroup_fn(expected_kernel: str, fs: FeatureSet, mode: str, ev_fields, q_fields, out_names):
    def fn(events: pd.DataFrame, queries: pd.DataFrame) -> pd.DataFrame:
        shipping.check_here(expected_kernel, shipping.spark_executor_name())
        ev = _from_spark(events, ev_fields)
        q = _from_spark(queries, q_fields)
        return _to_spark(kernel.compute(ev, q, fs, mode)[out_names])

    return fn


def _snapshot_fn(expected_kernel: str, fs: FeatureSet, mode: str, snapshots, ev_fields, out_names):
    def fn(events: pd.DataFrame) -> pd.DataFrame:
        shipping.check_here(expected_kernel, shipping.spark_executor_name())
        ev = _from_spark(events, ev_fields)
        q = snapshot_queries(ev, fs, snapshots, mode)
        return _to_spark(kernel.compute(ev, q, fs, mode)[out_names])

    return fn


def _from_spark(pdf: pd.DataFrame, fields: list[tuple[str, str]]) -> pd.DataFrame:
    """What Spark hands a pandas UDF, as the local engine would read it.

    LTZ timestamps arrive naive in the session zone (pinned to UTC): re-attach UTC.
    NTZ timestamps stay naive (the kernel reads naive as UTC). Units to us, strings to str.
    """
    out = {}
    for name, kind in fields:
        s = pdf[name]
        if kind in ("ltz", "ntz") and pd.api.types.is_datetime64_any_dtype(s.dtype):
            if kind == "ltz":
                s = s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")
            s = s.dt.as_unit("us")
        elif kind == "string":
            s = s.astype("str")
        out[name] = s
    return pd.DataFrame(out, index=pd.RangeIndex(len(pdf)))


def _to_spark(frame: pd.DataFrame) -> pd.DataFrame:
    """The UDF's output as pyspark can serialise it: string columns as object.

    A group of more rows than one Arrow batch (``spark.sql.execution.arrow.maxRecordsPerBatch``,
    10,000) reaches the UDF as several batches, so its pandas ``str`` columns are backed by a
    multi-chunk Arrow array; a pass-through or key column keeps those chunks, and pyspark's
    ``RecordBatch.from_arrays`` rejects the ``ChunkedArray`` it gets back ("Cannot convert
    pyarrow.lib.ChunkedArray to pyarrow.lib.Array").
    """
    strings = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c].dtype) and frame[c].dtype != object]
    return frame.astype({c: object for c in strings}) if strings else frame


def _fields(schema, exclude: str) -> list[tuple[str, str]]:
    from pyspark.sql import types as T

    kinds = []
    for f in schema.fields:
        if f.name == exclude:
            continue
        if isinstance(f.dataType, T.TimestampNTZType):
            kind = "ntz"
        elif isinstance(f.dataType, T.TimestampType):
            kind = "ltz"
        elif isinstance(f.dataType, T.StringType):
            kind = "string"
        else:
            kind = "other"
        kinds.append((f.name, kind))
    return kinds


# --------------------------------------------------------------------------- schemas and I/O


def _output_schema(fs: FeatureSet, query_names: list[str], extra: dict):
    """Spark schema of the UDF's output: the query columns in their order, then the features.

    Feature types come from ``features.kernel.output_columns``.
    """
    from pyspark.sql import types as T

    arrow_to_spark = {
        "int64": T.LongType(),
        "double": T.DoubleType(),
        "string": T.StringType(),
        "timestamp[us, tz=UTC]": T.TimestampType(),
    }
    declared = dict(kernel.output_columns(fs, None, fs.entity_type))
    fields = []
    for name in query_names:
        typ = extra.get(name) or arrow_to_spark[declared[name]]
        fields.append(T.StructField(name, typ, True))
    for name in fs.feature_names:
        fields.append(T.StructField(name, arrow_to_spark[declared[name]], True))
    schema = T.StructType(fields)
    return schema, [f.name for f in fields]


def _empty_output(schema) -> pd.DataFrame:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC").empty_table().to_pandas()


def _restore(frame: pd.DataFrame, queries, entity: str) -> pd.DataFrame:
    """Give a query frame's pass-through columns back their pandas dtypes (Parquet via Spark loses
    e.g. nullable integers); the key is int64 and ``as_of`` us UTC on every engine."""
    if isinstance(queries, pd.DataFrame):
        for c in queries.columns:
            if c not in (entity, AS_OF) and frame[c].dtype != queries[c].dtype:
                frame[c] = frame[c].astype(queries[c].dtype)
    return frame


def _write_frame(df: pd.DataFrame, path: str, opts: dict) -> str:
    # Microseconds: Spark cannot read Parquet TIMESTAMP(NANOS); the kernel truncates to us anyway.
    table = pa.Table.from_pandas(df, preserve_index=False)
    return _write_table(table, path, opts)


def _write_empty(schema: pa.Schema, path: str, opts: dict) -> str:
    return _write_table(schema.empty_table(), path, opts)


def _write_table(table: pa.Table, path: str, opts: dict) -> str:
    fsys, p = fsspec.core.url_to_fs(path, **opts)
    with fsys.open(p, "wb") as f:
        pq.write_table(table, f, coerce_timestamps="us", allow_truncated_timestamps=True)
    return path


def _spark_path(path: str) -> str:
    # Hadoop names S3 "s3a"; everything else (local paths, file://, hdfs://, gs://) passes as is.
    return "s3a://" + path[len("s3://") :] if path.startswith("s3://") else path


def _remove(root: str, opts: dict) -> None:
    fsys, p = fsspec.core.url_to_fs(root, **opts)
    try:
        if fsys.exists(p):
            fsys.rm(p, recursive=True)
    except OSError as exc:
        log.warning("spark: could not remove scratch %s: %s", root, exc)
