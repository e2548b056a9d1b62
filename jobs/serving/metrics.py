"""The service's Prometheus metrics (``GET /metrics``, the text exposition format).

One :class:`ServiceMetrics` per service process. Without ``PROMETHEUS_MULTIPROC_DIR`` the metrics
live in a registry of their own (so several apps in one process, as in the tests, never mix);
with it (``lockstep serve --workers N`` sets it to a per-service directory it empties at start)
prometheus_client's multiprocess mode is on: every worker writes its values to files there, and a
scrape, whichever worker answers it, sums the files of all workers (``MultiProcessCollector``).
The variable must be set before ``prometheus_client`` is first imported in the worker: the value
class is chosen at import.

Every series carries ``model`` (the declaration served); request and feature-set series carry the
``model_version`` that scored the request (after a swap, the new one) and ``arm`` (``champion``; ``canary``
for the requests the challenger served as its canary share, ``jobs.serving.canary``).

==============================================  ====================================================
``lockstep_serving_requests_total``             HTTP requests that reached the handler, by
                                                ``endpoint``, ``mode``, ``status`` (200, 503)
``lockstep_serving_predictions_total``          predictions answered 200 (one per query of a batch),
                                                by ``mode``, ``degraded`` (true / false)
``lockstep_serving_request_latency_seconds``    histogram of a 200 request's time in the handler, its
                                                log acknowledgement included (a batch: the whole
                                                batch), by ``endpoint``, ``mode``
``lockstep_serving_feature_set_requests_total`` queries per joined set, by ``feature_set``, ``mode``,
                                                ``outcome`` (ok, store_timeout, store_error, no_snapshot)
``lockstep_serving_feature_set_latency_seconds`` histogram of one set's evaluation (a batch: one per
                                                set and mode), by ``feature_set``, ``mode``
``lockstep_serving_store_timeouts_total``       queries whose set's store timed out, by ``feature_set``
``lockstep_serving_store_errors_total``         queries whose set's store failed otherwise
``lockstep_serving_cache_hits_total`` / ``_misses_total``  the sets' L1 caches, by ``feature_set``
``lockstep_serving_log_queue_depth``            records waiting for the WAL writer (summed over live
                                                workers; each worker sets it after every request)
``lockstep_serving_log_refused_total``          records not logged (so not served), by ``reason``
                                                (queue_full, write_error)
``lockstep_serving_unauthorized_total``         requests refused 401 (no, or no valid, API key)
``lockstep_serving_model_swaps_total``          champion swaps while serving (rollbacks included;
                                                ``jobs.serving.swap``)
``lockstep_serving_model_rollbacks_total``      swaps to an OLDER version (the alias moved back)
``lockstep_serving_model_swaps_refused_total``  champions refused, by ``reason`` (fingerprint,
                                                feature_names): the old version kept serving
``lockstep_serving_model_reload_errors_total``  champion checks that failed (registry unreachable,
                                                artifact unreadable): retried at the next poll
``lockstep_serving_model_info``                 1 for the served (model_version, arm), 0 for one
                                                swapped out
``lockstep_serving_shadow_scored_total``        requests the challenger scored in the shadow, by
                                                ``shadow_version`` (``jobs.serving.shadow``)
``lockstep_serving_shadow_dropped_total``       requests NOT shadowed, by ``reason`` (queue_full: the
                                                shadow backlog was full; log_full; error; crash: a
                                                crashed process's backlog whose challenger is gone
                                                at restart): alerted
``lockstep_serving_shadow_queue_depth``         offers waiting for the shadow worker (the shadow
                                                process: served rows offered, not yet scored)
``lockstep_serving_challenger_refused_total``   challengers refused (trained for other feature sets):
                                                not shadowed, by ``reason``
``lockstep_serving_challenger_reload_errors_total`` challenger checks that failed (retried)
``lockstep_serving_served_drift_total``         served features whose PSI against the champion's
                                                training features crossed ``drift_psi``
                                                (``jobs.serving.drift``), by ``feature``: alerted
==============================================  ====================================================
"""

from __future__ import annotations

import os
from pathlib import Path

#: Latency buckets (seconds): the service's work is sub-millisecond to tens of milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf"))
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ARM = "champion"


def multiprocess_dir() -> str | None:
    """The multiprocess directory this process writes to, or None (a registry of its own)."""
    return os.environ.get(MULTIPROC_ENV) or None


def clean_multiprocess_dir(path) -> Path:
    """Create ``path`` and delete the metric files a previous run left in it (prometheus_client's
    ``*.db``; nothing else is touched). Call it before the workers start."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.db"):
        f.unlink()
    return path


class SetSink:
    """One joined set's series, the labelled children resolved once per mode."""

    def __init__(self, owner: ServiceMetrics, feature_set: str):
        self._owner, self.feature_set = owner, feature_set
        self._latency: dict = {}
        self._outcome: dict = {}
        base = {"model": owner.model, "feature_set": feature_set}
        self._timeouts = owner.store_timeouts.labels(**base)
        self._errors = owner.store_errors.labels(**base)
        self.cache_hits = owner.cache_hits.labels(**base)
        self.cache_misses = owner.cache_misses.labels(**base)

    def evaluated(self, mode: str, seconds: float, version: str | None = None) -> None:
        child = self._latency.get((version, mode))
        if child is None:
            child = self._latency[(version, mode)] = self._owner.set_latency.labels(
                **self._owner.served_by(version), feature_set=self.feature_set, mode=mode
            )
        child.observe(seconds)

    def outcome(self, mode: str, reason: str | None, n: int = 1, version: str | None = None) -> None:
        key = (version, mode, reason)
        child = self._outcome.get(key)
        if child is None:
            child = self._outcome[key] = self._owner.set_requests.labels(
                **self._owner.served_by(version), feature_set=self.feature_set, mode=mode, outcome=reason or "ok"
            )
        child.inc(n)
        if reason == "store_timeout":
            self._timeouts.inc(n)
        elif reason == "store_error":
            self._errors.inc(n)


class ServiceMetrics:
    """The Prometheus series of one served model (see the module docstring)."""

    def __init__(self, model: str, model_version: str, feature_sets, arm: str = ARM):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.model, self.model_version, self.arm = model, str(model_version), arm
        self.multiprocess = multiprocess_dir() is not None
        if self.multiprocess:
            from prometheus_client import values

            if values.ValueClass is values.MutexValue:  # chosen when prometheus_client was imported
                raise RuntimeError(
                    f"{MULTIPROC_ENV} was set after prometheus_client was imported in this process: "
                    "set it before the service starts (lockstep serve does)"
                )
        # multiprocess: the values are in files, collected at scrape time; no registry may hold them
        self.registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        reg = {"registry": self.registry}
        served = ["model", "model_version", "arm"]
        self.served = {"model": model, "model_version": self.model_version, "arm": arm}
        self.requests = Counter(
            "lockstep_serving_requests",
            "HTTP requests that reached the handler",
            [*served, "endpoint", "mode", "status"],
            **reg,
        )
        self.predictions = Counter(
            "lockstep_serving_predictions",
            "predictions answered 200 (one per query)",
            [*served, "mode", "degraded"],
            **reg,
        )
        self.latency = Histogram(
            "lockstep_serving_request_latency_seconds",
            "handler time of a request answered 200, log ack included (a batch: the whole batch)",
            [*served, "endpoint", "mode"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.set_requests = Counter(
            "lockstep_serving_feature_set_requests",
            "queries per joined feature set and outcome",
            [*served, "feature_set", "mode", "outcome"],
            **reg,
        )
        self.set_latency = Histogram(
            "lockstep_serving_feature_set_latency_seconds",
            "one feature set's evaluation (a batch: one per set and mode)",
            [*served, "feature_set", "mode"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        per_set = ["model", "feature_set"]
        self.store_timeouts = Counter(
            "lockstep_serving_store_timeouts", "queries whose set's store timed out", per_set, **reg
        )
        self.store_errors = Counter(
            "lockstep_serving_store_errors", "queries whose set's store failed (not a timeout)", per_set, **reg
        )
        self.cache_hits = Counter("lockstep_serving_cache_hits", "L1 cache hits", per_set, **reg)
        self.cache_misses = Counter("lockstep_serving_cache_misses", "L1 cache misses", per_set, **reg)
        self.queue_depth = Gauge(
            "lockstep_serving_log_queue_depth",
            "records waiting for the serving-log writer",
            ["model"],
            multiprocess_mode="livesum",
            **reg,
        ).labels(model=model)
        self.log_refused = Counter(
            "lockstep_serving_log_refused", "records not logged, so not served", ["model", "reason"], **reg
        )
        self.unauthorized = Counter("lockstep_serving_unauthorized", "requests refused 401", ["model"], **reg).labels(
            model=model
        )
        self.swaps = Counter("lockstep_serving_model_swaps", "model swaps while serving", ["model"], **reg)
        self.rollbacks = Counter("lockstep_serving_model_rollbacks", "model rollbacks while serving", ["model"], **reg)
        self.swaps_refused = Counter(
            "lockstep_serving_model_swaps_refused",
            "champions refused (trained for other feature sets); the old version kept serving",
            ["model", "reason"],
            **reg,
        )
        self.reload_errors = Counter(
            "lockstep_serving_model_reload_errors", "champion checks that failed (retried)", ["model"], **reg
        ).labels(model=model)
        self.info = Gauge(
            "lockstep_serving_model_info", "the served model version", served, multiprocess_mode="max", **reg
        )
        self.info.labels(**self.served).set(1)
        self.shadow_scored = Counter(
            "lockstep_serving_shadow_scored",
            "requests the challenger scored in the shadow",
            ["model", "shadow_version"],
            **reg,
        )
        self.shadow_dropped = Counter(
            "lockstep_serving_shadow_dropped",
            "requests not shadowed (backlog full, shadow log full, challenger error, lost in a crash)",
            ["model", "reason"],
            **reg,
        )
        self.shadow_queue_depth = Gauge(
            "lockstep_serving_shadow_queue_depth",
            "offers waiting for the shadow worker",
            ["model"],
            multiprocess_mode="livesum",
            **reg,
        ).labels(model=model)
        self.challenger_refused = Counter(
            "lockstep_serving_challenger_refused",
            "challengers refused (trained for other feature sets): not shadowed",
            ["model", "reason"],
            **reg,
        )
        self.challenger_errors = Counter(
            "lockstep_serving_challenger_reload_errors",
            "challenger checks that failed (registry unreachable, artifact unreadable): retried",
            ["model"],
            **reg,
        ).labels(model=model)
        for reason in ("queue_full", "log_full", "error", "crash"):
            self.shadow_dropped.labels(model=model, reason=reason)
        for reason in ("fingerprint", "feature_names"):
            self.challenger_refused.labels(model=model, reason=reason)
        self.canary_rollbacks = Counter(
            "lockstep_serving_canary_rollbacks",
            "canaries stopped by their guards (jobs.serving.guards), by the guard that broke",
            ["model", "reason"],
            **reg,
        )
        self.served_drift = Counter(
            "lockstep_serving_served_drift",
            "served features whose PSI against the champion's training features crossed drift_psi",
            ["model", "feature"],
            **reg,
        )
        self.canary_errors = Counter(
            "lockstep_serving_canary_errors",
            "canary queries whose challenger failed (answered by the champion)",
            ["model"],
            **reg,
        ).labels(model=model)
        self.champion_age_days = Gauge(
            "lockstep_serving_champion_training_age_days",
            "days since the end of the champion's train range",
            ["model"],
            multiprocess_mode="max",
            **reg,
        ).labels(model=model)
        self.champion_stale = Gauge(
            "lockstep_serving_champion_stale",
            "1 when the champion's training data is older than the model's champion_max_age_days",
            ["model"],
            multiprocess_mode="max",
            **reg,
        ).labels(model=model)
        for reason in ("p99_latency", "error_rate", "degraded_rate", "score_psi"):
            self.canary_rollbacks.labels(model=model, reason=reason)
        # children that exist from the start, so a scrape shows them at 0
        self.swaps.labels(model=model)
        self.rollbacks.labels(model=model)
        for reason in ("fingerprint", "feature_names"):
            self.swaps_refused.labels(model=model, reason=reason)
        for reason in ("queue_full", "write_error"):
            self.log_refused.labels(model=model, reason=reason)
        self.sets = {name: SetSink(self, name) for name in feature_sets}
        self._requests: dict = {}
        self._latency: dict = {}
        self._predictions: dict = {}
        self._synced: dict = {}

    def served_by(self, version: str | None, arm: str | None = None) -> dict:
        """The served labels of ``version`` (None: the version served at start-up) on ``arm`` (None:
        the champion's; ``canary``: the challenger serving its share, ``jobs.serving.canary``)."""
        if version is None and arm is None:
            return self.served
        version = self.model_version if version is None else version
        return {"model": self.model, "model_version": str(version), "arm": arm or self.arm}

    def request(
        self,
        endpoint: str,
        mode: str,
        status: int,
        seconds: float | None = None,
        version: str | None = None,
        arm: str | None = None,
    ) -> None:
        """Count one HTTP request; ``seconds``: its work, observed for a 200; ``version``: the model
        version that scored it (None: the start-up one)."""
        key = (version, arm, endpoint, mode, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(
                **self.served_by(version, arm), endpoint=endpoint, mode=mode, status=str(status)
            )
        child.inc()
        if seconds is not None:
            hist = self._latency.get((version, arm, endpoint, mode))
            if hist is None:
                hist = self._latency[(version, arm, endpoint, mode)] = self.latency.labels(
                    **self.served_by(version, arm), endpoint=endpoint, mode=mode
                )
            hist.observe(seconds)

    def predicted(
        self, mode: str, degraded: int, total: int, version: str | None = None, arm: str | None = None
    ) -> None:
        """``total`` predictions answered 200 by ``version`` on ``arm``, ``degraded`` of them on some
        set's defaults."""
        for flag, n in (("true", degraded), ("false", total - degraded)):
            child = self._predictions.get((version, arm, mode, flag))
            if child is None:
                child = self._predictions[(version, arm, mode, flag)] = self.predictions.labels(
                    **self.served_by(version, arm), mode=mode, degraded=flag
                )
            child.inc(n)

    def model_swapped(self, previous: str, version: str, rollback: bool) -> None:
        """A swap from ``previous`` to ``version`` (``rollback``: to an older one)."""
        self.swaps.labels(model=self.model).inc()
        if rollback:
            self.rollbacks.labels(model=self.model).inc()
        self.info.labels(**self.served_by(previous)).set(0)
        self.info.labels(**self.served_by(version)).set(1)

    def swap_refused(self, reason: str) -> None:
        self.swaps_refused.labels(model=self.model, reason=reason).inc()

    def refused(self, reason: str, n: int = 1) -> None:
        self.log_refused.labels(model=self.model, reason=reason).inc(n)

    def sync_caches(self, caches) -> None:
        """Add each set's L1 cache hits and misses since the last call (``{set name: L1Cache}``):
        the caches count plain integers, the counters must be written by the worker that served."""
        for name, cache in caches.items():
            hits, misses = cache.hits, cache.misses
            h0, m0 = self._synced.get(name, (0, 0))
            sink = self.sets[name]
            if hits > h0:
                sink.cache_hits.inc(hits - h0)
            if misses > m0:
                sink.cache_misses.inc(misses - m0)
            self._synced[name] = (hits, misses)

    def render(self) -> tuple[bytes, str]:
        """(the exposition text of every worker's series, its content type)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """This worker is going away: drop its live gauges (``mark_process_dead``) from the directory."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
