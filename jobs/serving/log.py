"""Serving log: every response's record, written ahead to a local append-only file, then to the lake.

Path of a record:

1. The request handler builds the record (allowlisted fields only, :func:`make_record`) and
   calls :meth:`ServingLog.submit`, which puts it on a bounded queue and returns a future.
   A full queue raises :class:`LogQueueFull`: the counter ``queue_full`` goes up, an alert is
   sent (rate-limited), and the service answers 503 — it never sends a 200 it did not log.
2. One writer thread drains the queue in batches (group commit): one ``os.write`` of the batch's
   JSON lines to the current WAL segment ``<wal_dir>/segment-<time_ns>-<pid>.jsonl``, then resolves the
   futures. The handler awaits its future before answering, so an acknowledged (200) record is
   in the file.
3. ``publish(ds)`` reads every segment and writes the records whose request time falls on day
   ``ds`` to ``serving_logs/ds=D`` (Parquet + manifest, replacing the partition whole: idempotent).

fsync policy (``fsync=``):

* ``"interval"`` (default): data reach the OS page cache before the 200 (survives ``kill -9``
  and any process crash); the file is fsync'ed every ``fsync_interval_s`` (0.2 s) when written to,
  so a power loss or kernel crash can lose at most that window. The fsync runs on a thread of its
  own (``serving-log-fsync``), never between a batch's write and its acknowledgement: a disk flush
  (milliseconds to tens of them on a shared disk) delays no request, and the writer keeps writing
  meanwhile. A failed fsync is counted (``fsync_errors``), logged and alerted.
* ``"always"``: fsync each batch before acknowledging it (survives power loss; costs a disk
  flush per batch, amortised over the batch by the group commit).
* ``"never"``: leave flushing to the OS.

Recovery: a torn last line (a write cut by a crash) was never acknowledged; readers skip it.
Segments are never rewritten or appended to after their process ends: every start opens a new
one, named by time and pid, so several workers (``uvicorn --workers N``) can share a WAL dir.

Records are shaped by the served model (``log_schema(model)``): the query keys (``entity_id`` for a
model with one key, else each key by name), the base fields, every joined set's features. One WAL
directory and one table hold ONE model's records: ``model.serving_log_table``
(``serving_logs/<model>``), written from ``<wal root>/<model>`` (:func:`model_wal_dir`), so several
models served into one lake never share a WAL segment or a partition.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import math
import os
import queue
import threading
import time
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa

from features.spec import FeatureSet

log = logging.getLogger(__name__)

SERVING_LOGS_TABLE = "serving_logs"
FSYNC_POLICIES = ("interval", "always", "never")

#: Fields a serving-log record may carry besides the query keys and the feature values. Anything
#: else a client sends (names, e-mails, addresses...) is dropped: the log holds ids, not raw PII.
BASE_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("request_id", pa.string()),
    ("request_time", pa.timestamp("us", tz="UTC")),
    ("served_at", pa.timestamp("us", tz="UTC")),
    ("mode", pa.string()),
    ("feature_set", pa.string()),
    ("feature_set_fingerprint", pa.string()),
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("score", pa.float64()),
    ("latency_ms", pa.float64()),
    ("degraded", pa.bool_()),
    ("degraded_reason", pa.string()),
    ("snapshot_ds", pa.string()),
    # which arm served the row (``champion``, or ``canary``: the challenger); null in logs from before arms
    ("arm", pa.string()),
    # the shadow's score of the same feature vector (``jobs.serving.shadow``), null when none scored it
    ("shadow_version", pa.string()),
    ("shadow_score", pa.float64()),
)
#: The fields a shadow record carries: written after the response to ``<model WAL>/shadow``
#: (:func:`shadow_wal_dir`), merged onto the served row of the same ``request_id`` by :func:`read_wal`.
SHADOW_FIELDS = ("request_id", "request_time", "shadow_version", "shadow_score")
_TIME_FIELDS = ("request_time", "served_at")
#: The log column of the query key of a model with one query key (the historical name).
ENTITY_ID = "entity_id"


def log_table(model) -> str:
    """The lake table of ``model``'s serving log: ``model.serving_log_table`` (``serving_logs/<model>``);
    ``serving_logs`` for one feature set served alone (no declared model)."""
    return SERVING_LOGS_TABLE if isinstance(model, FeatureSet) else model.serving_log_table


def model_wal_dir(wal_root, model) -> Path:
    """The WAL directory of ``model`` under the service's WAL root: ``<wal_root>/<model name>``."""
    return Path(wal_root) / model.name


def shadow_wal_dir(model_wal: str | os.PathLike) -> Path:
    """Where the shadow's follow-up records of a model's WAL directory go: ``<model WAL>/shadow``."""
    return Path(model_wal) / "shadow"


def degraded_reason(reasons: list[tuple[str, str]], single: bool) -> str | None:
    """A record's ``degraded_reason`` from the ``(set name, reason)`` of its degraded sets: the bare
    reason for a model of one set (``store_timeout``), else ``<set>:<reason>`` entries joined by ``;``
    in join order (``origin_weather_v1:store_timeout``); None when no set was degraded."""
    if not reasons:
        return None
    if single:
        return reasons[0][1]
    return ";".join(f"{name}:{why}" for name, why in reasons)


def degraded_sets(reason: str | None, model) -> tuple[str, ...]:
    """The names of the sets a record's ``degraded_reason`` says were served on their defaults (every
    set of a one-set model when it is degraded)."""
    if not isinstance(reason, str) or not reason:  # None, or NaN from a frame
        return ()
    sets = feature_sets_of(model)
    if len(sets) == 1:
        return (sets[0].name,)
    return tuple(part.split(":", 1)[0] for part in reason.split(";") if ":" in part)


def degraded_rows(logs: pd.DataFrame, model, fs: FeatureSet) -> np.ndarray:
    """Rows of a serving log whose set ``fs`` was served on its declared defaults."""
    flagged = logs["degraded"].fillna(False).to_numpy(dtype=bool)
    if len(feature_sets_of(model)) == 1:
        return flagged
    named = np.array([fs.name in degraded_sets(r, model) for r in logs["degraded_reason"]], dtype=bool)
    return flagged & named if len(logs) else flagged


def log_keys(model) -> list[tuple[str, str, str]]:
    """``(log column, query column, Arrow type)`` of the query keys a record carries.

    ``model`` is a :class:`features.model.Model` (or, for one set served alone, a
    :class:`features.spec.FeatureSet`). A model with one query key logs it as ``entity_id``; a
    model joining sets on several keys logs each under its query column's name.
    """
    if isinstance(model, FeatureSet):
        return [(ENTITY_ID, model.entity, model.entity_type)]
    keys = list(model.query_keys)
    if len(keys) == 1:
        return [(ENTITY_ID, keys[0][0], keys[0][1])]
    return [(name, name, type_) for name, type_ in keys]


def feature_sets_of(model) -> tuple[FeatureSet, ...]:
    return (model,) if isinstance(model, FeatureSet) else tuple(model.feature_sets)


def log_fingerprint(model) -> str:
    """What a correct service stamps in ``feature_set_fingerprint``: every joined set's fingerprint,
    ``+``-joined in join order (``model.fingerprint``)."""
    return "+".join(fs.fingerprint for fs in feature_sets_of(model))


def log_feature_sets(model) -> str:
    """What a record's ``feature_set`` holds: the joined sets' names, ``+``-joined in join order."""
    return "+".join(fs.name for fs in feature_sets_of(model))


def log_schema(model) -> pa.Schema:
    """``serving_logs`` rows of ``model``: request id, the query keys (``log_keys``), the base fields,
    then every joined set's features (counts int64, others float64)."""
    keys = [
        pa.field(col, pa.timestamp("us", tz="UTC") if t.startswith("timestamp") else pa.type_for_alias(t))
        for col, _, t in log_keys(model)
    ]
    fields = [pa.field(*BASE_FIELDS[0]), *keys, *(pa.field(n, t) for n, t in BASE_FIELDS[1:])]
    fields += [
        pa.field(f.name, pa.int64() if f.is_integer else pa.float64())
        for fs in feature_sets_of(model)
        for f in fs.features
    ]
    return pa.schema(fields)


_ALLOWED: dict[int, tuple] = {}


def allowed_fields(model) -> tuple[str, ...]:
    """The columns of ``log_schema(model)`` (computed once per declaration: every request asks)."""
    got = _ALLOWED.get(id(model))
    if got is None or got[0] is not model:
        got = _ALLOWED[id(model)] = (model, tuple(log_schema(model).names))
    return got[1]


def make_record(model, **fields) -> dict:
    """A record with exactly the allowlisted fields (missing ones null); times as int microseconds UTC."""
    rec = {}
    for name in allowed_fields(model):
        v = fields.get(name)
        if name in _TIME_FIELDS and v is not None and not isinstance(v, int):
            v = int(pd.Timestamp(v).value // 1000)
        rec[name] = v
    return rec


_JSON = msgspec.json.Encoder()


def encode_record(rec: dict) -> bytes:
    """One WAL line: ``rec`` as compact JSON and a newline. The values ``json.dumps(rec,
    allow_nan=False)`` writes (a float's exponent as ``1e18``, not ``1e+18``); a NaN or infinite
    float is a ``ValueError`` naming the field (JSON has none), an object JSON cannot hold a
    ``TypeError``."""
    for name, v in rec.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"serving log record {rec.get('request_id')!r}: {name} is {v}, not a JSON number")
    return _JSON.encode(rec) + b"\n"


def make_records(model, rows: list[dict], **common) -> list[dict]:
    """``[make_record(model, **common, **row) for row in rows]`` (the same dicts, fields in the same
    order), with the fields every record shares (``common``: served_at, mode, ...) converted once: a
    batch's records. A field is either common or per row."""
    names = allowed_fields(model)
    base = {}
    for name in names:
        v = common.get(name)
        if name in _TIME_FIELDS and v is not None and not isinstance(v, int):
            v = int(pd.Timestamp(v).value // 1000)
        base[name] = v
    own = [(name, name in _TIME_FIELDS) for name in names if name not in common]
    out = []
    for row in rows:
        rec = dict(base)
        for name, is_time in own:
            v = row.get(name)
            if is_time and v is not None and not isinstance(v, int):
                v = int((v if isinstance(v, pd.Timestamp) else pd.Timestamp(v)).value // 1000)
            rec[name] = v
        out.append(rec)
    return out


class LogQueueFull(Exception):
    """The serving log's queue is full; the record was not accepted."""


class _GroupWaiter:
    """What the writer resolves for each record of a :meth:`ServingLog.submit_many` group: the group's
    future completes when its last record is written, or with the first failure."""

    __slots__ = ("_fut", "_left", "_lock")

    def __init__(self, fut: cf.Future, n: int):
        self._fut, self._left, self._lock = fut, n, threading.Lock()

    def set_result(self, _value) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0 and not self._fut.done():
                self._fut.set_result(True)

    def set_exception(self, exc: BaseException) -> None:
        with self._lock:
            if not self._fut.done():
                self._fut.set_exception(exc)


class ServingLog:
    """Bounded queue -> writer thread -> WAL segments; ``publish(ds)`` -> ``serving_logs/ds=D``."""

    def __init__(
        self,
        wal_dir: str | os.PathLike,
        model,
        *,
        queue_size: int = 10_000,
        batch_size: int = 1024,
        fsync: str = "interval",
        fsync_interval_s: float = 0.2,
        segment_bytes: int = 256 << 20,
        notifier=None,
    ):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.wal_dir = Path(wal_dir)
        self.model = model
        self.batch_size, self.fsync, self.fsync_interval_s = batch_size, fsync, fsync_interval_s
        self.segment_bytes = segment_bytes
        self.notifier = notifier
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._fd: int | None = None
        self.segment: Path | None = None  # the segment being written
        self._seg_size = 0
        self._last_alert = 0.0
        self._last_fsync_alert = -math.inf
        #: held while the segment's fd is fsync'ed or replaced (the fsync thread, a segment roll, close)
        self._sync_lock = threading.Lock()
        self._dirty = False  # written since the fsync thread last started a sync
        self._syncer: threading.Thread | None = None
        self.fsyncs = 0
        self.fsync_errors = 0
        self.written = 0
        self.queue_full = 0
        self.batches = 0
        self.write_errors = 0
        self.recovered = 0

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> ServingLog:
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self.recovered = self._recover()
        self._open_segment()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="serving-log-writer", daemon=True)
        self._thread.start()
        if self.fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="serving-log-fsync", daemon=True)
            self._syncer.start()
        return self

    @property
    def running(self) -> bool:
        """Whether ``start`` was called and ``close`` not yet: the writer thread is up."""
        return self._thread is not None

    def abandon_segment(self) -> None:
        """Forget the open WAL segment without syncing or closing it: what a crash leaves behind
        (the next ``start`` recovers it). For fault injection; ``close`` is the clean shutdown."""
        self._fd = None

    def close(self) -> None:
        """Drain the queue, fsync and close (clean shutdown)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None
        with self._sync_lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None

    # ---- request side ---------------------------------------------------------------------
    def submit(self, record: dict) -> cf.Future:
        """Queue a record; the future resolves once it is in the WAL. Raises LogQueueFull."""
        fut: cf.Future = cf.Future()
        try:
            self._queue.put_nowait((record, fut))
        except queue.Full:
            self.queue_full += 1
            self._alert_full()
            raise LogQueueFull(f"serving log queue full ({self._queue.maxsize} records)") from None
        return fut

    def submit_many(self, records: list[dict]) -> cf.Future:
        """Queue several records, all or none; ONE future resolves once every one of them is in the
        WAL (or fails with the first write error). Raises LogQueueFull when they do not all fit.

        All or none holds for a single submitting thread (the service's event loop): only the
        writer takes from the queue meanwhile, so the room checked is there when they are put."""
        fut: cf.Future = cf.Future()
        if not records:
            fut.set_result(True)
            return fut
        room = self._queue.maxsize - self._queue.qsize() if self._queue.maxsize > 0 else len(records)
        if room < len(records):
            self.queue_full += len(records)
            self._alert_full()
            raise LogQueueFull(
                f"serving log queue full ({self._queue.maxsize} records; {len(records)} offered, room for {room})"
            )
        waiter = _GroupWaiter(fut, len(records))
        q = self._queue
        with q.not_full:  # the whole group in ONE acquisition of the queue's lock (Queue.put_nowait each)
            q.queue.extend((rec, waiter) for rec in records)
            q.unfinished_tasks += len(records)
            q.not_empty.notify()
        return fut

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _alert_full(self) -> None:
        now = time.monotonic()
        if now - self._last_alert < 10:  # every drop is counted; alerts are rate-limited
            return
        self._last_alert = now
        msg = (
            f"serving log queue full: {self.queue_full} record(s) refused so far "
            f"(queue size {self._queue.maxsize}); requests answered 503"
        )
        log.error(msg)
        if self.notifier is not None:
            try:
                self.notifier(msg)
            except Exception:  # an alerting failure must not take the service down (logged)
                log.exception("alert notifier failed")

    # ---- writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            q = self._queue
            with q.mutex:  # what is queued, up to batch_size, in ONE acquisition (Queue.get_nowait each)
                more = min(len(q.queue), self.batch_size - 1)
                batch += [q.queue.popleft() for _ in range(more)]
                if more:
                    q.not_full.notify(more)
            self._write_batch(batch)

    def _write_batch(self, batch) -> None:
        # A record that is not JSON (a NaN score, an object) fails its request, and only its request:
        # every record submitted with it (one future: a batch's group) is dropped too, all or none.
        lines, refused = [], {}
        for rec, fut in batch:
            try:
                lines.append(encode_record(rec))
            except (TypeError, ValueError) as exc:
                refused.setdefault(id(fut), exc)
                lines.append(b"")
        if refused:
            kept = [(item, line) for item, line in zip(batch, lines) if id(item[1]) not in refused]
            self.write_errors += len(batch) - len(kept)
            for _, fut in batch:
                if id(fut) in refused:
                    fut.set_exception(refused[id(fut)])
            batch, lines = [item for item, _ in kept], [line for _, line in kept]
            if not batch:
                return
        data = b"".join(lines)
        try:
            if self._seg_size + len(data) > self.segment_bytes and self._seg_size:
                self._open_segment()
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._seg_size += len(data)
            self._dirty = True  # after the write: a sync that starts from now on covers it
            if self.fsync == "always":  # before the acknowledgement; "interval": the fsync thread's
                os.fsync(self._fd)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request (503), never lost
            self.write_errors += len(batch)
            for _, fut in batch:
                fut.set_exception(exc)
            return
        self.written += len(batch)
        self.batches += 1
        for _, fut in batch:
            fut.set_result(True)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            self.sync()

    def sync(self) -> bool:
        """fsync the open segment if it was written to since the last sync started (the fsync
        thread's step; callable directly). False: its fsync failed (counted, logged, alerted)."""
        with self._sync_lock:
            if self._fd is None or not self._dirty:
                return True
            self._dirty = False  # before the fsync: a write that lands during it marks it again
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._dirty = True  # retried at the next interval
                self.fsync_errors += 1
                msg = f"serving log fsync failed ({self.fsync_errors} so far): {exc!r}; records not yet on disk"
                log.error(msg)
                now = time.monotonic()
                if self.notifier is not None and now - self._last_fsync_alert >= 10:  # rate-limited
                    self._last_fsync_alert = now
                    try:
                        self.notifier(msg)
                    except Exception:  # noqa: BLE001 - alerting must not stop the fsync thread
                        log.exception("alert notifier failed")
                return False
            self.fsyncs += 1
            return True

    def _segments(self) -> list[Path]:
        return sorted(self.wal_dir.glob("segment-*.jsonl"))

    def _open_segment(self) -> None:
        with self._sync_lock:
            self._roll_segment()

    def _roll_segment(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        # Unique per process and time: several service workers may share one WAL directory.
        path = self.segment = self.wal_dir / f"segment-{time.time_ns():020d}-{os.getpid()}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._seg_size = 0
        dfd = os.open(self.wal_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new segment's directory entry survives a power loss
        finally:
            os.close(dfd)

    def _recover(self) -> int:
        """Complete records already on disk. A torn last line (a write cut by a crash) is never
        acknowledged; readers skip it, and no writer appends after it (a start opens a new segment)."""
        n = 0
        for seg in self._segments():
            data = seg.read_bytes()
            n += data.count(b"\n", 0, data.rfind(b"\n") + 1)
        return n

    # ---- reading and publishing -------------------------------------------------------------
    def read_records(self) -> pd.DataFrame:
        return read_wal(self.wal_dir, self.model)

    def publish(self, cfg, ds: str):
        return publish(cfg, self.wal_dir, self.model, ds)


def read_wal(wal_dir, model) -> pd.DataFrame:
    """Every complete record in the WAL segments, as a frame in ``log_schema(model)``; a complete line
    that is not a JSON record is a ``ValueError`` naming the segment file and the line. The shadow's
    records (:func:`shadow_wal_dir`) fill ``shadow_version`` / ``shadow_score`` of the served row with
    their ``request_id`` (the first one of a request id counts)."""
    rows = _wal_lines(wal_dir)
    shadow = shadow_wal_dir(wal_dir)
    if shadow.is_dir():
        scored: dict = {}
        for r in _wal_lines(shadow):  # a score wins over a drop marker (a drop re-offered after a crash)
            got = scored.get(r.get("request_id"))
            if got is None or (got.get("shadow_score") is None and r.get("shadow_score") is not None):
                scored[r.get("request_id")] = r
        for r in rows:
            got = scored.get(r.get("request_id"))
            if got is not None and r.get("shadow_score") is None:
                r["shadow_version"], r["shadow_score"] = got.get("shadow_version"), got.get("shadow_score")
    return records_frame(rows, model)


def _wal_lines(wal_dir) -> list[dict]:
    return wal_records(sorted(Path(wal_dir).glob("segment-*.jsonl")))


def segment_pid(path) -> int | None:
    """The pid of the process that wrote WAL segment ``path`` (``segment-<time_ns>-<pid>.jsonl``)."""
    try:
        return int(Path(path).stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def wal_records(segments) -> list[dict]:
    """The complete records of the WAL segment files ``segments``, in order, as dicts (a torn last
    line is skipped; a garbled complete line is a ``ValueError`` naming the file and the line)."""
    rows = []
    for seg in segments:
        data = seg.read_bytes()
        end = data.rfind(b"\n") + 1  # a line being written right now is not complete yet
        for number, line in enumerate(data[:end].splitlines(), 1):
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:  # a garbled record: say where, the WAL is a text file to look at
                    raise ValueError(f"serving WAL segment {seg}, line {number}: not a JSON record: {exc}") from exc
    return rows


def records_frame(rows: list[dict], model) -> pd.DataFrame:
    schema = log_schema(model)
    cols = {}
    for field in schema:
        vals = [r.get(field.name) for r in rows]
        if field.name in _TIME_FIELDS:
            arr = pa.array(vals, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        else:
            arr = pa.array(vals, field.type)
        cols[field.name] = arr
    return pa.table(cols, schema=schema).to_pandas()


def publish(cfg, wal_dir, model, ds: str):
    """Write the WAL's records of request day ``ds`` to ``<log_table(model)>/ds=D`` (replaces the partition)."""
    frame = read_wal(wal_dir, model)
    day = frame["request_time"].dt.strftime("%Y-%m-%d") == ds
    part = frame[day].drop_duplicates("request_id").sort_values(["request_time", "request_id"], ignore_index=True)
    schema = log_schema(model)
    table = cfg.lake().table(log_table(model), schema)
    producer = {"job": "serving_log.publish", "feature_set": log_feature_sets(model), "wal_dir": str(wal_dir)}
    if not isinstance(model, FeatureSet):
        producer["model"] = model.name
    return table.write_partition(ds, pa.Table.from_pandas(part, schema=schema, preserve_index=False), producer=producer)


def feature_frame(logs: pd.DataFrame, model) -> pd.DataFrame:
    """The logged feature values (of every joined set) as the kernel's dtypes (counts int64, others
    float64, NaN = null)."""
    out = {}
    for f in (f for fs in feature_sets_of(model) for f in fs.features):
        col = logs[f.name]
        out[f.name] = col.to_numpy(dtype=np.int64) if f.is_integer else col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.DataFrame(out, index=logs.index)
