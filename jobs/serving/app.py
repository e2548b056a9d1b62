"""Reference serving service of one declared model: ``POST /predict`` -> the champion's score, every
response logged.

A request names the model's query keys (``model.query_keys``): for a model with one key the body
is ``{"entity_id": ..., "request_time": ...}`` as it always was; a model joining sets on several
keys takes them by name, top level or under ``"keys"`` (``{"shop": "s1", "courier": "c7", ...}``).
Every joined set is evaluated on its bound key (in join order), each from its own online store over
its source's raw table (``fs.source.table``, keyed by the set's entity: int64 or string keys), and
the record names the model's sets and every set's fingerprint (``+``-joined, ``model.fingerprint``
when the code is right). A champion whose lineage fingerprint is not ``model.fingerprint`` is refused
at start-up (it was trained on other feature-set versions).

Swaps (``jobs.serving.swap``): the service follows the champion alias — a poll every
``model_poll_s`` (30 s; 0: off), ``POST /admin/reload`` (API key when keys are configured) and SIGHUP
(the uvicorn process itself; with ``--workers`` a worker's pid) — loads a new champion on a thread,
refuses (alert, ``lockstep_serving_model_swaps_refused_total``; the old one keeps serving) one
trained for other feature-set versions, and swaps by replacing the ONE reference to the immutable
:class:`ModelPredictor` that a request reads once: every record names the version that scored it.

Canary guards (``jobs.serving.guards``): while a canary serves, every answered query feeds its arm's
sliding window (latency of its arm's answer, failed, degraded, score); a thread judges the model's
declared ``guards`` every ``guard_eval_s`` off the request path, over the windows of every worker
(``Settings.peers_dir``, ``jobs.serving.peers``). A breach sets the share to 0 in this process at
once (in every other worker at its next judgement), records the evidence on the challenger version
(every poll reads it: no canary for that version until ``lockstep canary --reset-breach``), counts
and alerts. A canary query whose
challenger raises is answered by the champion and counted as a canary error. The champion's training
age is checked at start-up, after a swap and every ``staleness_check_s``: one alert per stale version.

Feature modes (both produce the kernel's values; see DESIGN §7):

* ``fresh``: the entity's events from the online store (behind the L1 cache), then
  ``features.online.compute_one`` known_at the request time — what the same code computes
  offline for that ``(entity, request_time)``. The kernel's index of the events (dedup, sort,
  search keys) is built once — for the embedded store over the whole table at load, for Redis
  per cached entry — so a request pays only the evaluation (~0.5 ms with a 200-tree model,
  ``python -m bench.serving``). It runs inline on the event loop: a thread-pool hop would cost
  about as much as the work, and CPU parallelism comes from ``--workers`` processes.
* ``materialized``: the vector of ``feature_snapshots/<set>/ds=date(t)-1`` (as known at 00:00 of
  the request day): no kernel call per request, but up to a day stale (recencies etc.).

Degradation, per joined set: when a set's store errors or exceeds that set's timeout
(``Join.timeout_ms``, else ``store_timeout_ms``; Redis: also the socket timeout), or the day's
snapshot is not published, THAT set is served with its DECLARED DEFAULTS (``Feature.default``:
counts and sums 0, other features null — the vector of an entity with no history), the other sets
are served as usual, and the record says ``degraded=true`` with the reason: ``store_timeout``,
``store_error``, ``no_snapshot`` for a one-set model, ``<set>:<reason>`` entries joined by ``;``
for several (``jobs.serving.log.degraded_sets``). Degraded rows show up in the skew report as
mismatches of their own (on the degraded set's features only), not as silent zeros. A null key of
a nullable key column (a query with no value for it) is no entity: that set's declared defaults.

Fan-out (a model joining several sets): every set has its own L1 cache, mode (``Join.mode``, else
the request's) and timeout. A set whose store can block (anything but the in-process
:class:`EmbeddedStore`, e.g. Redis) and whose entity is not in its L1 cache is fetched on a thread
of the fan-out pool (``fanout_threads``), all such sets at once, while the in-memory sets are
evaluated inline on the event loop; each is awaited at most its own timeout from the request's
start, so one slow set costs at most its timeout, never the sum. In-memory sets never take the
thread hop (measured: a hop costs about what a whole set's evaluation costs, ``python -m
bench.serving``). ``/metrics`` (Prometheus text, every worker summed: ``jobs.serving.metrics``) and
``/metrics.json`` (this worker's counters and recent percentiles) report latency, timeouts, errors
and degradations per set.

Run: ``uvicorn --factory jobs.serving.app:app_from_env`` (settings from ``LOCKSTEP_SERVING_*``,
see :meth:`Settings.from_env`) or ``lockstep serve``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import logging
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Annotated, Literal

import msgspec
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from features.kernel import warm as warm_kernel
from features.online import compute_many, compute_one
from features.spec import FeatureSet
from jobs.serving.auth import KeyRing
from jobs.serving.canary import canary_point, in_canary
from jobs.serving.drift import ServedDrift
from jobs.serving.guards import ArmWindows, GuardMonitor, Verdict
from jobs.serving.log import (
    LogQueueFull,
    ServingLog,
    degraded_reason,
    log_feature_sets,
    log_keys,
    make_record,
    make_records,
    model_wal_dir,
    shadow_wal_dir,
)
from jobs.serving.metrics import ServiceMetrics
from jobs.serving.model import Model, ModelSource, scores_of
from jobs.serving.peers import PeerDir
from jobs.serving.shadow import Shadow, ShadowScorer
from jobs.serving.shadow import recover as recover_shadow
from jobs.serving.shadow_process import ShadowProcess
from jobs.serving.store import (
    EmbeddedStore,
    L1Cache,
    RedisStore,
    SnapshotVectors,
    StoreRefresher,
    StoreUnavailable,
    history_of,
    key_of,
)
from jobs.serving.swap import ChampionFollower, FingerprintMismatchError, check_model

MODES = ("fresh", "materialized")
_JSON = msgspec.json.Encoder()

#: The pluggable feature computation of fresh mode: (entity's events, entity, request time, set) -> values.
#: Only tests replace it (deliberately wrong implementations); a hook may carry a ``fingerprint``
#: attribute to stamp instead of the fingerprint of the set it names (a service built from another
#: version of that set).
FeatureHook = Callable[[pd.DataFrame, object, pd.Timestamp, FeatureSet], dict]


def kernel_hook(events: pd.DataFrame, entity_id, request_time: pd.Timestamp, fs: FeatureSet) -> dict:
    return compute_one(events, entity_id, request_time, fs, "known_at")


@dataclass(frozen=True)
class Settings:
    lake_root: str = ".lockstep/lake"
    model: str | None = None  # the declared model served (None: the repo's default model)
    mode: str = "fresh"  # default mode when a request does not name one
    redis_url: str | None = None  # None: the embedded store
    store_timeout_ms: float = 50.0
    cache_ttl_s: float = 1.0
    cache_entries: int = 50_000
    wal_dir: str = ".lockstep/serving_wal"  # the WAL root: a model logs to <wal_dir>/<model>
    fsync: str = "interval"
    log_queue_size: int = 10_000
    model_path: str | None = None  # a pickled Model for a service without a registry (tests)
    load_store: bool = True  # fill the Redis store from the lake at start-up
    refresh_s: float = 60.0  # apply new raw_events partitions to the store this often (0: never)
    fanout_threads: int = 8  # threads fetching the sets whose store can block (Redis), per process
    api_keys_file: str | None = None  # key hashes, one per line (jobs.serving.auth); None and no
    api_key_hashes: str | None = None  # ... env entries either: the service is OPEN (a warning at start)
    api_keys_reload_s: float = 2.0  # the key file is re-read, when changed, at most this often
    max_batch: int = 1000  # queries per POST /predict/batch (422 above)
    max_body_bytes: int = 1 << 20  # request bodies larger than this are refused (413)
    #: read the champion alias this often and swap to a new version off the request path (0: never;
    #: POST /admin/reload and SIGHUP still do): jobs.serving.swap. Every worker polls on its own.
    model_poll_s: float = 30.0
    #: shadow scoring (``jobs.serving.shadow``): follow the registry's challenger alias (same poll, same
    #: fingerprint check) and score every request with it off the request path; ``challenger_version``
    #: names a version to shadow instead of the alias'. ``shadow_queue_size``: offers waiting for the
    #: in-process shadow worker (a full queue drops, counts and alerts; the shadow process's queue is
    #: the WAL itself, which never drops).
    shadow: bool = True
    challenger_version: str | None = None
    shadow_queue_size: int = 1000
    #: the shadow worker lets this many ms of offers queue up behind the first before one model call
    #: scores them all (``ShadowScorer.linger_s``; 0: score what is queued at once). 20 ms halved the
    #: shadow worker's CPU per request, 100 ms halved it again (50-70 -> 21-35 us, quiet machine;
    #: ``python -m bench.serving.profile_batch --single --shadow``): the shadow record comes later
    shadow_linger_ms: float = 100.0
    #: score the challenger in a child process of its own (``jobs.serving.shadow_process``), which tails
    #: this process's WAL at ``shadow_linger_ms`` intervals with ``nice`` ``shadow_nice``: the request
    #: path shares neither the GIL nor, on a busy machine, the CPU with it. False: the in-process worker
    #: thread (``jobs.serving.shadow.ShadowScorer``; for challengers that cannot be pickled)
    shadow_process: bool = True
    shadow_nice: int = 19
    #: canary serving (``jobs.serving.canary``): the share of entities the installed challenger serves
    #: (None: the challenger version's registry tag ``lockstep.canary_share``, 0 without one) and the
    #: salt of the entity hash (another salt: another population)
    canary_share: float | None = None
    canary_salt: str = ""
    #: judge the canary's guards (the model's ``guards``, ``jobs.serving.guards``) this often, off the
    #: request path; check the champion's training age this often
    guard_eval_s: float = 1.0
    #: record a passing guard verdict on the challenger version (the ramp's evidence) at most this often
    canary_judged_every_s: float = 60.0
    staleness_check_s: float = 3600.0
    #: served-feature drift (``jobs.serving.drift``): PSI of the last ``drift_window`` champion-served
    #: vectors against the champion's training features, judged this often (0: never) from
    #: ``drift_min_rows`` vectors on; alerted past the model's ``drift_psi``
    drift_eval_s: float = 60.0
    drift_window: int = 5000
    drift_min_rows: int = 500
    #: the directory the workers of ONE service run share their guard and drift windows in
    #: (``jobs.serving.peers``; emptied before the workers start: ``lockstep serve --workers N`` sets
    #: it to ``<metrics-dir>/windows``); None: each process judges its own traffic only
    peers_dir: str | None = None
    #: move everything alive once start-up is done (the store, its index, the models) out of the cyclic
    #: garbage collector's reach (``gc.freeze``; undone at shutdown): a full collection otherwise walks
    #: that whole heap, a pause of a request or more (bench.serving: /predict/batch client p99)
    gc_freeze: bool = True
    #: the interpreter's thread switch interval while the service runs (``sys.setswitchinterval``;
    #: None: Python's, 5 ms): how long the event loop, coming back from a call that released the GIL,
    #: may wait for a background thread (shadow worker, WAL writers) to hand it back
    switch_interval_ms: float | None = None

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """``LOCKSTEP_SERVING_<FIELD>`` (upper case) for every field; ``LOCKSTEP_LAKE`` for the lake."""
        values = {}
        if os.environ.get("LOCKSTEP_LAKE"):
            values["lake_root"] = os.environ["LOCKSTEP_LAKE"]
        for f in fields(cls):
            raw = os.environ.get(f"LOCKSTEP_SERVING_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            typ = {"float": float, "int": int, "bool": lambda s: s.lower() in ("1", "true", "yes")}.get(
                str(f.type).split(" |")[0], str
            )
            values[f.name] = typ(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Metrics:
    """Counters and a window of recent latencies (ms) for ``/metrics.json`` (this worker only)."""

    requests: int = 0
    ok: int = 0
    degraded: int = 0
    store_errors: int = 0
    store_timeouts: int = 0
    log_refused: int = 0
    log_errors: int = 0
    by_mode: dict = field(default_factory=lambda: {m: 0 for m in MODES})
    latencies: deque = field(default_factory=lambda: deque(maxlen=20_000))

    def percentiles(self) -> dict:
        if not self.latencies:
            return {"p50_ms": None, "p99_ms": None}
        a = np.fromiter(self.latencies, dtype=np.float64)
        return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


@dataclass
class SetMetrics:
    """One joined set's counters and recent fetch latencies (ms): ``/metrics.json`` ``feature_sets``."""

    requests: int = 0
    timeouts: int = 0
    errors: int = 0
    degraded: int = 0
    offloaded: int = 0  # fetched on a fan-out thread (a blocking store, L1 miss)
    latencies: deque = field(default_factory=lambda: deque(maxlen=20_000))
    #: the set's Prometheus series (``jobs.serving.metrics.SetSink``), attached by the service
    sink: object | None = None

    def observe(
        self, ms: float, reason: str | None, offloaded: bool = False, mode: str = "fresh", version: str | None = None
    ) -> None:
        self.requests += 1
        self.latencies.append(ms)
        self.offloaded += offloaded
        if reason is not None:
            self.degraded += 1
            if reason == "store_timeout":
                self.timeouts += 1
            elif reason == "store_error":
                self.errors += 1
        if self.sink is not None:
            self.sink.evaluated(mode, ms / 1000, version)
            self.sink.outcome(mode, reason, version=version)

    def observe_batch(
        self, ms: float, reasons: list, offloaded: bool = False, mode: str = "fresh", version: str | None = None
    ) -> None:
        """One evaluation of the set for a batch of ``len(reasons)`` queries (a reason per query)."""
        self.requests += len(reasons)
        self.latencies.append(ms)
        self.offloaded += offloaded * len(reasons)
        counts: dict = {}
        for r in reasons:
            counts[r] = counts.get(r, 0) + 1
        for reason, n in counts.items():
            if reason is not None:
                self.degraded += n
                self.timeouts += n if reason == "store_timeout" else 0
                self.errors += n if reason == "store_error" else 0
        if self.sink is not None:
            self.sink.evaluated(mode, ms / 1000, version)
            for reason, n in counts.items():
                self.sink.outcome(mode, reason, n, version)

    def summary(self) -> dict:
        a = np.fromiter(self.latencies, dtype=np.float64) if self.latencies else None
        return {
            "requests": self.requests,
            "p50_ms": None if a is None else float(np.percentile(a, 50)),
            "p99_ms": None if a is None else float(np.percentile(a, 99)),
            "timeouts": self.timeouts,
            "errors": self.errors,
            "degraded": self.degraded,
            "offloaded": self.offloaded,
        }


class Predictor:
    """One feature set's features (+ the score, for a one-set model) for one request (no HTTP, no
    logging): the in-process serving path."""

    def __init__(
        self,
        fs: FeatureSet,
        events: L1Cache,
        snapshots: SnapshotVectors | None,
        model: Model,
        hook: FeatureHook | None = None,
        metrics: Metrics | None = None,
        *,
        timeout_s: float | None = None,
        mode: str | None = None,
        blocking: bool | None = None,
    ):
        self.fs, self.events, self.snapshots, self.model = fs, events, snapshots, model
        #: the set's own fetch timeout (None: only the store's), its own mode (None: the request's)
        self.timeout_s, self.mode = timeout_s, mode
        #: whether a fetch can block (fetched off the event loop on an L1 miss): any store but the embedded one
        self.blocking = (not isinstance(events.store, EmbeddedStore)) if blocking is None else blocking
        self.set_metrics = SetMetrics()
        self.hook = hook or kernel_hook
        #: the kernel itself (no hook given): evaluate on the cached per-entity index
        self._indexed = hook is None or hook is kernel_hook
        # a hook's own fingerprint stamps the set it names ("<set>:<hash>"), not the other joined sets
        stamped = getattr(self.hook, "fingerprint", None)
        self.fingerprint = stamped if stamped and stamped.split(":", 1)[0] == fs.name else fs.fingerprint
        self._names = list(model.feature_names)
        self._set_names = fs.feature_names  # a property building a tuple per call: once, not per query
        self.metrics = metrics or Metrics()
        self.defaults = {
            f.name: (int(f.default or 0) if f.is_integer else (None if f.default is None else float(f.default)))
            for f in fs.features
        }
        self._lock = threading.Lock()

    def features(
        self, entity_id, request_time: pd.Timestamp, mode: str, history=None, count: bool = True
    ) -> tuple[dict, str | None, str | None]:
        """(values, degraded reason or None, snapshot ds or None). ``entity_id`` None (a null key of a
        nullable key column): no entity, the declared defaults. ``history``: the entity's cached history
        (``L1Cache.peek``), else it is fetched. ``count``: count a store failure in the service's
        metrics (the fan-out counts its own, once, on the event loop)."""
        if entity_id is None:
            return dict(self.defaults), None, None
        if mode == "materialized":
            try:
                ds, vec = self.snapshots.vector(entity_id, request_time)
            except StoreUnavailable as exc:
                return dict(self.defaults), exc.reason, None
            return (dict(self.defaults) if vec is None else dict(zip(self._set_names, vec))), None, ds
        try:
            if history is None:
                history = history_of(self.events, entity_id, self.fs)
        except StoreUnavailable as exc:
            if count:
                self.count_failure(exc.reason)
            return dict(self.defaults), exc.reason, None
        if self._indexed:
            return compute_one(history.index, entity_id, request_time, self.fs, "known_at"), None, None
        return self.hook(history.frame, entity_id, request_time, self.fs), None, None

    def batch_features(
        self, entity_ids: list, request_times: list, mode: str, count: bool = True
    ) -> list[tuple[dict, str | None, str | None]]:
        """:meth:`features` of many queries: the same (values, reason, ds) per query. In fresh mode each
        distinct entity's history is fetched once, and the queries whose histories share one kernel
        index (the embedded store's whole-table index: all of them) are evaluated in ONE kernel call."""
        if mode == "materialized":
            return [self.features(e, t, mode) for e, t in zip(entity_ids, request_times)]
        out: list = [None] * len(entity_ids)
        distinct = list(dict.fromkeys(e for e in entity_ids if e is not None))
        bulk = getattr(self.events, "histories", None)  # the L1 cache: one lock for the batch
        if bulk is not None:
            histories = dict(zip(distinct, bulk(distinct)))
        else:
            histories = {}
            for e in distinct:
                try:
                    histories[e] = history_of(self.events, e, self.fs)
                except StoreUnavailable as exc:
                    histories[e] = exc
        groups: dict = {}  # id(index) -> (index, [query positions])
        for i, e in enumerate(entity_ids):
            if e is None:
                out[i] = (dict(self.defaults), None, None)
                continue
            got = histories[e]
            if isinstance(got, StoreUnavailable):
                if count:
                    self.count_failure(got.reason)
                out[i] = (dict(self.defaults), got.reason, None)
            elif not self._indexed:
                out[i] = (self.hook(got.frame, e, request_times[i], self.fs), None, None)
            else:
                groups.setdefault(id(got.index), (got.index, []))[1].append(i)
        for index, rows in groups.values():
            values = compute_many(index, [entity_ids[i] for i in rows], [request_times[i] for i in rows], self.fs)
            for i, v in zip(rows, values):
                out[i] = (v, None, None)
        return out

    def count_failure(self, reason: str) -> None:
        with self._lock:
            if reason == "store_timeout":
                self.metrics.store_timeouts += 1
            self.metrics.store_errors += 1

    def score(self, values: dict) -> float:
        return score_of(self.model, self._names, values)


def score_of(model: Model, names: list[str], values: dict) -> float:
    # One float64 row, nulls as NaN (the scoring job's dtype contract; counts are exact in float64).
    row = np.array([[np.nan if values[n] is None else values[n] for n in names]], dtype=np.float64)
    matrix = getattr(model, "predict_matrix", None)
    if matrix is not None:  # no DataFrame per request
        return float(matrix(row)[0])
    return float(model.predict(pd.DataFrame(row, columns=names))[0])


class ModelPredictor:
    """Every joined set's features for one request, each on its bound query key, then the score.

    :meth:`features` evaluates the sets one after the other on the calling thread (in-process
    use, and every model whose sets are all in memory); :meth:`afeatures` is the service's
    fan-out (see the module docstring).

    The service treats it as immutable: a model swap builds another one around the new model
    (:meth:`with_model`, the same sets, caches and executor) and replaces the service's one
    reference to it; a request reads that reference once, so one version scores and logs it."""

    def __init__(
        self, decl, parts: list[tuple[object, Predictor]], model: Model, executor=None, loaded_at: float | None = None
    ):
        self.decl, self.parts, self.model = decl, parts, model
        #: when this model started serving (unix time)
        self.loaded_at = time.time() if loaded_at is None else loaded_at
        self._version = str(model.version)
        #: what the record carries: every set's fingerprint as served, in join order
        self.fingerprint = "+".join(p.fingerprint for _, p in parts)
        self._names = list(model.feature_names)
        self._cast = [(j.key_name, key_of(p.fs)) for j, p in parts]
        self._single = len(parts) == 1
        #: any set fetched off the event loop: only then does a request take the async fan-out
        self.fans_out = any(p.blocking for _, p in parts)
        self.executor = executor

    def with_model(self, model: Model) -> ModelPredictor:
        """The same sets scored by ``model`` (its feature names must be this one's: checked before a swap)."""
        if tuple(model.feature_names) != tuple(self._names):
            raise ValueError(f"model {model.name} v{model.version} scores other features than the served one")
        return ModelPredictor(self.decl, self.parts, model, self.executor)

    def _key(self, keys: dict, i: int):
        col, cast = self._cast[i]
        v = keys.get(col)
        return None if v is None else cast(v)

    def features(self, keys: dict, request_time: pd.Timestamp, mode: str) -> tuple[dict, str | None, str | None]:
        """(values of every set, the degraded reason or None, the first snapshot ds or None)."""
        values: dict = {}
        reasons: list = []
        snap = None
        for i, (_, pred) in enumerate(self.parts):
            t0 = time.perf_counter()
            m = pred.mode or mode
            got, why, ds = pred.features(self._key(keys, i), request_time, m)
            pred.set_metrics.observe((time.perf_counter() - t0) * 1000, why, mode=m, version=self._version)
            values.update(got)
            if why is not None:
                reasons.append((pred.fs.name, why))
            snap = snap or ds
        return values, degraded_reason(reasons, self._single), snap

    async def afeatures(self, keys: dict, request_time: pd.Timestamp, mode: str) -> tuple[dict, str | None, str | None]:
        """:meth:`features` with the blocking sets fetched concurrently, each within its own timeout."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        results: list = [None] * len(self.parts)
        pending = []
        for i, (_, pred) in enumerate(self.parts):  # first start every blocking fetch ...
            key, m = self._key(keys, i), pred.mode or mode
            if pred.blocking and key is not None and m == "fresh":
                cached = pred.events.peek(key)
                if cached is None:
                    done: list = []
                    fut = loop.run_in_executor(self.executor, pred.features, key, request_time, m, None, False)
                    fut.add_done_callback(lambda _f, d=done: d.append(time.perf_counter()))
                    pending.append((i, pred, fut, done, m))
                    continue
                results[i] = (key, m, cached)
            else:
                results[i] = (key, m, None)
        for i, (_, pred) in enumerate(self.parts):  # ... then evaluate the in-memory sets inline meanwhile
            if results[i] is not None:
                key, m, cached = results[i]
                t0 = time.perf_counter()
                results[i] = pred.features(key, request_time, m, cached)
                pred.set_metrics.observe(
                    (time.perf_counter() - t0) * 1000, results[i][1], mode=m, version=self._version
                )
        for i, pred, fut, done, m in pending:
            timeout = pred.timeout_s
            try:
                if timeout is None:
                    results[i] = await fut
                else:
                    results[i] = await asyncio.wait_for(fut, max(0.0, timeout - (time.perf_counter() - start)))
            except (asyncio.TimeoutError, cf.TimeoutError):
                # the thread finishes on its own; its answer is dropped
                results[i] = (dict(pred.defaults), "store_timeout", None)
            except Exception as exc:  # noqa: BLE001 - a failing set degrades only itself
                results[i] = (dict(pred.defaults), "store_error", None)
                logging.getLogger(__name__).warning("feature set %s failed: %r", pred.fs.name, exc)
            if results[i][1] in ("store_timeout", "store_error"):
                pred.count_failure(results[i][1])
            end = done[0] if done else time.perf_counter()
            pred.set_metrics.observe((end - start) * 1000, results[i][1], offloaded=True, mode=m, version=self._version)
        values: dict = {}
        reasons: list = []
        snap = None
        for (_, pred), (got, why, ds) in zip(self.parts, results):
            values.update(got)
            if why is not None:
                reasons.append((pred.fs.name, why))
            snap = snap or ds
        return values, degraded_reason(reasons, self._single), snap

    def score(self, values: dict) -> float:
        return score_of(self.model, self._names, values)

    def scores(self, rows: list[dict]) -> list[float]:
        return scores_of(self.model, self._names, rows)

    def _merge(self, per_set: list[list], n: int) -> tuple[list[dict], list, list]:
        values: list[dict] = [{} for _ in range(n)]
        reasons: list[list] = [[] for _ in range(n)]
        snaps: list = [None] * n
        for (_, pred), results in zip(self.parts, per_set):
            for q, (got, why, ds) in enumerate(results):
                values[q].update(got)
                if why is not None:
                    reasons[q].append((pred.fs.name, why))
                snaps[q] = snaps[q] or ds
        return values, [degraded_reason(r, self._single) for r in reasons], snaps

    def batch_features(self, keys: list[dict], request_times: list, mode: str) -> tuple[list[dict], list, list]:
        """:meth:`features` of many queries, each set evaluated once for all of them
        (:meth:`Predictor.batch_features`): (values, degraded reasons, snapshot ds), one per query."""
        per_set = []
        for i, (_, pred) in enumerate(self.parts):
            m = pred.mode or mode
            t0 = time.perf_counter()
            got = pred.batch_features([self._key(k, i) for k in keys], request_times, m)
            ms = (time.perf_counter() - t0) * 1000
            pred.set_metrics.observe_batch(ms, [r[1] for r in got], mode=m, version=self._version)
            per_set.append(got)
        return self._merge(per_set, len(keys))

    async def abatch_features(self, keys: list[dict], request_times: list, mode: str) -> tuple[list[dict], list, list]:
        """:meth:`batch_features` with every blocking set's fetch on a fan-out thread, all at once, each
        within its own timeout from the batch's start: a set that misses it serves its declared
        defaults to every query of the batch (``store_timeout``), like :meth:`afeatures`."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        per_set: list = [None] * len(self.parts)
        pending = []
        for i, (_, pred) in enumerate(self.parts):
            m, ents = pred.mode or mode, [self._key(k, i) for k in keys]
            if pred.blocking and m == "fresh":
                fut = loop.run_in_executor(self.executor, pred.batch_features, ents, request_times, m, False)
                pending.append((i, pred, fut, m, ents))
                continue
            t0 = time.perf_counter()
            per_set[i] = pred.batch_features(ents, request_times, m)
            ms = (time.perf_counter() - t0) * 1000
            pred.set_metrics.observe_batch(ms, [r[1] for r in per_set[i]], mode=m, version=self._version)
        for i, pred, fut, m, ents in pending:
            try:
                if pred.timeout_s is None:
                    got = await fut
                else:
                    got = await asyncio.wait_for(fut, max(0.0, pred.timeout_s - (time.perf_counter() - start)))
            except Exception as exc:  # noqa: BLE001 - a failing set degrades only itself
                why = "store_timeout" if isinstance(exc, (asyncio.TimeoutError, cf.TimeoutError)) else "store_error"
                if why == "store_error":
                    logging.getLogger(__name__).warning("feature set %s failed: %r", pred.fs.name, exc)
                got = [(dict(pred.defaults), None if e is None else why, None) for e in ents]
            for _, why, _ in got:
                if why in ("store_timeout", "store_error"):
                    pred.count_failure(why)
            per_set[i] = got
            ms = (time.perf_counter() - start) * 1000
            pred.set_metrics.observe_batch(ms, [r[1] for r in got], offloaded=True, mode=m, version=self._version)
        return self._merge(per_set, len(keys))


#: Bounds of a request body's fields (a key's text, an id, a time): beyond them, 422 naming the field.
MAX_KEY_CHARS = 256
KeyText = Annotated[str, StringConstraints(max_length=MAX_KEY_CHARS)]


class Query(BaseModel):
    """One query: the model's query keys (``entity_id`` for a one-key model; by name, top level or
    under ``keys``, for several), its time and id. Other fields are ignored and never reach the log
    (PII allowlist)."""

    model_config = ConfigDict(extra="allow")

    entity_id: int | KeyText | None = None
    keys: Annotated[dict[KeyText, int | KeyText | None], Field(max_length=32)] | None = None
    request_time: Annotated[str, StringConstraints(max_length=64)] | None = None  # ISO 8601; naive = UTC; default: now
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None  # default: a uuid4


class PredictRequest(Query):
    """Body of ``POST /predict``: one :class:`Query` and its mode."""

    mode: Literal["fresh", "materialized"] | None = None  # default: the service's


class BatchQuery(Query):
    mode: None = None  # a batch has one mode (``BatchRequest.mode``): a query naming its own is refused


class BatchRequest(BaseModel):
    """Body of ``POST /predict/batch``: up to ``Settings.max_batch`` queries, one mode."""

    model_config = ConfigDict(extra="forbid")

    queries: Annotated[list[BatchQuery], Field(min_length=1)]
    mode: Literal["fresh", "materialized"] | None = None


class FieldError(ValueError):
    """A request field that does not fit the model's declaration; ``loc`` names it as pydantic does."""

    def __init__(self, loc: tuple, msg: str):
        super().__init__(msg)
        self.loc = loc

    def detail(self, prefix: tuple = ("body",)) -> list[dict]:
        """The 422 body, shaped like FastAPI's own validation errors."""
        return [{"type": "value_error", "loc": [*prefix, *self.loc], "msg": str(self)}]


def request_keys(req: Query, keys: list[tuple[str, str, str]], nullable=frozenset()) -> dict:
    """``{query column: key}`` of a request, typed by the declaration; :class:`FieldError` (a ValueError)
    naming a missing or mistyped key. A key column in ``nullable`` (declared nullable) may be missing
    or null: None."""
    extra = req.model_extra or {}
    out = {}
    for log_col, col, type_ in keys:
        loc = ("keys", col) if col in (req.keys or {}) else (col,)
        v = (req.keys or {}).get(col, extra.get(col))
        if v is None and log_col == "entity_id":
            v, loc = req.entity_id, (col,) if req.entity_id is None else ("entity_id",)
        if v is None and col in nullable:
            out[col] = None
            continue
        if v is None:
            raise FieldError(loc, f"missing key {col!r} (the model's query keys: {[c for _, c, _ in keys]})")
        if type_ == "int64":
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise FieldError(loc, f"key {col!r} must be an integer, got {type(v).__name__}")
            try:
                v = int(v)
            except ValueError:
                raise FieldError(loc, f"key {col!r} must be an integer, got {v[:MAX_KEY_CHARS]!r}") from None
        elif isinstance(v, (dict, list, bool, float)):
            raise FieldError(loc, f"key {col!r} must be a string, got {type(v).__name__}")
        else:
            v = str(v)
            if len(v) > MAX_KEY_CHARS:
                raise FieldError(loc, f"key {col!r} is longer than {MAX_KEY_CHARS} characters")
        out[col] = v
    return out


def parse_query(q: Query, keys, nullable=frozenset()) -> tuple[dict, pd.Timestamp]:
    """(typed query keys, request time UTC; now if not given) of one query; :class:`FieldError`."""
    try:
        t = _utc(q.request_time) if q.request_time else pd.Timestamp.now(tz="UTC")
    except (ValueError, TypeError) as exc:
        raise FieldError(("request_time",), f"not an ISO 8601 time: {exc}") from None
    return request_keys(q, keys, nullable), t


def uuid4_hexes(n: int) -> list[str]:
    """``n`` ``uuid.uuid4().hex`` values from ONE ``os.urandom`` call (the same format: version 4,
    RFC 4122 variant)."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])
    return [raw[k : k + 16].hex() for k in range(0, 16 * n, 16)]


def encode_json(body) -> bytes:
    """``body`` (plain JSON values: dict, list, str, int, float, bool, None) as UTF-8 JSON. The same
    values as FastAPI's encoding of it (floats in shortest round-trip form; an exponent is written
    ``1e+18`` there, ``1e18`` here); a non-JSON type raises instead of being converted. (No NaN
    gets here: its record is refused by the serving log first, so its query is not answered.)"""
    return _JSON.encode(body)


def _utc(ts) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")


def create_app(
    settings: Settings,
    *,
    model_source: ModelSource | None = None,
    store=None,
    hook: FeatureHook | None = None,
    serving_log: ServingLog | None = None,
    cfg=None,
    notifier=None,
):
    """The FastAPI app of the declared model ``settings.model``. Everything not given is built from
    ``settings`` at start-up. ``store``: one store for every joined set, or ``{set name: store}``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Response
    from fastapi.responses import JSONResponse

    from jobs.config import Config

    if settings.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {settings.mode!r}")
    # built here, not at start-up: a key file that does not parse stops the app before it serves
    key_ring = KeyRing(settings.api_keys_file, settings.api_key_hashes, settings.api_keys_reload_s)
    cfg = cfg or Config(lake_root=settings.lake_root)
    repo = cfg.repo()
    decl = repo.model(settings.model) if settings.model else repo.default_model()
    keys = log_keys(decl)
    names = list(decl.feature_names)
    nullable = frozenset(c for c, _, null in decl.id_fields if null)
    state: dict = {}

    def set_store(fs: FeatureSet):
        if isinstance(store, dict):
            return store.get(fs.name)
        return store

    @asynccontextmanager
    async def lifespan(app):
        notify = notifier or _default_notifier(cfg)
        if not key_ring.configured:
            logging.getLogger(__name__).warning(
                "NO API KEYS CONFIGURED: /predict is open to anyone who can reach this port (local development "
                "only). Set LOCKSTEP_SERVING_API_KEYS_FILE (lockstep serve-keys add) or "
                "LOCKSTEP_SERVING_API_KEY_HASHES."
            )
        metrics = Metrics()
        source = model_source or _model_source(settings, cfg, decl)
        model = source.champion()
        check_model(model, decl)  # at start-up a wrong champion stops the service (no old one to keep)
        parts, caches, bases, refreshers = [], [], [], []
        for join in decl.joins:
            fs = join.feature_set
            base, refresher = set_store(fs), None
            loaded: dict = {}
            if base is None:
                loaded = StoreRefresher.published(cfg, fs)  # before the read: a later partition is applied later
                through = max(loaded) if loaded else None
                if settings.redis_url:
                    ms = join.timeout_ms if join.timeout_ms is not None else settings.store_timeout_ms
                    base = RedisStore(fs, settings.redis_url, timeout_s=ms / 1000)
                    if settings.load_store:
                        from jobs.serving.store import read_lake_events

                        base.load(read_lake_events(cfg, fs, through))
                else:
                    base = EmbeddedStore.from_lake(cfg, fs, through)
            cache = L1Cache(base, settings.cache_entries, settings.cache_ttl_s, fs=fs)
            if set_store(fs) is None and (settings.load_store or not settings.redis_url):
                refresher = StoreRefresher(cfg, fs, cache, loaded, settings.refresh_s).start()
                refreshers.append(refresher)
            timeout_ms = join.timeout_ms if join.timeout_ms is not None else settings.store_timeout_ms
            warm_kernel(fs)  # numba's start-up paid here, not by the first request's kernel call
            vectors = SnapshotVectors(cfg, fs)
            if (join.mode or settings.mode) == "materialized":
                vectors.warm()  # loaded here, not by (and on the event loop of) the first request
            parts.append(
                (
                    join,
                    Predictor(
                        fs,
                        cache,
                        vectors,
                        model,
                        hook,
                        metrics,
                        timeout_s=timeout_ms / 1000,
                        mode=join.mode,
                    ),
                )
            )
            caches.append(cache)
            bases.append(base)
        slog = serving_log or ServingLog(
            model_wal_dir(settings.wal_dir, decl),
            decl,
            queue_size=settings.log_queue_size,
            fsync=settings.fsync,
            notifier=notify,
        )
        if serving_log is None or not slog.running:
            slog.start()
        predictor = ModelPredictor(decl, parts, model)
        prom = ServiceMetrics(decl.name, model.version, [p.fs.name for _, p in parts])
        for _, p in parts:
            p.set_metrics.sink = prom.sets[p.fs.name]
        executor = None
        if predictor.fans_out:
            executor = predictor.executor = cf.ThreadPoolExecutor(
                max(settings.fanout_threads, 1), thread_name_prefix="lockstep-fanout"
            )

        def install(new: Model) -> None:
            # ONE reference assignment (atomic under the GIL); requests read state["predictor"] once
            state["predictor"] = state["predictor"].with_model(new)

        def refused(version: str, exc: FingerprintMismatchError) -> None:
            prom.swap_refused(exc.kind)
            _alert(cfg, f"model swap refused: {decl.name} v{version}", "model swap refused", decl.name, str(exc))

        follower = ChampionFollower(
            source,
            model.name,
            str(model.version),
            lambda m: check_model(m, decl),
            install,
            poll_s=settings.model_poll_s,
            on_swap=prom.model_swapped,
            on_refused=refused,
            on_error=lambda _v, _exc: prom.reload_errors.inc(),
        )

        def shadow_scored(version: str, n: int) -> None:
            prom.shadow_scored.labels(model=decl.name, shadow_version=version).inc(n)

        if settings.shadow_process:
            shadow = ShadowProcess(
                decl.feature_names,
                slog.wal_dir,
                lambda: slog.segment,
                poll_s=max(settings.shadow_linger_ms, 10.0) / 1000,
                nice=settings.shadow_nice,
                on_drop=_shadow_dropped(cfg, decl.name, prom),
                on_scored=shadow_scored,
            )
        else:
            shadow = ShadowScorer(
                decl.feature_names,
                ServingLog(
                    shadow_wal_dir(slog.wal_dir), decl, queue_size=settings.log_queue_size, fsync=settings.fsync
                ),
                scores_of,
                queue_size=settings.shadow_queue_size,
                linger_s=settings.shadow_linger_ms / 1000,
                on_drop=_shadow_dropped(cfg, decl.name, prom),
                on_scored=shadow_scored,
            )
        windows = ArmWindows(decl.guards.window)
        peers = PeerDir(settings.peers_dir) if settings.peers_dir else None

        def active() -> str | None:
            model, share = canary_model()
            return None if model is None else str(model.version)

        def breach(version: str, verdict: Verdict) -> None:
            # first, in this process: every request from now on is the champion's
            state["canary"] = (version, 0.0)
            evidence = {
                "guards": [b.guard for b in verdict.breaches],
                "breaches": [
                    {"guard": b.guard, "observed": b.observed, "champion": b.champion, "threshold": b.threshold}
                    for b in verdict.breaches
                ],
                "observed": verdict.observed,
                "window": decl.guards.window,
                "n_champion": verdict.n_champion,
                "n_canary": verdict.n_canary,
                "workers": verdict.workers,
                "at": pd.Timestamp.now(tz="UTC").isoformat(),
                "pid": os.getpid(),
            }
            for b in verdict.breaches:
                prom.canary_rollbacks.labels(model=decl.name, reason=b.guard).inc()
            record = getattr(source, "record_canary_breach", None)
            try:
                if record is not None:
                    record(version, evidence)
            except Exception as exc:  # noqa: BLE001 - stopped here anyway; the alert says it is not recorded
                evidence["not_recorded"] = repr(exc)
            reasons = "; ".join(b.describe() for b in verdict.breaches)
            _alert(
                cfg,
                f"canary stopped: {decl.name} v{version}",
                "canary stopped",
                decl.name,
                f"challenger v{version} broke its canary guards over {verdict.n_canary} canary and "
                f"{verdict.n_champion} champion requests: {reasons}; every request is the champion's"
                + (
                    f" (NOT recorded on the registry: {evidence['not_recorded']})" if "not_recorded" in evidence else ""
                ),
            )

        def follow(version: str, verdict: Verdict) -> None:
            # another worker judged the breach first and recorded, counted and alerted it
            state["canary"] = (version, 0.0)

        def champion_window():
            pred = state["predictor"]
            window = getattr(source, "training_window", None)
            return str(pred.model.version), None if window is None else window(pred.model)

        def stale(version: str, age: float, limit: float) -> None:
            _alert(
                cfg,
                f"stale champion: {decl.name} v{version}",
                "stale champion",
                decl.name,
                f"champion v{version} was trained on data ending {age:.2f} days ago "
                f"(champion_max_age_days {limit:g}): retrain or promote a fresher version",
            )

        def passed(version: str, share: float, verdict: Verdict) -> None:
            # the evidence the ramp advances on (jobs.serving.canary.advance_canary)
            record = getattr(source, "record_canary_judged", None)
            if record is not None:
                record(
                    version,
                    {
                        "share": share,
                        "at": pd.Timestamp.now(tz="UTC").isoformat(),
                        "n_canary": verdict.n_canary,
                        "n_champion": verdict.n_champion,
                        "pid": os.getpid(),
                    },
                )

        monitor = GuardMonitor(
            decl.guards,
            windows,
            active,
            breach,
            on_pass=passed,
            pass_every_s=settings.canary_judged_every_s,
            every_s=settings.guard_eval_s,
            champion=champion_window,
            max_age_days=decl.champion_max_age_days,
            on_stale=stale,
            staleness_s=settings.staleness_check_s,
            peers=peers,
            on_follow=follow,
        )

        def drifted(version: str, psi: dict) -> None:
            for feature in psi:
                prom.served_drift.labels(model=decl.name, feature=feature).inc()
            listed = ", ".join(f"{n}: psi={v:.4f}" for n, v in sorted(psi.items()))
            _alert(
                cfg,
                f"served drift: {decl.name} v{version}",
                "served drift",
                decl.name,
                f"features served with champion v{version} drifted from its training features over the last "
                f"{drift.last['rows']} requests of {drift.last['workers']} worker(s) "
                f"(PSI >= drift_psi {decl.drift_psi:g}): {listed}",
            )

        for feature in names:  # every series from the start: 0 until a feature drifts
            prom.served_drift.labels(model=decl.name, feature=feature)
        drift = ServedDrift(
            names,
            decl.drift_psi,
            lambda: state["predictor"].model,
            lambda m: getattr(source, "training_features", lambda _m: None)(m),
            drifted,
            window=settings.drift_window,
            min_rows=settings.drift_min_rows,
            every_s=settings.drift_eval_s,
            peers=peers,
        )

        def swapped(previous: str, version: str, rollback: bool) -> None:
            drift.reset()  # a new champion: judged on its own traffic, against its own training features
            prom.model_swapped(previous, version, rollback)
            threading.Thread(target=check_staleness, daemon=True).start()

        def check_staleness() -> None:
            try:
                age = monitor.staleness()
            except Exception as exc:  # noqa: BLE001 - a lineage that cannot be read must not stop serving
                logging.getLogger(__name__).warning("champion staleness not checked: %r", exc)
                return
            if age is not None:
                prom.champion_age_days.set(age)
                prom.champion_stale.set(float(monitor.champion()[0] in monitor.stale))

        follower.on_swap = swapped
        challenger = None
        if settings.shadow or settings.challenger_version:
            shadow.start()

            def challenger_refused(version: str, exc: FingerprintMismatchError) -> None:
                prom.challenger_refused.labels(model=decl.name, reason=exc.kind).inc()
                _alert(cfg, f"challenger refused: {decl.name} v{version}", "challenger refused", decl.name, str(exc))

            named = settings.challenger_version
            stage = getattr(source, "challenger_stage", None)
            plain = getattr(source, "challenger_version", lambda: None)

            def read_challenger() -> str | None:
                # the alias and its canary stage in one read: a share never belongs to another version
                if named:
                    version, share = named, 0.0
                elif stage is not None:
                    version, share = stage()
                else:
                    version, share = plain(), 0.0
                if settings.canary_share is not None:
                    share = float(settings.canary_share)
                if version is not None and str(version) in monitor.stopped:
                    share = 0.0  # stopped by its guards in this process (the registry says so too)
                state["canary"] = (version, share)
                # another challenger or another stage: its guards judge its own traffic at this share only
                if (version, share) != (windows.version, windows.share):
                    windows.reset(version, share)
                return version

            challenger = ChampionFollower(
                source,
                model.name,
                None,
                lambda m: check_model(m, decl),
                shadow.install,
                poll_s=settings.model_poll_s,
                on_refused=challenger_refused,
                on_error=lambda _v, _exc: prom.challenger_errors.inc(),
                alias="challenger",
                read=read_challenger,
                uninstall=shadow.uninstall,
            )
            challenger.reload()  # at start-up: shadowed from the first request
            # what a crashed process had not shadowed yet: re-offered, or counted as dropped
            threading.Thread(
                target=recover_shadow,
                args=(shadow, slog.wal_dir, slog.segment),
                name="lockstep-shadow-recovery",
                daemon=True,
            ).start()
        state.update(
            windows=windows,
            guards=monitor,
            drift=drift,
            predictor=predictor,
            follower=follower,
            shadow=shadow,
            challenger=challenger,
            log=slog,
            metrics=metrics,
            prom=prom,
            cache=caches[0],
            caches=caches,
            set_caches={p.fs.name: c for (_, p), c in zip(parts, caches)},
            store=bases[0],
            stores=bases,
            refresher=refreshers[0] if refreshers else None,
            refreshers=refreshers,
            started=time.time(),
        )
        follower.start()  # after state["predictor"] exists: ``install`` replaces it
        if challenger is not None:
            challenger.start()
        check_staleness()  # on load: the champion's age, one alert when it is stale
        monitor.start()
        drift.start()

        def wake() -> None:
            follower.wake()
            if challenger is not None:
                challenger.wake()

        hup = _on_sighup(wake)
        interval = sys.getswitchinterval()
        if settings.switch_interval_ms is not None:
            sys.setswitchinterval(settings.switch_interval_ms / 1000)
        if settings.gc_freeze:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            if settings.gc_freeze:
                gc.unfreeze()
            sys.setswitchinterval(interval)
            hup()
            monitor.stop()
            drift.stop()
            if peers is not None:
                peers.close()
            follower.stop()
            if challenger is not None:
                challenger.stop()
                shadow.close()
            for refresher in refreshers:
                refresher.stop()
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
            slog.close()
            prom.close()

    app = FastAPI(title="Lockstep reference service", lifespan=lifespan)
    app.state.lockstep = state
    state["keys"] = key_ring
    app.add_middleware(Guard, state=state, max_body_bytes=settings.max_body_bytes)

    def canary_model(pred: ModelPredictor | None = None):
        """The challenger serving the canary share now, and that share; (None, 0) when there is none."""
        shadow: Shadow = state["shadow"]
        model, (version, share) = shadow.model, state.get("canary", (None, 0.0))
        if model is None or share <= 0 or str(model.version) != version:
            return None, 0.0
        if tuple(model.feature_names) != tuple(decl.feature_names):  # checked at install; never mixed
            return None, 0.0
        return model, share

    def canary_failed(challenger: Model, exc: BaseException, reasons: list, latency_ms: float) -> None:
        """The challenger failed on canary queries: the champion answers them; the error-rate guard counts them."""
        state["windows"].observe_many(
            "canary", latency_ms, [r is not None for r in reasons], [None] * len(reasons), True
        )
        state["prom"].canary_errors.inc(len(reasons))
        logging.getLogger(__name__).warning(
            "canary v%s failed on %d query(ies), answered by the champion: %r", challenger.version, len(reasons), exc
        )

    def arm_of(query: dict, share: float) -> str:
        point = canary_point(tuple(query[col] for _, col, _ in keys), decl.name, settings.canary_salt)
        return "canary" if in_canary(point, share) else "champion"

    def record(
        pred: ModelPredictor,
        request_id,
        query,
        t,
        mode,
        score,
        latency_ms,
        reason,
        snap_ds,
        values,
        served_by: Model | None = None,
        arm: str = "champion",
    ) -> dict:
        by = served_by or pred.model
        return make_record(
            decl,
            request_id=request_id,
            **{log_col: query[col] for log_col, col, _ in keys},
            request_time=t,
            served_at=pd.Timestamp.now(tz="UTC"),
            mode=mode,
            feature_set=log_feature_sets(decl),
            feature_set_fingerprint=pred.fingerprint,
            model_name=by.name,
            model_version=str(by.version),
            score=score,
            latency_ms=latency_ms,
            degraded=reason is not None,
            degraded_reason=reason,
            snapshot_ds=snap_ds,
            arm=arm,
            **values,
        )

    def answer(
        pred: ModelPredictor, request_id, query, t, mode, score, reason, values, served_by=None, arm="champion"
    ) -> dict:
        by = served_by or pred.model
        out = {"request_id": request_id}
        if len(keys) == 1 and keys[0][0] == "entity_id":
            out["entity_id"] = query[keys[0][1]]
        out.update(
            {
                "keys": query,
                "request_time": t.isoformat(),
                "mode": mode,
                "score": score,
                "model": decl.name,
                "model_name": by.name,
                "model_version": str(by.version),
                "arm": arm,
                "feature_set_fingerprint": pred.fingerprint,
                "degraded": reason is not None,
                "degraded_reason": reason,
                "features": values,
            }
        )
        return out

    def served(
        pred: ModelPredictor,
        endpoint: str,
        mode: str,
        t0: float,
        latency_ms: float,
        reasons: list,
        served_by: Model | None = None,
        arm: str = "champion",
    ) -> None:
        metrics: Metrics = state["metrics"]
        degraded = sum(r is not None for r in reasons)
        metrics.ok += len(reasons)
        metrics.by_mode[mode] += len(reasons)
        metrics.degraded += degraded
        metrics.latencies.extend([latency_ms] * len(reasons))
        prom: ServiceMetrics = state["prom"]
        version = str((served_by or pred.model).version)
        if arm == "champion":
            prom.request(endpoint, mode, 200, time.perf_counter() - t0, version)
            prom.predicted(mode, degraded, len(reasons), version)
        else:
            prom.request(endpoint, mode, 200, time.perf_counter() - t0, version, arm)
            prom.predicted(mode, degraded, len(reasons), version, arm)
        prom.sync_caches(state["set_caches"])

    @app.post("/predict")
    async def predict(req: PredictRequest):
        t0 = time.perf_counter()
        pred: ModelPredictor = state["predictor"]
        mode = req.mode or settings.mode
        try:
            query, t = parse_query(req, keys, nullable)
        except FieldError as exc:
            raise HTTPException(422, exc.detail()) from None
        state["metrics"].requests += 1
        if pred.fans_out:
            values, reason, snap_ds = await pred.afeatures(query, t, mode)
        else:
            values, reason, snap_ds = pred.features(query, t, mode)
        challenger, share = canary_model(pred)
        arm = "champion" if challenger is None else arm_of(query, share)
        score = None
        if arm == "canary":
            try:
                score = scores_of(challenger, names, [values])[0]
            except Exception as exc:  # noqa: BLE001 - a failing challenger: the champion answers, the guard counts it
                canary_failed(challenger, exc, [reason], (time.perf_counter() - t0) * 1000)
                arm = "champion"
        by = challenger if arm == "canary" else pred.model
        if score is None:
            score = pred.score(values)
        latency_ms = (time.perf_counter() - t0) * 1000
        if challenger is not None:
            state["windows"].observe(arm, latency_ms, False, reason is not None, score)
        request_id = req.request_id or uuid.uuid4().hex
        rec = record(pred, request_id, query, t, mode, score, latency_ms, reason, snap_ds, values, by, arm)
        shadow_by = state["shadow"].model if arm == "champion" else None
        if shadow_by is not None:  # the WAL row names the challenger it is offered to (crash recovery)
            rec["shadow_version"] = str(shadow_by.version)
        await _log_or_503(state, [rec], "/predict", mode, rec["model_version"])
        served(pred, "/predict", mode, t0, latency_ms, [reason], by, arm)
        if arm == "champion":
            state["drift"].observe([values])
        if shadow_by is not None:
            state["shadow"].offer([request_id], [t], [values], shadow_by)  # never waits: the shadow worker scores it
        return answer(pred, request_id, query, t, mode, score, reason, values, by, arm)

    @app.post("/predict/batch")
    async def predict_batch(req: BatchRequest):
        """Up to ``max_batch`` queries: each set evaluated once for the batch, ONE model call, one
        log record per query (all logged, or 503 and none answered), answers in query order."""
        t0 = time.perf_counter()
        pred: ModelPredictor = state["predictor"]
        mode = req.mode or settings.mode
        n = len(req.queries)
        if n > settings.max_batch:
            msg = f"at most {settings.max_batch} queries per batch, got {n}"
            raise HTTPException(422, [{"type": "too_long", "loc": ["body", "queries"], "msg": msg}])
        queries, times, ids, seen = [], [], [], set()
        fresh_ids = iter(uuid4_hexes(sum(q.request_id is None or q.request_id == "" for q in req.queries)))
        for i, q in enumerate(req.queries):
            try:
                query, t = parse_query(q, keys, nullable)
            except FieldError as exc:
                raise HTTPException(422, exc.detail(("body", "queries", i))) from None
            request_id = q.request_id or next(fresh_ids)
            if request_id in seen:
                loc = ["body", "queries", i, "request_id"]
                raise HTTPException(422, [{"type": "value_error", "loc": loc, "msg": "used twice in this batch"}])
            seen.add(request_id)
            queries.append(query), times.append(t), ids.append(request_id)
        state["metrics"].requests += n
        if pred.fans_out:
            values, reasons, snaps = await pred.abatch_features(queries, times, mode)
        else:
            values, reasons, snaps = pred.batch_features(queries, times, mode)
        challenger, share = canary_model(pred)
        arms = ["champion" if challenger is None else arm_of(q, share) for q in queries]
        scores: list = [None] * n
        feat_ms = (time.perf_counter() - t0) * 1000  # the arms share the features; each has its own model call
        canary_at = [i for i, a in enumerate(arms) if a == "canary"]
        if canary_at:  # ONE model call per arm
            t1 = time.perf_counter()
            try:
                got = scores_of(challenger, pred._names, [values[i] for i in canary_at])
            except Exception as exc:  # noqa: BLE001 - a failing challenger: the champion answers, the guard counts it
                canary_failed(
                    challenger, exc, [reasons[i] for i in canary_at], feat_ms + (time.perf_counter() - t1) * 1000
                )
                for i in canary_at:
                    arms[i] = "champion"
            else:
                for i, sc in zip(canary_at, got):
                    scores[i] = sc
                arm_ms = feat_ms + (time.perf_counter() - t1) * 1000
                state["windows"].observe_many("canary", arm_ms, [reasons[i] is not None for i in canary_at], got)
        home = [i for i, a in enumerate(arms) if a == "champion"]
        if home:
            t1 = time.perf_counter()
            got = pred.scores([values[i] for i in home])
            for i, sc in zip(home, got):
                scores[i] = sc
            if challenger is not None:
                arm_ms = feat_ms + (time.perf_counter() - t1) * 1000
                tried = set(canary_at)
                mine = [i for i in home if i not in tried]
                state["windows"].observe_many(
                    "champion", arm_ms, [reasons[i] is not None for i in mine], [scores[i] for i in mine]
                )
        by = [challenger if a == "canary" else pred.model for a in arms]
        latency_ms = (time.perf_counter() - t0) * 1000  # every record of the batch carries the batch's
        rows = list(zip(ids, queries, times, scores, reasons, snaps, values, by, arms))
        # what record() makes for each query, the shared fields converted once (one served_at: the batch's)
        versions = {id(b): (b.name, str(b.version)) for b in (pred.model, challenger) if b is not None}
        records = make_records(
            decl,
            [
                {
                    "request_id": i,
                    **{log_col: q[col] for log_col, col, _ in keys},
                    "request_time": t,
                    "model_name": versions[id(b)][0],
                    "model_version": versions[id(b)][1],
                    "score": sc,
                    "degraded": r is not None,
                    "degraded_reason": r,
                    "snapshot_ds": ds,
                    "arm": a,
                    **v,
                }
                for i, q, t, sc, r, ds, v, b, a in rows
            ],
            served_at=pd.Timestamp.now(tz="UTC"),
            mode=mode,
            feature_set=log_feature_sets(decl),
            feature_set_fingerprint=pred.fingerprint,
            latency_ms=latency_ms,
        )
        shadow_by = state["shadow"].model
        if shadow_by is not None:  # each champion row names the challenger it is offered to
            for rec, a in zip(records, arms):
                if a == "champion":
                    rec["shadow_version"] = str(shadow_by.version)
        await _log_or_503(state, records, "/predict/batch", mode, str(pred.model.version))
        for arm, model in (("champion", pred.model), ("canary", challenger)):
            mine = [r for r, a in zip(reasons, arms) if a == arm]
            if mine:
                served(pred, "/predict/batch", mode, t0, latency_ms, mine, model, arm)
        home = [i for i, a in enumerate(arms) if a == "champion"]
        state["drift"].observe([values[i] for i in home])
        if home and shadow_by is not None:
            state["shadow"].offer(
                [ids[i] for i in home], [times[i] for i in home], [values[i] for i in home], shadow_by
            )
        body = {
            "count": n,
            "predictions": [answer(pred, i, q, t, mode, sc, r, v, b, a) for i, q, t, sc, r, _, v, b, a in rows],
        }
        # encoded here, not by FastAPI's jsonable_encoder (which walked every value of every answer:
        # most of a batch's CPU): the answers are plain JSON values already
        return Response(encode_json(body), media_type="application/json")

    @app.get("/health")
    async def health():
        pred: ModelPredictor | None = state.get("predictor")
        ok = pred is not None and state["log"].running
        return {
            "status": "ok" if ok else "starting",
            "pid": os.getpid(),  # the worker that answered (``--workers N``)
            "model_declaration": decl.name,
            "feature_set": log_feature_sets(decl),
            "fingerprint": decl.fingerprint,
            "model": None if pred is None else f"{pred.model.name}:{pred.model.version}",
            "model_version": None if pred is None else str(pred.model.version),
            "model_loaded_at": None if pred is None else _iso(pred.loaded_at),
            **_follower_health(state.get("follower"), settings.model_poll_s),
            **_challenger_health(state.get("challenger"), state.get("shadow")),
            **_guard_health(state.get("guards"), state.get("canary")),
            "served_drift": None if state.get("drift") is None else state["drift"].last,
            "store": type(state.get("store")).__name__,
            "auth": "api_key" if key_ring.configured else "open",
        }

    @app.post("/admin/reload")
    async def admin_reload():
        """Check the champion alias now and swap if it moved (loaded on a thread, not the event loop):
        200 swapped / unchanged, 409 refused (the old version keeps serving), 503 the registry failed."""
        follower: ChampionFollower = state["follower"]
        out = await asyncio.to_thread(follower.reload)
        body = {
            "status": out.status,
            "serving": out.serving,
            "champion": out.version,
            "previous": out.previous,
            "rollback": out.rollback,
            "reason": out.reason,
        }
        code = {"refused": 409, "error": 503}.get(out.status, 200)
        return JSONResponse(body, status_code=code)

    @app.get("/metrics")
    async def prometheus_endpoint():
        prom: ServiceMetrics = state["prom"]
        prom.sync_caches(state["set_caches"])
        prom.queue_depth.set(state["log"].queue_depth)
        prom.shadow_queue_depth.set(state["shadow"].queue_depth)
        body, content_type = prom.render()
        return Response(body, media_type=content_type)

    @app.get("/metrics.json")
    async def metrics_endpoint():
        m: Metrics = state["metrics"]
        caches: list[L1Cache] = state["caches"]
        slog: ServingLog = state["log"]
        hits, misses = sum(c.hits for c in caches), sum(c.misses for c in caches)
        return {
            "requests": m.requests,
            "ok": m.ok,
            "by_mode": m.by_mode,
            "degraded": m.degraded,
            **m.percentiles(),
            "cache_hits": hits,
            "cache_misses": misses,
            "cache_hit_rate": hits / (hits + misses) if hits + misses else None,
            "store_errors": m.store_errors,
            "store_timeouts": m.store_timeouts,
            "feature_sets": {
                p.fs.name: {
                    **p.set_metrics.summary(),
                    "mode": p.mode,
                    "timeout_ms": None if p.timeout_s is None else p.timeout_s * 1000,
                    "cache_hits": p.events.hits,
                    "cache_misses": p.events.misses,
                }
                for _, p in state["predictor"].parts
            },
            "log_written": slog.written,
            "log_queue_depth": slog.queue_depth,
            "log_queue_full": slog.queue_full,
            "log_write_errors": slog.write_errors,
            "log_recovered_at_start": slog.recovered,
            **_refresh_metrics(state.get("refreshers") or []),
        }

    return app


#: The paths that need an API key (when keys are configured) and whose bodies are size-checked.
PROTECTED = frozenset({"/predict", "/predict/batch", "/admin/reload"})


class Guard:
    """ASGI middleware in front of :data:`PROTECTED`: the API key (``X-API-Key: <key>`` or
    ``Authorization: Bearer <key>``) is checked before the body is read — 401 and nothing logged
    without a valid one — and a body over ``max_body_bytes`` is refused (413) without reading
    the rest. The key is never logged or echoed."""

    def __init__(self, app, state: dict, max_body_bytes: int):
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in PROTECTED:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        ring: KeyRing = self.state["keys"]
        if ring.configured and ring.check(_presented_key(headers)) is None:
            prom = self.state.get("prom")
            if prom is not None:
                prom.unauthorized.inc()
            return await _send_json(
                send, 401, {"detail": "missing or invalid API key"}, [(b"www-authenticate", b"Bearer")]
            )
        limit = self.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _send_json(send, 413, _too_large(limit))
        if length is not None:
            return await self.app(scope, receive, send)
        # no length (chunked): read up to the limit, then hand the body on
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            size += len(msg.get("body", b""))
            if size > limit:
                return await _send_json(send, 413, _too_large(limit))
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), []

        async def replay():
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _presented_key(headers: dict) -> str | None:
    raw = headers.get(b"x-api-key")
    if raw is None:
        auth = headers.get(b"authorization", b"")
        scheme, _, raw = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not raw:
            return None
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None


def _too_large(limit: int) -> dict:
    return {"detail": [{"type": "too_large", "loc": ["body"], "msg": f"request body larger than {limit} bytes"}]}


async def _send_json(send, status: int, body: dict, headers=()) -> None:
    import json

    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _log_or_503(state: dict, records: list[dict], endpoint: str, mode: str, version: str) -> None:
    """Log ``records`` (all or none queued) and wait until they are in the WAL; 503 when the log
    refuses them or a write fails (not logged, so not served)."""
    from fastapi import HTTPException

    metrics: Metrics = state["metrics"]
    prom: ServiceMetrics = state["prom"]
    slog: ServingLog = state["log"]
    try:
        fut = slog.submit_many(records) if len(records) > 1 else slog.submit(records[0])
    except LogQueueFull:
        metrics.log_refused += len(records)
        prom.refused("queue_full", len(records))
        prom.request(endpoint, mode, 503, version=version)
        raise HTTPException(503, "serving log is full; request not served") from None
    try:
        await asyncio.wrap_future(fut)  # acknowledged only once the records are in the WAL
    except Exception as exc:  # noqa: BLE001 - any write failure means: not logged, so not served
        metrics.log_errors += len(records)
        prom.refused("write_error", len(records))
        prom.request(endpoint, mode, 503, version=version)
        raise HTTPException(503, f"serving log write failed: {exc}") from None
    finally:
        prom.queue_depth.set(slog.queue_depth)


def _refresh_metrics(refreshers: list[StoreRefresher]) -> dict:
    """The stores' refresh counters, summed over the joined sets (loaded through: the least)."""
    if not refreshers:
        return {"store_loaded_through": None, "store_refreshes": 0, "store_reloads": 0, "store_refresh_errors": 0}
    through = [r.loaded_through for r in refreshers]
    errors = [r.last_error for r in refreshers if r.last_error]
    return {
        "store_loaded_through": None if None in through else min(through),
        "store_refreshes": sum(r.refreshes for r in refreshers),
        "store_reloads": sum(r.reloads for r in refreshers),
        "store_refresh_errors": sum(r.errors for r in refreshers),
        "store_refresh_last_error": errors[-1] if errors else None,
    }


def _model_source(settings: Settings, cfg, decl) -> ModelSource:
    if settings.model_path:
        import pickle

        from jobs.serving.model import StaticSource

        with open(settings.model_path, "rb") as f:  # a file the operator wrote, not network input
            return StaticSource(pickle.load(f))
    from jobs.serving.model import RegistrySource

    return RegistrySource(cfg, decl.name)


def _iso(unix: float | None) -> str | None:
    return None if unix is None else pd.Timestamp(unix, unit="s", tz="UTC").isoformat()


def _follower_health(follower: ChampionFollower | None, poll_s: float) -> dict:
    if follower is None:
        return {}
    return {
        "model_poll_s": poll_s,
        "model_checked_at": _iso(follower.checked_at),
        "model_swap_seconds": follower.swap_seconds,
        "model_swaps": follower.swaps,
        "model_refused": None
        if follower.refused is None
        else {"version": follower.refused[0], "reason": follower.refused[1]},
    }


def _challenger_health(follower: ChampionFollower | None, shadow: Shadow | None) -> dict:
    if follower is None or shadow is None:
        return {"challenger_version": None, "challenger_refused": None, "shadow_dropped": None}
    return {
        "challenger_version": shadow.version,
        "challenger_refused": None
        if follower.refused is None
        else {"version": follower.refused[0], "reason": follower.refused[1]},
        "shadow_scored": shadow.scored,
        "shadow_dropped": dict(shadow.dropped),
        "shadow_recovered": None if shadow.recovered is None else dict(shadow.recovered),
        "shadow_backlog": shadow.queue_depth,
        "shadow_process": None
        if not isinstance(shadow, ShadowProcess)
        else {"pid": shadow.pid, "restarts": shadow.restarts, "ready": shadow.ready},
    }


def _guard_health(monitor: GuardMonitor | None, canary: tuple | None) -> dict:
    """The canary's stage in this process and its guards' last verdict (``jobs.serving.guards``)."""
    if monitor is None:
        return {}
    last = monitor.last
    return {
        "canary_version": None if canary is None else canary[0],
        "canary_share": None if canary is None else canary[1],
        "canary_guards": None
        if last is None
        else {
            "judged": last.judged,
            "n_champion": last.n_champion,
            "n_canary": last.n_canary,
            "workers": last.workers,
            "breaches": [b.describe() for b in last.breaches],
            **last.observed,
        },
        "canary_stopped": {v: [b.describe() for b in verdict.breaches] for v, verdict in monitor.stopped.items()},
        "champion_training_age_days": monitor.age_days,
    }


def _on_sighup(wake: Callable[[], None]) -> Callable[[], None]:
    """SIGHUP -> ``wake`` (a champion check), when this process's event loop runs in the main thread
    (uvicorn's single process, or one of its workers); elsewhere (a test client's thread) nothing.
    Returns the undo. Under ``uvicorn --workers N`` a SIGHUP to the SUPERVISOR is uvicorn's own: it
    replaces the workers one by one (each new one loads the champion at start-up)."""
    import signal

    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, wake)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None
    return lambda: loop.remove_signal_handler(signal.SIGHUP)


def _alert(cfg, title: str, what: str, dataset: str, message: str) -> None:
    """An alert through the platform's notifier (``jobs.alerts``: alerts log, e-mail, webhook); a
    notifier that fails is logged, never raised (the service keeps serving)."""
    try:
        from jobs.alerts import Alert, Notifier

        Notifier.for_lake(cfg.lake()).send(
            Alert(title=title, where="lockstep serve", reason=message, what=what, dataset=dataset)
        )
    except Exception as exc:  # noqa: BLE001 - an alert channel must not take the service down
        logging.getLogger(__name__).error("alert %r not sent: %r", title, exc)


def _shadow_dropped(cfg, model: str, prom: ServiceMetrics, every_s: float = 10.0) -> Callable[[int, str], None]:
    """What a shadow drop does: count it (``lockstep_serving_shadow_dropped_total``) and alert, at most
    once per ``every_s`` seconds (every drop is counted), on a thread of its own: an alert channel
    (e-mail, webhook) never holds the request that overflowed the shadow backlog."""
    last = [float("-inf")]
    total: dict = {}

    def dropped(n: int, reason: str) -> None:
        prom.shadow_dropped.labels(model=model, reason=reason).inc(n)
        total[reason] = total.get(reason, 0) + n
        now = time.monotonic()
        if now - last[0] < every_s:
            return
        last[0] = now
        msg = (
            f"shadow scoring dropped {n} request(s) ({reason}); {total} so far in this process: those rows "
            "have no shadow_score (the challenger is slower than the traffic, or failing)"
        )
        threading.Thread(
            target=_alert, args=(cfg, f"shadow dropped: {model}", "shadow dropped", model, msg), daemon=True
        ).start()

    return dropped


def _default_notifier(cfg):
    """The platform's alert notifier (``jobs.alerts``: alerts log, e-mail, webhook), or None (log only)."""
    try:
        from jobs.alerts import Alert, Notifier
    except ImportError:
        return None

    def send(message: str) -> None:
        Notifier.for_lake(cfg.lake()).send(
            Alert(
                title="serving log queue full",
                where="lockstep serve",
                reason=message,
                what="serving log queue full",
                dataset="serving_logs",
            )
        )

    return send


def app_from_env():
    """uvicorn factory: ``uvicorn --factory jobs.serving.app:app_from_env``."""
    return create_app(Settings.from_env())
