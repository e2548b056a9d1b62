"""Online store for the serving path: an entity's events (fresh mode) behind an in-process L1 cache.

Two backends behind one interface (``events(entity_id) -> DataFrame``; ``history(entity_id)`` adds the
kernel's index of those events, built once per cached entry — see :class:`EntityHistory`):

* :class:`EmbeddedStore` (default): an in-process dict ``entity -> its events`` loaded from the
  lake's raw table of the set's source (``fs.source.table``). Why not SQLite: the reference service is one process, the store is
  read-only between loads, and the kernel wants a DataFrame per entity anyway; a dict lookup costs
  nanoseconds and needs no extra dependency, while SQLite would add a query plus a DataFrame
  build per request. It holds ``fs.horizon_days`` of history per entity — all of it for a set
  with lifetime features — so it is for data that fits in one process.
* :class:`RedisStore`: one key per entity holding its events as an Arrow IPC stream (a safe,
  typed encoding: no pickle from the network). For data that outgrows a process or is shared by
  several service replicas. The per-request timeout is the socket timeout of the client.

:class:`L1Cache` sits in front of either (LRU + TTL). A store failure or timeout raises
:class:`StoreUnavailable`; the service then serves declared defaults and flags the record
``degraded`` (see ``jobs.serving.app``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from features.spec import FeatureSet


def key_of(fs: FeatureSet | None):
    """The Python type an entity key of ``fs`` is looked up as: ``int`` for int64 keys, ``str`` for
    string keys (and ``int`` without a set, the historical default)."""
    return str if fs is not None and fs.entity_type == "string" else int


class StoreUnavailable(Exception):
    """The store did not answer in time or failed; ``reason`` is ``store_timeout`` or ``store_error``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class EventStore(Protocol):
    def events(self, entity_id) -> pd.DataFrame: ...


class EntityHistory:
    """An entity's events as a store returned them, and the kernel's index of them, built once.

    The index (``features.kernel.index_events``: dedup, sort, search keys) is what the kernel
    builds first on every call; caching it with the events leaves a request only the
    evaluation. It is immutable, so concurrent readers may share it (two racing first
    readers may both build it; either result is the same).
    """

    __slots__ = ("_frame", "_index", "fs")

    def __init__(self, frame, fs: FeatureSet, index=None):
        """``frame``: the events, or a callable that cuts them on first use; ``index``: a prebuilt
        kernel index holding (at least) this entity's events — e.g. the embedded store's index
        of the whole table, which the kernel evaluates for one entity as it would this slice."""
        self._frame, self.fs, self._index = frame, fs, index

    @property
    def frame(self) -> pd.DataFrame:
        if callable(self._frame):
            self._frame = self._frame()
        return self._frame

    @property
    def index(self):
        if self._index is None:
            from features.kernel import index_events

            self._index = index_events(self.frame, self.fs)
        return self._index


def history_of(store, entity_id, fs: FeatureSet) -> EntityHistory:
    """``store.history(entity)`` when the store keeps histories, else its ``events`` wrapped."""
    get = getattr(store, "history", None)
    return get(entity_id) if get is not None else EntityHistory(store.events(entity_id), fs)


def _empty_events(fs: FeatureSet) -> pd.DataFrame:
    cols = list(fs.event_columns)
    if fs.source is None:
        return pd.DataFrame({c: [] for c in cols})
    types = {name: type_ for name, type_, _ in fs.source.raw_columns()}
    schema = pa.schema([(c, _arrow(types[c])) for c in cols if c in types])
    frame = schema.empty_table().to_pandas()
    for c in cols:
        if c not in frame.columns:
            frame[c] = []
    return frame[cols]


def _arrow(type_: str) -> pa.DataType:
    return pa.timestamp("us", tz="UTC") if type_.startswith("timestamp[") else pa.type_for_alias(type_)


def events_table(fs: FeatureSet) -> str:
    """The raw table a set's events come from: its source's (``fs.source.table``)."""
    if fs.source is None:
        raise ValueError(f"feature set {fs.name!r} declares no source: no raw table to serve it from")
    return fs.source.table


def read_lake_events(cfg, fs: FeatureSet, ds_to: str | None = None) -> pd.DataFrame:
    """All events of ``fs``'s source ingested up to ``ds_to`` (default: every published partition),
    ``fs.event_columns``."""
    raw = cfg.lake().table(events_table(fs))
    first, last = raw.first_ds(), raw.last_ds()
    if first is None:
        return _empty_events(fs)
    return raw.read(first, ds_to or last, columns=list(fs.event_columns))


class EmbeddedStore:
    """In-process ``entity -> events`` map (see the module docstring for why)."""

    def __init__(self, fs: FeatureSet, events: pd.DataFrame | None = None):
        self.fs = fs
        self._key = key_of(fs)
        self._by_entity: dict = {}
        self._spans: dict = {}
        self._empty = _empty_events(fs)
        self._empty_history = EntityHistory(self._empty, fs)
        if events is not None:
            self.load(events)

    @classmethod
    def from_lake(cls, cfg, fs: FeatureSet, ds_to: str | None = None) -> EmbeddedStore:
        return cls(fs, read_lake_events(cfg, fs, ds_to))

    def load(self, events: pd.DataFrame) -> None:
        """Replace the contents with ``events`` (all entities).

        Events are sorted by entity once; an entity's frame is a slice of that, cut on first use.
        """
        ev = events[list(self.fs.event_columns)].sort_values(self.fs.entity, kind="stable", ignore_index=True)
        keys = ev[self.fs.entity].to_numpy()
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)
        ends = np.r_[starts[1:], len(keys)]
        self._sorted = ev
        self._spans = {self._key(keys[a]): (int(a), int(b)) for a, b in zip(starts, ends)}
        self._by_entity = {}
        # One kernel index over the whole table, built here, once: a request then costs only the
        # evaluation of its (entity, time) — no per-entity build on first touch. The kernel gives
        # the same bits for an entity on the whole table as on its own rows (tests/jobs/engines).
        from features.kernel import index_events

        self._index = index_events(ev, self.fs)
        # An entity without events is evaluated on the same index (no rows: the declared defaults), so
        # a batch's queries of known and unknown entities share ONE kernel evaluation.
        self._empty_history = EntityHistory(self._empty, self.fs, self._index)

    def history(self, entity_id) -> EntityHistory:
        """The entity's events (cut on first use) and the store's kernel index."""
        key = self._key(entity_id)
        got = self._by_entity.get(key)
        if got is None:
            span = self._spans.get(key)
            if span is None:
                return self._empty_history
            got = self._by_entity[key] = EntityHistory(
                lambda a=span[0], b=span[1]: self._sorted.iloc[a:b].reset_index(drop=True), self.fs, self._index
            )
        return got

    def events(self, entity_id) -> pd.DataFrame:
        return self.history(entity_id).frame

    def appended(self, events: pd.DataFrame) -> EmbeddedStore:
        """A NEW store holding this one's events plus ``events`` (this one is left as it is, so
        requests keep being served from it while the new one is built and indexed)."""
        return EmbeddedStore(self.fs, pd.concat([self._sorted, events[list(self.fs.event_columns)]], ignore_index=True))

    def __len__(self) -> int:
        return len(self._spans)


class RedisStore:
    """Events per entity in Redis under ``<prefix>:<entity>`` as Arrow IPC streams."""

    def __init__(self, fs: FeatureSet, url: str, timeout_s: float = 0.05, prefix: str | None = None):
        import redis

        self.fs = fs
        self._key = key_of(fs)
        self.prefix = prefix or f"lockstep:{fs.name}:events"
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._errors = (redis.exceptions.RedisError, OSError)
        self._timeout_errors = (redis.exceptions.TimeoutError,)
        self._empty = _empty_events(fs)

    def key(self, entity_id) -> str:
        return f"{self.prefix}:{self._key(entity_id)}"

    def load(self, events: pd.DataFrame, batch: int = 2000) -> int:
        """Write every entity's events (replacing what is there); returns the number of entities."""
        ev = events[list(self.fs.event_columns)].sort_values(self.fs.entity, kind="stable", ignore_index=True)
        table = pa.Table.from_pandas(ev, preserve_index=False)
        keys = ev[self.fs.entity].to_numpy()
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.empty(0, np.int64)
        ends = np.r_[starts[1:], len(keys)]
        pipe = self._client.pipeline(transaction=False)
        for i, (a, b) in enumerate(zip(starts, ends), 1):
            pipe.set(self.key(keys[a]), _to_ipc(table.slice(int(a), int(b - a))))
            if i % batch == 0:
                pipe.execute()
        pipe.execute()
        return len(starts)

    def events(self, entity_id) -> pd.DataFrame:
        try:
            payload = self._client.get(self.key(entity_id))
        except self._timeout_errors as exc:
            raise StoreUnavailable("store_timeout", str(exc)) from None
        except self._errors as exc:
            raise StoreUnavailable("store_error", str(exc)) from None
        if payload is None:
            return self._empty
        return pa.ipc.open_stream(payload).read_all().to_pandas()

    def append(self, events: pd.DataFrame) -> list:
        """Add ``events`` to their entities' keys (read, concatenate, write back); the entities touched.

        Not atomic across entities; an entity's key is replaced in one SET. Events already present
        (same ``event_id`` and ``ingested_at``) are not duplicated, so re-applying a partition is harmless.
        """
        ev = events[list(self.fs.event_columns)].sort_values(self.fs.entity, kind="stable", ignore_index=True)
        entities = [self._key(e) for e in pd.unique(ev[self.fs.entity])]
        if not entities:
            return []
        try:
            current = self._client.mget([self.key(e) for e in entities])
            pipe = self._client.pipeline(transaction=False)
            for (entity, new), old in zip(ev.groupby(self.fs.entity, sort=True), current):
                if old is not None:
                    new = pd.concat([pa.ipc.open_stream(old).read_all().to_pandas(), new], ignore_index=True)
                    new = new.drop_duplicates([self.fs.event_id, self.fs.ingested_at], ignore_index=True)
                pipe.set(self.key(entity), _to_ipc(pa.Table.from_pandas(new, preserve_index=False)))
            pipe.execute()
        except self._errors as exc:
            raise StoreUnavailable("store_error", f"append failed: {exc}") from None
        return entities

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except self._errors:
            return False


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


class L1Cache:
    """LRU + TTL cache of an entity's history (events + kernel index) in front of a store;
    counts hits and misses.

    A TTL bounds how stale a cached history can be (events ingested while an entry is cached are
    not seen until it expires); ``ttl_s=0`` disables caching.
    """

    def __init__(
        self,
        store: EventStore,
        max_entries: int = 10_000,
        ttl_s: float = 1.0,
        clock=time.monotonic,
        fs: FeatureSet | None = None,
    ):
        self.store, self.max_entries, self.ttl_s, self._clock = store, max_entries, ttl_s, clock
        self.fs = fs or getattr(store, "fs", None)
        self._key = key_of(self.fs)
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def events(self, entity_id) -> pd.DataFrame:
        return self.history(entity_id).frame

    def history(self, entity_id) -> EntityHistory:
        key = self._key(entity_id)
        now = self._clock()
        if self.ttl_s > 0:
            with self._lock:
                got = self._entries.get(key)
                if got is not None and now - got[0] < self.ttl_s:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return got[1]
                self.misses += 1
        else:
            self.misses += 1
        got = history_of(self.store, key, self.fs)  # may raise StoreUnavailable: nothing is cached then
        if self.ttl_s > 0:
            with self._lock:
                self._entries[key] = (now, got)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return got

    def histories(self, entity_ids) -> list:
        """:meth:`history` of each of several (distinct) entities, counted the same, with the cache's
        lock taken once for the lookups and once for the fills: a batch's. A fetch that fails gives
        its :class:`StoreUnavailable` in that entity's place (nothing cached for it)."""
        keys = [self._key(e) for e in entity_ids]
        now = self._clock()
        out: list = [None] * len(keys)
        missing = []
        if self.ttl_s > 0:
            with self._lock:
                for i, key in enumerate(keys):
                    got = self._entries.get(key)
                    if got is not None and now - got[0] < self.ttl_s:
                        self._entries.move_to_end(key)
                        self.hits += 1
                        out[i] = got[1]
                    else:
                        missing.append(i)
                self.misses += len(missing)
        else:
            self.misses += len(keys)
            missing = list(range(len(keys)))
        fetched = []
        for i in missing:
            try:
                out[i] = history_of(self.store, keys[i], self.fs)
            except StoreUnavailable as exc:
                out[i] = exc
            else:
                fetched.append(i)
        if self.ttl_s > 0 and fetched:
            with self._lock:
                for i in fetched:
                    self._entries[keys[i]] = (now, out[i])
                    self._entries.move_to_end(keys[i])
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return out

    def peek(self, entity_id) -> EntityHistory | None:
        """The entity's cached history if it is fresh (counted as a hit), else None (nothing counted:
        the caller then fetches through :meth:`history`, which counts the miss). Never touches the store."""
        if self.ttl_s <= 0:
            return None
        key = self._key(entity_id)
        with self._lock:
            got = self._entries.get(key)
            if got is not None and self._clock() - got[0] < self.ttl_s:
                self._entries.move_to_end(key)
                self.hits += 1
                return got[1]
        return None

    def invalidate(self, entity_ids=None) -> None:
        """Drop the given entities' entries (all entries when None)."""
        with self._lock:
            if entity_ids is None:
                self._entries.clear()
            else:
                for e in entity_ids:
                    self._entries.pop(self._key(e), None)

    def swap(self, store: EventStore) -> None:
        """Serve from ``store`` from now on; cached entries of the old one are dropped."""
        with self._lock:
            self.store = store
            self._entries.clear()

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


class SnapshotVectors:
    """Materialized mode: the snapshot vector of the last completed day, per entity.

    For a request at ``t`` the vector comes from ``feature_snapshots/<set>/ds=date(t)-1`` (as
    known at ``date(t)`` 00:00 UTC). Partitions are loaded from the lake on first use and the
    last ``keep_days`` are kept in process. Loading one turns every row into a Python tuple (on
    bench.serving's set, 23,570 entities x 22 features: 1.2 s at load ~4): the service calls
    :meth:`warm` at start-up so the day being served is loaded before the first request, not by it.
    """

    def __init__(self, cfg, fs: FeatureSet, keep_days: int = 2):
        self.cfg, self.fs, self.keep_days = cfg, fs, keep_days
        self._key = key_of(fs)
        self._days: OrderedDict[str, dict | None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def ds_for(request_time: pd.Timestamp) -> str:
        # by the UTC day number (a tz-aware Timestamp's ``value`` is UTC ns): formatting the date with
        # pandas per query cost ~48 us, most of a materialized query's CPU
        return _ds_before_day(request_time.value // _DAY_NS)

    def vector(self, entity_id, request_time: pd.Timestamp) -> tuple[str, tuple | None]:
        """(ds, values in ``fs.feature_names`` order); values None for an entity with no history.

        Raises StoreUnavailable("no_snapshot") when the partition does not exist.
        """
        ds = self.ds_for(request_time)
        day = self._day(ds)
        if day is None:
            raise StoreUnavailable("no_snapshot", f"feature_snapshots/{self.fs.name}/ds={ds} is not published")
        return ds, day.get(self._key(entity_id))

    def warm(self, now: pd.Timestamp | None = None) -> str | None:
        """Load the partition requests at ``now`` (default: the clock) read, or, when it is not
        published, the latest published one before it (a service answering requests of a past day,
        as the benchmarks do, reads that one); the ds loaded, or None when there is none."""
        from jobs.snapshots import snapshot_table

        want = self.ds_for(now if now is not None else pd.Timestamp.now(tz="UTC"))
        days = [d for d in snapshot_table(self.cfg.lake(), self.fs).partitions() if d <= want]
        if not days or self._day(days[-1]) is None:
            return None
        return days[-1]

    def _day(self, ds: str):
        with self._lock:
            if ds in self._days:
                self._days.move_to_end(ds)
                return self._days[ds]
        from jobs.lake import MissingPartitionError
        from jobs.snapshots import snapshot_table

        table = snapshot_table(self.cfg.lake(), self.fs)
        try:
            frame = table.read(ds)
        except MissingPartitionError:
            frame = None
        day = None
        if frame is not None:
            names = list(self.fs.feature_names)
            cols = [frame[n].to_numpy() for n in names]
            integer = [self.fs.feature(n).is_integer for n in names]
            day = {}
            for i, e in enumerate(frame[self.fs.entity].to_numpy()):
                day[self._key(e)] = tuple(
                    int(c[i]) if isint else _none_if_nan(float(c[i])) for c, isint in zip(cols, integer)
                )
        if day is None:
            return None  # not cached: the partition may be published later
        with self._lock:
            self._days[ds] = day
            while len(self._days) > self.keep_days:
                self._days.popitem(last=False)
        return day


class StoreRefresher:
    """Keeps the online store of a set current: new partitions of its source's raw table
    (``fs.source.table``) reach it while the service runs.

    Every ``interval_s`` it compares the raw table's manifests with the ones loaded
    (day -> content fingerprint). New partitions are read (verified, like every lake read) and
    applied: the embedded store is rebuilt with them in this background thread and swapped in
    whole (requests keep using the old one meanwhile); Redis keys of the entities they touch
    are extended in place. A partition that was REPLACED since it was loaded (a backfill)
    triggers a full reload from the lake instead. The L1 entries of changed entities are
    dropped, so a request sees new events at most ``interval_s`` after their partition is
    published. A failed refresh is logged and counted (``/metrics.json``: ``store_refresh_errors``)
    and retried at the next interval; the store keeps serving what it has.
    """

    def __init__(self, cfg, fs: FeatureSet, cache: L1Cache, loaded: dict[str, str], interval_s: float = 60.0):
        self.cfg, self.fs, self.cache, self.interval_s = cfg, fs, cache, interval_s
        self.loaded = dict(loaded)  # ds -> content fingerprint of what the store holds
        self.refreshes = 0
        self.reloads = 0
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def published(cfg, fs: FeatureSet | None = None) -> dict[str, str]:
        """Partitions of the set's raw table (default: the repo's default model's first set) in the
        lake now: ds -> content fingerprint."""
        fs = fs or cfg.repo().default_model().feature_sets[0]
        raw = cfg.lake().table(fs.source.table)
        return {ds: raw.manifest(ds).content_fingerprint for ds in raw.partitions()}

    @property
    def loaded_through(self) -> str | None:
        return max(self.loaded) if self.loaded else None

    def check_once(self) -> list[str]:
        """Bring the store up to the lake; the partitions applied (all of them after a full reload)."""
        now = self.published(self.cfg, self.fs)
        replaced = sorted(d for d, fp in self.loaded.items() if d in now and now[d] != fp)
        new = sorted(d for d in now if d not in self.loaded)
        if not replaced and not new:
            return []
        raw = self.cfg.lake().table(self.fs.source.table)
        store = self.cache.store
        if not isinstance(store, (EmbeddedStore, RedisStore)):
            raise TypeError(f"cannot refresh a {type(store).__name__}")
        days = sorted(now) if replaced else new
        events = pd.concat([raw.read(d, columns=list(self.fs.event_columns)) for d in days], ignore_index=True)
        if replaced:  # a re-published day: rebuild from everything rather than keep both versions
            if isinstance(store, RedisStore):
                store.load(events)
                self.cache.invalidate()
            else:
                self.cache.swap(EmbeddedStore(self.fs, events))
            self.reloads += 1
        else:
            if isinstance(store, EmbeddedStore):
                self.cache.swap(store.appended(events))
            else:
                self.cache.invalidate(store.append(events))
            self.refreshes += 1
        self.loaded.update({d: now[d] for d in days})
        return days

    def start(self) -> StoreRefresher:
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lockstep-store-refresh", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        import logging

        while not self._stop.wait(self.interval_s):
            try:
                days = self.check_once()
                if days:
                    logging.getLogger(__name__).info(
                        "online store: applied %s %s", events_table(self.fs), ", ".join(days)
                    )
            except Exception as exc:  # noqa: BLE001 - keep serving what is loaded; counted and retried
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logging.getLogger(__name__).warning("online store refresh failed: %s", self.last_error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


_DAY_NS = 86_400 * 10**9


@lru_cache(maxsize=4096)
def _ds_before_day(day: int) -> str:
    """The ds of the UTC day before day number ``day`` (days since 1970-01-01)."""
    return (pd.Timestamp((day - 1) * _DAY_NS, tz="UTC")).strftime("%Y-%m-%d")


def _none_if_nan(v: float):
    return None if math.isnan(v) else v
