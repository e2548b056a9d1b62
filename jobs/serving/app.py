"""Reference serving service: ``POST /predict`` -> the champion's score, every response logged.

Feature modes (both produce the kernel's values; see DESIGN §7):

* ``fresh``: the entity's events from the online store (behind the L1 cache), then
  ``features.online.compute_one`` known_at the request time — what the same code computes
  offline for that ``(entity, request_time)``. The kernel's index of the events (dedup, sort,
  search keys) is built once — for the embedded store over the whole table at load, for Redis
  per cached entry — so a request pays only the evaluation (~0.5 ms with a 200-tree model,
  ``python -m bench.serving``). It runs inline on the event loop: a thread-pool hop would cost
  about as much as the work, and CPU parallelism comes from ``--workers`` processes.
* ``materialized``: the vector of ``feature_snapshots/<set>/ds=date(t)-1`` (as known at 00:00 of
  the request day): no kernel call per request, but up to a day stale (``recency_days`` etc.).

Degradation: when the store errors or exceeds its per-request timeout (Redis: socket timeout
``store_timeout_ms``), or the day's snapshot is not published, the service still answers with
the score on the DECLARED DEFAULTS (``Feature.default``: counts and sums 0, other features null
— the vector of an entity with no history) and logs the record with ``degraded=true`` and the
reason (``store_timeout``, ``store_error``, ``no_snapshot``). Degraded rows show up in the skew
report as mismatches of their own, not as silent zeros.

Run: ``uvicorn --factory jobs.serving.app:app_from_env`` (settings from ``LOCKSTEP_SERVING_*``,
see :meth:`Settings.from_env`) or ``lockstep serve``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
from pydantic import BaseModel

from features import registry
from features.online import compute_one
from features.spec import FeatureSet
from jobs.serving.log import LogQueueFull, ServingLog, make_record
from jobs.serving.model import Model, ModelSource
from jobs.serving.store import (
    EmbeddedStore,
    L1Cache,
    RedisStore,
    SnapshotVectors,
    StoreRefresher,
    StoreUnavailable,
    history_of,
)

MODES = ("fresh", "materialized")

#: The pluggable feature computation of fresh mode: (entity's events, entity, request time, set) -> values.
#: Only tests replace it (deliberately wrong implementations); a hook may carry a ``fingerprint``
#: attribute to stamp instead of the set's (a service built from another version of the set).
FeatureHook = Callable[[pd.DataFrame, int, pd.Timestamp, FeatureSet], dict]


def kernel_hook(events: pd.DataFrame, entity_id: int, request_time: pd.Timestamp, fs: FeatureSet) -> dict:
    return compute_one(events, entity_id, request_time, fs, "known_at")


@dataclass(frozen=True)
class Settings:
    lake_root: str = ".lockstep/lake"
    feature_set: str = "customer_activity_v1"
    mode: str = "fresh"  # default mode when a request does not name one
    redis_url: str | None = None  # None: the embedded store
    store_timeout_ms: float = 50.0
    cache_ttl_s: float = 1.0
    cache_entries: int = 50_000
    wal_dir: str = ".lockstep/serving_wal"
    fsync: str = "interval"
    log_queue_size: int = 10_000
    model_path: str | None = None  # a pickled Model for a service without a registry (tests)
    load_store: bool = True  # fill the Redis store from the lake at start-up
    refresh_s: float = 60.0  # apply new raw_events partitions to the store this often (0: never)

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
    """Counters and a window of recent latencies (ms) for ``/metrics``."""

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


class Predictor:
    """Features + score for one request (no HTTP, no logging): the in-process serving path."""

    def __init__(
        self,
        fs: FeatureSet,
        events: L1Cache,
        snapshots: SnapshotVectors | None,
        model: Model,
        hook: FeatureHook | None = None,
        metrics: Metrics | None = None,
    ):
        self.fs, self.events, self.snapshots, self.model = fs, events, snapshots, model
        self.hook = hook or kernel_hook
        #: the kernel itself (no hook given): evaluate on the cached per-entity index
        self._indexed = hook is None or hook is kernel_hook
        self.fingerprint = getattr(self.hook, "fingerprint", None) or fs.fingerprint
        self._names = list(model.feature_names)
        self.metrics = metrics or Metrics()
        self.defaults = {
            f.name: (int(f.default or 0) if f.is_integer else (None if f.default is None else float(f.default)))
            for f in fs.features
        }
        self._lock = threading.Lock()

    def features(self, entity_id: int, request_time: pd.Timestamp, mode: str) -> tuple[dict, str | None, str | None]:
        """(values, degraded reason or None, snapshot ds or None)."""
        if mode == "materialized":
            try:
                ds, vec = self.snapshots.vector(entity_id, request_time)
            except StoreUnavailable as exc:
                return dict(self.defaults), exc.reason, None
            return (dict(self.defaults) if vec is None else dict(zip(self.fs.feature_names, vec))), None, ds
        try:
            history = history_of(self.events, entity_id, self.fs)
        except StoreUnavailable as exc:
            with self._lock:
                if exc.reason == "store_timeout":
                    self.metrics.store_timeouts += 1
                self.metrics.store_errors += 1
            return dict(self.defaults), exc.reason, None
        if self._indexed:
            return compute_one(history.index, entity_id, request_time, self.fs, "known_at"), None, None
        return self.hook(history.frame, entity_id, request_time, self.fs), None, None

    def score(self, values: dict) -> float:
        # One float64 row, nulls as NaN (the scoring job's dtype contract; counts are exact in float64).
        row = np.array([[np.nan if values[n] is None else values[n] for n in self._names]], dtype=np.float64)
        matrix = getattr(self.model, "predict_matrix", None)
        if matrix is not None:  # no DataFrame per request
            return float(matrix(row)[0])
        return float(self.model.predict(pd.DataFrame(row, columns=self._names))[0])


class PredictRequest(BaseModel):
    """Body of ``POST /predict``. Unknown fields are ignored and never reach the log (PII allowlist)."""

    entity_id: int
    request_time: str | None = None  # ISO 8601; naive = UTC; default: now
    mode: str | None = None  # fresh | materialized; default: the service's
    request_id: str | None = None  # default: a new uuid4


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
    """The FastAPI app. Everything not given is built from ``settings`` at start-up."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException

    from jobs.config import Config

    cfg = cfg or Config(lake_root=settings.lake_root)
    fs = registry.get(settings.feature_set)
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        notify = notifier or _default_notifier(cfg)
        metrics = Metrics()
        base, refresher = store, None
        if base is None:
            loaded = StoreRefresher.published(cfg)  # before the read: a later partition is applied later
            through = max(loaded) if loaded else None
            if settings.redis_url:
                base = RedisStore(fs, settings.redis_url, timeout_s=settings.store_timeout_ms / 1000)
                if settings.load_store:
                    from jobs.serving.store import read_lake_events

                    base.load(read_lake_events(cfg, fs, through))
            else:
                base = EmbeddedStore.from_lake(cfg, fs, through)
        cache = L1Cache(base, settings.cache_entries, settings.cache_ttl_s, fs=fs)
        if store is None and (settings.load_store or not settings.redis_url):
            refresher = StoreRefresher(cfg, fs, cache, loaded, settings.refresh_s).start()
        model = (model_source or _model_source(settings, cfg)).champion()
        slog = serving_log or ServingLog(
            settings.wal_dir, fs, queue_size=settings.log_queue_size, fsync=settings.fsync, notifier=notify
        )
        if serving_log is None or not slog.running:
            slog.start()
        state.update(
            predictor=Predictor(fs, cache, SnapshotVectors(cfg, fs), model, hook, metrics),
            log=slog,
            metrics=metrics,
            cache=cache,
            store=base,
            refresher=refresher,
            started=time.time(),
        )
        try:
            yield
        finally:
            if refresher is not None:
                refresher.stop()
            slog.close()

    app = FastAPI(title="Lockstep reference service", lifespan=lifespan)
    app.state.lockstep = state

    @app.post("/predict")
    async def predict(req: PredictRequest):
        t0 = time.perf_counter()
        pred: Predictor = state["predictor"]
        metrics: Metrics = state["metrics"]
        mode = req.mode or settings.mode
        if mode not in MODES:
            raise HTTPException(422, f"mode must be one of {MODES}")
        try:
            t = _utc(req.request_time) if req.request_time else pd.Timestamp.now(tz="UTC")
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, f"bad request_time: {exc}") from None
        metrics.requests += 1
        values, reason, snap_ds = pred.features(req.entity_id, t, mode)
        score = pred.score(values)
        latency_ms = (time.perf_counter() - t0) * 1000
        request_id = req.request_id or uuid.uuid4().hex
        rec = make_record(
            fs,
            request_id=request_id,
            entity_id=req.entity_id,
            request_time=t,
            served_at=pd.Timestamp.now(tz="UTC"),
            mode=mode,
            feature_set=fs.name,
            feature_set_fingerprint=pred.fingerprint,
            model_name=pred.model.name,
            model_version=str(pred.model.version),
            score=score,
            latency_ms=latency_ms,
            degraded=reason is not None,
            degraded_reason=reason,
            snapshot_ds=snap_ds,
            **values,
        )
        try:
            fut = state["log"].submit(rec)
        except LogQueueFull:
            metrics.log_refused += 1
            raise HTTPException(503, "serving log is full; request not served") from None
        try:
            await asyncio.wrap_future(fut)  # acknowledged only once the record is in the WAL
        except Exception as exc:  # noqa: BLE001 - any write failure means: not logged, so not served
            metrics.log_errors += 1
            raise HTTPException(503, f"serving log write failed: {exc}") from None
        metrics.ok += 1
        metrics.by_mode[mode] += 1
        metrics.degraded += reason is not None
        metrics.latencies.append(latency_ms)
        return {
            "request_id": request_id,
            "entity_id": req.entity_id,
            "request_time": t.isoformat(),
            "mode": mode,
            "score": score,
            "model_name": pred.model.name,
            "model_version": str(pred.model.version),
            "feature_set_fingerprint": pred.fingerprint,
            "degraded": reason is not None,
            "degraded_reason": reason,
            "features": values,
        }

    @app.get("/health")
    async def health():
        pred: Predictor | None = state.get("predictor")
        ok = pred is not None and state["log"]._thread is not None
        return {
            "status": "ok" if ok else "starting",
            "feature_set": fs.name,
            "fingerprint": fs.fingerprint,
            "model": None if pred is None else f"{pred.model.name}:{pred.model.version}",
            "store": type(state.get("store")).__name__,
        }

    @app.get("/metrics")
    async def metrics_endpoint():
        m: Metrics = state["metrics"]
        cache: L1Cache = state["cache"]
        slog: ServingLog = state["log"]
        return {
            "requests": m.requests,
            "ok": m.ok,
            "by_mode": m.by_mode,
            "degraded": m.degraded,
            **m.percentiles(),
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache_hit_rate": cache.hit_rate,
            "store_errors": m.store_errors,
            "store_timeouts": m.store_timeouts,
            "log_written": slog.written,
            "log_queue_depth": slog.queue_depth,
            "log_queue_full": slog.queue_full,
            "log_write_errors": slog.write_errors,
            "log_recovered_at_start": slog.recovered,
            **_refresh_metrics(state.get("refresher")),
        }

    return app


def _refresh_metrics(refresher: StoreRefresher | None) -> dict:
    if refresher is None:
        return {"store_loaded_through": None, "store_refreshes": 0, "store_reloads": 0, "store_refresh_errors": 0}
    return {
        "store_loaded_through": refresher.loaded_through,
        "store_refreshes": refresher.refreshes,
        "store_reloads": refresher.reloads,
        "store_refresh_errors": refresher.errors,
        "store_refresh_last_error": refresher.last_error,
    }


def _model_source(settings: Settings, cfg) -> ModelSource:
    if settings.model_path:
        import pickle

        from jobs.serving.model import StaticSource

        with open(settings.model_path, "rb") as f:  # a file the operator wrote, not network input
            return StaticSource(pickle.load(f))
    from jobs.serving.model import RegistrySource

    return RegistrySource(cfg)


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
