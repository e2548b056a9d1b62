"""Nightly training-serving skew job of one declared model: ``lockstep skew --ds D [--model M]``.

For every row of ``serving_logs/<model>/ds=D`` served for the model, every joined set's features are
recomputed offline at the same ``(bound key, request_time)`` through the engines (over the set's
source table ``fs.source.table``), in ``known_at`` mode (what the same code computes
with what the service could have seen) and in ``as_of`` mode (every event that happened before the
request, however late it arrived), and joined on ``request_id``.

A (row, feature) DIFFERS when the served value differs from either recomputation beyond the
feature's tolerance (``Feature.tolerance = (abs, rel)``: ``|a-b| <= abs + rel*|b|``; default exact;
null equals only null). Each difference gets one cause, first match wins:

1. ``late_data``    served == known_at but != as_of: events that arrived after the request (the
                    served value is what the current code gives with what could be known, whatever
                    the row's fingerprint or degradation);
2. ``degraded``     the service flagged the row (store down/slow): it served declared defaults;
3. ``version_skew`` the row's fingerprint of the feature's set is not the current one (a row carries
                    every joined set's fingerprint, ``+``-joined in join order);
4. ``staleness``    the whole served vector equals the entity's vector in one of the
                    ``lookback_days`` previous daily snapshots (a cache or materialized view);
5. ``logic_skew``   anything else: same fingerprint, and the same code offline disagrees.

A difference is a MISMATCH (training-serving skew: ``mismatches``, ``mismatch_rate``, the diff
statistics, the samples) when it is a difference from what the model was trained on: the
recomputation in the set's ``training_mode`` (``causes.skew_causes``). Under ``known_at`` (the default)
late data is not skew — training saw the same — and is reported apart, as freshness: the late rows per
feature, and the lag (``ingested_at - event_ts``) of the events that arrived after a request.

Also: distribution drift of served features against the champion's training features (PSI over
10 quantile bins of the training data with a separate null bin, natural log; Jensen-Shannon
divergence over the same bins, log base 2, so in BITS, 0..1), and prediction skew (logged rows
re-scored with the logged model version; and the served score vs the score of the offline known_at
features).

Thresholds: the defaults below, under the model's ``skew_thresholds`` (``model_thresholds``), under
the caller's (``{feature or "*": {metric: max}}``); crossing one fails the job and alerts. Drift: a PSI
at or above the model's ``drift_psi`` (default 0.25) is ``major``: an alert at level ``error`` naming
the feature and its PSI (``SkewReport.drift_alerts``), which does not fail the job — drift is a change
of the data, not a wrong serving path, and a served population is often not the training one;
declare ``skew_thresholds={"psi": 0.25}`` to fail on it too. At or above ``drift_psi_moderate``
(default 0.1) it is ``moderate``: a warning. So is a champion whose training window ended more than
the model's ``champion_max_age_days`` (default 30) before the served day. Warnings are lines in the
report and one alert at level ``warning``.

Output: ``model.skew_report_table`` (``skew_reports/<model>/ds=D``) (one row per feature — with the set it came from — plus
``__score__``), an HTML page with plots
(``jobs.skew.report``) and, when a per-feature threshold is crossed, an alert and
:class:`SkewThresholdError` naming every breach.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from features.spec import FeatureSet
from jobs import engines
from jobs.engines.join import first_read
from jobs.lake import UNVALIDATED_INPUTS, MissingPartitionError, UnvalidatedPartitionError
from jobs.serving.log import (
    SERVING_LOGS_TABLE,
    degraded_rows,
    feature_frame,
    log_feature_sets,
    log_keys,
    log_schema,
    log_table,
)
from jobs.skew.causes import (
    CAUSES,
    DEGRADED,
    LATE_DATA,
    LOGIC_SKEW,
    PSI_MAJOR,
    PSI_MODERATE,
    SCORE_ROW,
    STALENESS,
    VERSION_SKEW,
    skew_causes,
)

log = logging.getLogger(__name__)

SKEW_REPORTS_TABLE = "skew_reports"
#: Per-feature maxima; "*" applies to every feature, a feature name overrides it.
#: Metrics: mismatch_rate, <cause>_rate, psi, js_bits; for __score__: rescore_max_abs_diff.
DEFAULT_THRESHOLDS = {
    "*": {"logic_skew_rate": 0.0, "version_skew_rate": 0.0},
    SCORE_ROW: {"rescore_max_abs_diff": 0.0},
}
SAMPLES = 5

REPORT_SCHEMA = pa.schema(
    [
        ("ds", pa.string()),
        ("feature", pa.string()),
        ("feature_set", pa.string()),
        ("training_mode", pa.string()),
        ("rows", pa.int64()),
        ("compared", pa.int64()),
        ("both_null", pa.int64()),
        ("online_only_null", pa.int64()),
        ("offline_only_null", pa.int64()),
        ("mismatches", pa.int64()),
        ("mismatch_rate", pa.float64()),
        *[(f"{c}", pa.int64()) for c in CAUSES],
        ("mismatches_vs_as_of", pa.int64()),
        ("diff_count", pa.int64()),
        ("diff_mean", pa.float64()),
        ("abs_diff_p50", pa.float64()),
        ("abs_diff_p99", pa.float64()),
        ("abs_diff_max", pa.float64()),
        ("late_abs_diff_max", pa.float64()),
        ("psi", pa.float64()),
        ("js_bits", pa.float64()),
        ("drift", pa.string()),
        ("rescore_max_abs_diff", pa.float64()),
        ("rescore_mismatches", pa.int64()),
        ("breaches", pa.string()),
        ("samples", pa.string()),
        ("late_samples", pa.string()),
    ]
)


class SkewThresholdError(Exception):
    """A per-feature threshold was crossed; ``report`` holds the full result."""

    def __init__(self, message: str, report: SkewReport):
        super().__init__(message)
        self.report = report


@dataclass
class SkewReport:
    ds: str
    table: pd.DataFrame  # one row per feature + __score__ (REPORT_SCHEMA)
    causes: pd.DataFrame  # per logged row x feature: cause code ('' = match)
    rows: pd.DataFrame  # logged rows joined with offline values (for samples/plots)
    breaches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    html_path: str | None = None
    fingerprints: dict = field(default_factory=dict)
    #: Lines worth a look that fail nothing (moderate drift, an old champion); alerted at level warning.
    warnings: list[str] = field(default_factory=list)
    #: Major drift, ``"feature: psi=... >= major (major drift)"``: alerted at level error, the job goes on.
    drift_alerts: list[str] = field(default_factory=list)
    #: Per feature set: the data latency behind its late data (:func:`freshness`).
    freshness: list[dict] = field(default_factory=list)
    #: The model's drift levels: ``{"moderate": PSI, "major": PSI}``.
    drift_levels: dict = field(default_factory=lambda: {"moderate": PSI_MODERATE, "major": PSI_MAJOR})
    #: The champion: name, version, train_end, age_days (None when unknown).
    champion: dict | None = None

    def feature(self, name: str) -> dict:
        return self.table.set_index("feature").loc[name].to_dict()

    def headline(self) -> dict:
        """The day in numbers: ``rows`` logged; ``values`` (row, feature) pairs; skew ``mismatches`` among
        them and the ``rows_mismatching`` (a skew mismatch on any feature); the ``late`` values and
        ``rows_late`` that differ only by data latency (late data that is not skew)."""
        t = self.table[self.table.feature != SCORE_ROW].set_index("feature")
        n = len(self.rows)
        skew = np.zeros(n, dtype=bool)
        late = np.zeros(n, dtype=bool)
        mismatches = late_values = 0
        for feat in self.causes.columns:
            c = np.asarray(self.causes[feat].to_numpy(), dtype=object)
            is_skew = np.isin(c, skew_causes(t.at[feat, "training_mode"]))
            is_late = (c == LATE_DATA) & ~is_skew
            skew |= is_skew
            late |= is_late
            mismatches += int(is_skew.sum())
            late_values += int(is_late.sum())
        return {
            "rows": n,
            "values": n * len(self.causes.columns),
            "mismatches": mismatches,
            "rows_mismatching": int(skew.sum()),
            "late": late_values,
            "rows_late": int(late.sum()),
        }

    def cause_counts(self) -> pd.DataFrame:
        """feature x cause mismatch counts."""
        return self.table.set_index("feature").loc[list(self.causes.columns), list(CAUSES)]


# ----------------------------------------------------------------------------- comparison


def equal_within(online: np.ndarray, offline: np.ndarray, tol: tuple[float, float]) -> np.ndarray:
    """Elementwise: null == null, null != value, else ``|a-b| <= abs + rel*|b|`` (exact when (0, 0))."""
    a, b = np.asarray(online, dtype=np.float64), np.asarray(offline, dtype=np.float64)
    an, bn = np.isnan(a), np.isnan(b)
    with np.errstate(invalid="ignore"):
        if tol == (0.0, 0.0) or tol == (0, 0):
            close = a == b
        else:
            close = np.abs(a - b) <= tol[0] + tol[1] * np.abs(b)
    return np.where(an | bn, an & bn, close)


def attribute(
    fs: FeatureSet,
    served: pd.DataFrame,
    known: pd.DataFrame,
    as_of: pd.DataFrame,
    stale: list[pd.DataFrame],
    current_fp: np.ndarray,
    degraded: np.ndarray,
) -> pd.DataFrame:
    """Cause per (row, feature): '' for a match, else one of CAUSES (see the module docstring)."""
    n = len(served)
    stale_row = np.zeros(n, dtype=bool)
    for snap in stale:  # the whole vector must equal one older snapshot's
        same = np.ones(n, dtype=bool)
        for f in fs.features:
            same &= equal_within(served[f.name].to_numpy(), snap[f.name].to_numpy(), (0.0, 0.0))
        stale_row |= same
    out = {}
    for f in fs.features:
        s = served[f.name].to_numpy()
        eq_k = equal_within(s, known[f.name].to_numpy(), f.tolerance)
        eq_a = equal_within(s, as_of[f.name].to_numpy(), f.tolerance)
        mism = ~(eq_k & eq_a)
        code = np.select([~mism, eq_k, degraded, ~current_fp, stale_row], range(5), default=5).astype(np.intp)
        # integer select, then a categorical over the labels: no per-row strings are built
        out[f.name] = pd.Categorical.from_codes(code, categories=_CAUSE_LABELS)
    return pd.DataFrame(out, index=served.index)


#: Category of each code ``attribute`` selects: a match, then the causes in attribution order (first match wins).
_CAUSE_LABELS = ["", LATE_DATA, DEGRADED, VERSION_SKEW, STALENESS, LOGIC_SKEW]


def feature_stats(
    fs: FeatureSet, served, known, as_of, causes: pd.DataFrame, rows: pd.DataFrame, key: str = "entity_id"
) -> list[dict]:
    """One record per feature of ``fs``; ``key`` is the log column of the set's bound key (samples).

    Null counts and differences are against the recomputation in the set's ``training_mode`` (what
    the model was trained on), over the MISMATCHING rows (``diff_count`` of them have both values;
    p50/p99/max of ``|served - training|``); ``late_abs_diff_max`` is ``|served - as_of|`` over the
    late rows that are not skew."""
    out = []
    keys = rows[key].to_numpy() if key in rows else np.full(len(rows), None)
    mode = fs.training_mode
    ref_frame = known if mode == "known_at" else as_of
    skew = skew_causes(mode)
    for f in fs.features:
        s = served[f.name].to_numpy(dtype=np.float64)
        r = ref_frame[f.name].to_numpy(dtype=np.float64)
        a = as_of[f.name].to_numpy(dtype=np.float64)
        sn, rn = np.isnan(s), np.isnan(r)
        both = ~sn & ~rn
        c = np.asarray(causes[f.name].to_numpy(), dtype=object)
        mism = np.isin(c, skew)
        late = (c == LATE_DATA) & ~mism
        d = s[mism & both] - r[mism & both]
        late_d = np.abs(s[late] - a[late])
        late_d = late_d[~np.isnan(late_d)]
        rec = {
            "feature": f.name,
            "feature_set": fs.name,
            "training_mode": mode,
            "rows": len(s),
            "compared": int(both.sum()),
            "both_null": int((sn & rn).sum()),
            "online_only_null": int((sn & ~rn).sum()),
            "offline_only_null": int((~sn & rn).sum()),
            "mismatches": int(mism.sum()),
            "mismatch_rate": float(mism.mean()) if len(s) else 0.0,
            "mismatches_vs_as_of": int((~equal_within(s, a, f.tolerance)).sum()),
            "diff_count": len(d),
            "diff_mean": float(d.mean()) if len(d) else None,
            "abs_diff_p50": float(np.percentile(np.abs(d), 50)) if len(d) else None,
            "abs_diff_p99": float(np.percentile(np.abs(d), 99)) if len(d) else None,
            "abs_diff_max": float(np.abs(d).max()) if len(d) else None,
            "late_abs_diff_max": float(late_d.max()) if len(late_d) else None,
        }
        counts = pd.Series(c).value_counts()  # one hash pass instead of a comparison per cause
        for cause in CAUSES:
            rec[cause] = int(counts.get(cause, 0))

        def sample(idx, ref: np.ndarray, ref_name: str) -> str:
            return json.dumps(
                [
                    {
                        "request_id": rows["request_id"].iat[i],
                        key: _native(keys[i]),
                        "request_time": rows["request_time"].iat[i].isoformat(),
                        "served": _js(s[i]),
                        "known_at": _js(float(known[f.name].iat[i])),
                        "as_of": _js(a[i]),
                        f"served - {ref_name}": _js(s[i] - ref[i]),
                        "cause": c[i],
                    }
                    for i in idx
                ]
            )

        # Samples of the most actionable causes first (logic skew is a bug).
        where = np.flatnonzero(mism)
        rank = np.select(
            [c[where] == k for k in (LOGIC_SKEW, VERSION_SKEW, STALENESS, DEGRADED)], [0, 1, 2, 3], default=4
        )
        rec["samples"] = sample(where[np.argsort(rank, kind="stable")[:SAMPLES]], r, mode)
        rec["late_samples"] = sample(np.flatnonzero(late)[:SAMPLES], a, "as_of")
        out.append(rec)
    return out


def _native(v):
    return v.item() if isinstance(v, np.generic) else v


def _js(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


# ----------------------------------------------------------------------------- drift


def quantile_edges(train: np.ndarray, bins: int = 10) -> np.ndarray:
    x = train[~np.isnan(train)]
    if len(x) == 0:
        return np.empty(0)
    return np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1]))


def _bin_shares(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares per bin: (-inf, e1], (e1, e2], ..., (ek, inf), then one bin for nulls."""
    nan = np.isnan(x)
    idx = np.searchsorted(edges, x[~nan], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    counts = np.append(counts, nan.sum())
    return counts / max(len(x), 1)


def psi_js(train: np.ndarray, served: np.ndarray, bins: int = 10, eps: float = 1e-4) -> tuple[float, float]:
    """(PSI, Jensen-Shannon divergence in bits) of ``served`` against ``train``."""
    train = np.asarray(train, dtype=np.float64)
    served = np.asarray(served, dtype=np.float64)
    edges = quantile_edges(train, bins)
    p, q = _bin_shares(train, edges), _bin_shares(served, edges)
    pe, qe = np.clip(p, eps, None), np.clip(q, eps, None)
    psi = float(np.sum((qe - pe) * np.log(qe / pe)))
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return psi, float(max(0.0, (kl_p + kl_q) / 2))


def drift_level(psi: float | None, major: float = PSI_MAJOR, moderate: float = PSI_MODERATE) -> str:
    """``major`` at or above ``major`` (a model's ``drift_psi``), ``moderate`` at or above ``moderate``
    (its ``drift_psi_moderate``), else ``stable``; ``n/a`` without a PSI."""
    if psi is None or np.isnan(psi):
        return "n/a"
    return "major" if psi >= major else ("moderate" if psi >= moderate else "stable")


def drift_findings(stats: list[dict], major: float, moderate: float) -> tuple[list[str], list[str]]:
    """``(alerts, warnings)`` of the per-feature records' ``psi``: a major PSI is an alert line
    ``"feature: psi=... >= major (major drift)"``, a moderate one a warning line."""
    breaches, warnings = [], []
    for rec in stats:
        psi, level = rec.get("psi"), drift_level(rec.get("psi"), major, moderate)
        if level == "major":
            breaches.append(f"{rec['feature']}: psi={psi:.4f} >= {major:g} (major drift)")
        elif level == "moderate":
            warnings.append(f"{rec['feature']}: moderate drift, psi={psi:.4f} >= {moderate:g} (major at {major:g})")
    return breaches, warnings


def champion_age(champion: dict | None, ds: str, max_days: float) -> str | None:
    """The warning when ``champion['train_end']`` is more than ``max_days`` days before ``ds``."""
    if not champion or champion.get("age_days") is None or champion["age_days"] <= max_days:
        return None
    return (
        f"champion {champion['name']} v{champion['version']} was trained on data up to {champion['train_end']}: "
        f"{champion['age_days']} days before the served day {ds} (more than {max_days:g})"
    )


def lag_quantiles(lag_s: np.ndarray) -> dict:
    """``{"events", "min", "p50", "p90", "p99", "max"}`` of lags in seconds (None without events)."""
    lag_s = np.asarray(lag_s, dtype=np.float64)
    if not len(lag_s):
        return {"events": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None}
    q = np.percentile(lag_s, [0, 50, 90, 99, 100])
    return {"events": len(lag_s), **{k: float(v) for k, v in zip(("min", "p50", "p90", "p99", "max"), q)}}


# ----------------------------------------------------------------------------- the job


def logged_keys(logs: pd.DataFrame, key: str, fs: FeatureSet) -> np.ndarray:
    """The log column ``key`` as ``fs``'s entity keys (int64, or strings as objects)."""
    col = logs[key]
    return col.to_numpy(dtype=np.int64) if fs.entity_type == "int64" else col.astype(object).to_numpy()


def recompute(
    cfg, fs: FeatureSet, logs: pd.DataFrame, ds: str, late_days: int, mode: str, key: str = "entity_id"
) -> pd.DataFrame:
    """Offline features of ``fs`` for the logged (``key``, request_time), in the order of ``logs``."""
    raw = cfg.lake().table(fs.source.table)
    first, last = raw.first_ds(), raw.last_ds()
    if first is None:
        raise ValueError(f"no {fs.source.table} partitions in {cfg.lake().root}")
    first = _reads_from(fs, first, ds, logs["request_time"].min() if len(logs) else None)
    end = min(last, (pd.Timestamp(ds) + pd.Timedelta(days=late_days)).strftime("%Y-%m-%d"))
    queries = pd.DataFrame(
        {
            fs.entity: logged_keys(logs, key, fs),
            "as_of": logs["request_time"].array,  # tz-aware datetimes, not Timestamp objects
            "_row": np.arange(len(logs), dtype=np.int64),
        }
    )
    frames = engines.run(cfg, fs, raw.files(first, end), queries, mode)
    out = pd.concat(list(frames), ignore_index=True)
    out = out.sort_values("_row", ignore_index=True)
    if len(out) != len(logs) or not (out["_row"].to_numpy() == np.arange(len(logs))).all():
        raise RuntimeError(f"engine {cfg.engine} returned {len(out)} rows for {len(logs)} queries")
    return out[list(fs.feature_names)]


def in_flight_rows(
    cfg, fs: FeatureSet, logs: pd.DataFrame, ds: str, late_days: int, key: str = "entity_id"
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (entity e, time t) with an event of e such that ``event_ts < t <= ingested_at``, and the lag
    ``ingested_at - event_ts`` in seconds of each such event (once per event).

    Such an event arrived at or after the earliest request, so it sits in an ingest partition from
    that day on: only those few partitions are read.
    """
    none = np.zeros(0, dtype=np.float64)
    if not len(logs):
        return np.zeros(0, dtype=bool), none
    raw = cfg.lake().table(fs.source.table)
    t = logs["request_time"]
    first = t.min().strftime("%Y-%m-%d")
    last = min(raw.last_ds(), (pd.Timestamp(ds) + pd.Timedelta(days=late_days)).strftime("%Y-%m-%d"))
    if first > last:
        return np.zeros(len(logs), dtype=bool), none
    ev = raw.read(first, last, columns=[fs.event_id, fs.entity, fs.timestamp, fs.ingested_at])
    ev = ev[(ev[fs.ingested_at] >= t.min()) & (ev[fs.timestamp] < t.max())]
    if not len(ev):
        return np.zeros(len(logs), dtype=bool), none
    rows = pd.DataFrame({fs.entity: logged_keys(logs, key, fs), "_t": t.array, "_row": np.arange(len(logs))})
    pairs = rows.merge(ev, on=fs.entity, how="inner")
    hit = (pairs[fs.timestamp] < pairs["_t"]) & (pairs[fs.ingested_at] >= pairs["_t"])
    mask = np.zeros(len(logs), dtype=bool)
    mask[pairs.loc[hit, "_row"].to_numpy()] = True
    late = pairs.loc[hit].drop_duplicates(fs.event_id)
    lag = (late[fs.ingested_at] - late[fs.timestamp]).dt.total_seconds().to_numpy(dtype=np.float64)
    return mask, lag


def stale_vectors(
    cfg, fs: FeatureSet, logs: pd.DataFrame, lookback_days: int, key: str = "entity_id"
) -> tuple[list[pd.DataFrame], list[str]]:
    """Per earlier snapshot (request day - 1 ... - lookback): the entity's vector (defaults when absent)."""
    from features.kernel import US_PER_DAY, to_us
    from jobs.snapshots import snapshot_table

    table = snapshot_table(cfg.lake(), fs)
    day = to_us(logs["request_time"], "request_time") // US_PER_DAY  # UTC day numbers: no per-row strings
    out, notes = [], []
    defaults = {f.name: (f.default if f.default is not None else np.nan) for f in fs.features}
    for lag in range(1, lookback_days + 1):
        want = day - lag
        vec = {f.name: np.full(len(logs), defaults[f.name], dtype=np.float64) for f in fs.features}
        for snap_day in np.unique(want):
            snap_ds = (pd.Timestamp(0) + pd.Timedelta(days=int(snap_day))).strftime("%Y-%m-%d")
            try:
                snap = table.read(snap_ds)
            except MissingPartitionError:
                notes.append(f"snapshot ds={snap_ds} missing: staleness against it not checked")
                for v in vec.values():
                    v[want == snap_day] = np.nan
                continue
            rows = np.flatnonzero(want == snap_day)
            pos = pd.Index(snap[fs.entity].to_numpy()).get_indexer(logged_keys(logs, key, fs)[rows])
            found = pos >= 0
            for f in fs.features:
                col = snap[f.name].to_numpy(dtype=np.float64, na_value=np.nan)
                vec[f.name][rows[found]] = col[pos[found]]
        out.append(pd.DataFrame(vec))
    return out, notes


def _reads_from(fs: FeatureSet, first: str, ds: str, earliest=None) -> str:
    """The first raw partition the recomputation of ``fs`` for the log of ``ds`` reads: the table's
    ``first``, or for bounded windows the first that can hold an event inside one for a request of day
    ``ds`` (or at ``earliest``, when a logged request is earlier) — ``jobs.engines.join.first_read``."""
    day = pd.Timestamp(ds, tz="UTC")
    as_of = day if earliest is None else min(day, pd.Timestamp(earliest).tz_convert("UTC"))
    return first_read(fs, first, as_of)


def _unvalidated_inputs(lake, decl, logs_table: str, ds: str, late_days: int, allow: bool) -> list[str]:
    """The serving-log day and each joined set's raw days ``first..min(last, ds + late_days)`` (what
    ``recompute`` reads) without a validated version; UnvalidatedPartitionError unless ``allow``."""
    checks = [(lake.table(logs_table), ds, ds, "serving_logs")]
    end = (pd.Timestamp(ds) + pd.Timedelta(days=late_days)).strftime("%Y-%m-%d")
    for name in dict.fromkeys(fs.source.table for fs in decl.feature_sets if fs.source is not None):
        raw = lake.table(name)
        first, last = raw.first_ds(), raw.last_ds()
        if first is not None:  # no raw day at all: recompute says so
            first = min(_reads_from(fs, first, ds) for fs in decl.feature_sets if fs.source and fs.source.table == name)
            checks.append((raw, first, min(last, end), "raw_events"))
    out = []
    for table, lo, hi, dataset in checks:
        days = table.unvalidated(lo, hi)
        if days and not allow:
            raise UnvalidatedPartitionError(table.name, days, dataset)
        out += [f"{table.name}/ds={d}" for d in days if f"{table.name}/ds={d}" not in out]
    return out


def run_skew(
    cfg,
    ds: str,
    *,
    model: str | None = None,
    model_source=None,
    thresholds: dict | None = None,
    lookback_days: int = 3,
    late_days: int = 3,
    notifier=None,
    html: bool = True,
    fail: bool = True,
    alert_breaches: bool = True,
    allow_unvalidated: bool = False,
) -> SkewReport:
    """Compare ``serving_logs/<model>/ds=D`` of declared model ``model`` (default: the repo's default model)
    with offline recomputation of every joined set; write the report; alert major drift and warnings;
    alert (unless ``alert_breaches`` is False: a caller whose failure handler alerts) and raise on a breach.

    The serving-log day and the raw days the recomputation reads must be validated
    (``UnvalidatedPartitionError`` naming the table, the days and the override, before any work), unless
    ``allow_unvalidated=True``: the report's ``producer.unvalidated_inputs`` then names them."""
    ds = str(pd.Timestamp(ds).date())
    repo = cfg.repo()
    decl = repo.model(model) if model else repo.default_model()
    lake = cfg.lake()
    logs_table = log_table(decl)
    unvalidated = _unvalidated_inputs(lake, decl, logs_table, ds, late_days, allow_unvalidated)
    logs = lake.table(logs_table, log_schema(decl)).read(ds)
    logs = logs[logs["feature_set"] == log_feature_sets(decl)].reset_index(drop=True)
    notes = []
    served = feature_frame(logs, decl).reset_index(drop=True)
    column_of = {col: log_col for log_col, col, _ in log_keys(decl)}
    # every set's logged fingerprint: the row's "+"-joined fingerprints, by join position
    parts = logs["feature_set_fingerprint"].fillna("").str.split("+", regex=False)
    n_sets = len(decl.joins)
    known_parts, as_of_parts, causes_parts, stats, fresh = [], [], [], [], []
    for i, join in enumerate(decl.joins):
        fs, key = join.feature_set, column_of[join.key_name]
        names = list(fs.feature_names)
        known = recompute(cfg, fs, logs, ds, late_days, "known_at", key)
        # as_of differs from known_at only where an event had happened but not yet arrived at the
        # request time; only those rows are recomputed in as_of mode (the rest are equal by definition).
        in_flight, lag_s = in_flight_rows(cfg, fs, logs, ds, late_days, key)
        as_of = known.copy()
        if in_flight.any():
            sub = recompute(cfg, fs, logs[in_flight].reset_index(drop=True), ds, late_days, "as_of", key)
            as_of.loc[in_flight, :] = sub.to_numpy()
            as_of = as_of.astype(known.dtypes.to_dict())
        stale, stale_notes = stale_vectors(cfg, fs, logs, lookback_days, key)
        notes += sorted(set(stale_notes) - set(notes))
        current = np.array([len(p) == n_sets and p[i] == fs.fingerprint for p in parts], dtype=bool)
        # a row degraded on another set is compared as usual on this one
        causes = attribute(fs, served[names], known, as_of, stale, current, degraded_rows(logs, decl, fs))
        set_stats = feature_stats(fs, served[names], known, as_of, causes, logs, key)
        stats += set_stats
        fresh.append(
            {
                "feature_set": fs.name,
                "source": fs.source.name if fs.source is not None else fs.name,
                "training_mode": fs.training_mode,
                "rows": len(logs),
                "rows_in_flight": int(in_flight.sum()),
                "lag_s": lag_quantiles(lag_s),
                "late_data": {r["feature"]: r[LATE_DATA] for r in set_stats},
            }
        )
        known_parts.append(known)
        as_of_parts.append(as_of)
        causes_parts.append(causes)
    known = pd.concat(known_parts, axis=1) if known_parts else pd.DataFrame(index=logs.index)
    as_of = pd.concat(as_of_parts, axis=1) if as_of_parts else pd.DataFrame(index=logs.index)
    causes = pd.concat(causes_parts, axis=1)
    known_fps = repo.known_fingerprints()
    fps = logs["feature_set_fingerprint"].value_counts().to_dict()
    for fp in fps:
        if fp != decl.fingerprint:
            unknown = any(p not in known_fps for p in str(fp).split("+"))
            notes.append(
                f"{fps[fp]} row(s) served with fingerprint {fp}"
                f"{' (unknown to the registry)' if unknown else ''}; current is {decl.fingerprint}"
            )
    champ, champion = _champion(model_source, notes, ds)
    _add_drift(stats, decl, served, champ, model_source, notes)
    drift_alerts, warnings = drift_findings(stats, decl.drift_psi, decl.drift_psi_moderate)
    old = champion_age(champion, ds, decl.champion_max_age_days)
    if old:
        warnings.append(old)
    stats.append(_prediction_skew(decl, logs, served, known, model_source, notes))
    table = pd.DataFrame(stats)
    table.insert(0, "ds", ds)
    thresholds = _merge_thresholds(model_thresholds(decl), thresholds)
    breaches = _breaches(table, thresholds)
    table["breaches"] = [";".join(b for f, b in breaches if f == feat) for feat in table["feature"]]
    for col in REPORT_SCHEMA.names:
        if col not in table.columns:
            table[col] = None
    table = table[REPORT_SCHEMA.names]
    rows = logs.join(known.add_prefix("known_at__")).join(as_of.add_prefix("as_of__"))
    report = SkewReport(
        ds,
        table,
        causes,
        rows,
        [f"{f}: {b}" for f, b in breaches],
        notes,
        fingerprints={str(k): int(v) for k, v in fps.items()},
        warnings=warnings,
        drift_alerts=drift_alerts,
        freshness=fresh,
        drift_levels={"moderate": decl.drift_psi_moderate, "major": decl.drift_psi},
        champion=champion,
    )
    lake.table(decl.skew_report_table, REPORT_SCHEMA).write_partition(
        ds,
        pa.Table.from_pandas(table, schema=REPORT_SCHEMA, preserve_index=False),
        producer={
            "job": "skew",
            "engine": cfg.engine,
            "model": decl.name,
            "feature_sets": [fs.name for fs in decl.feature_sets],
            "feature_set_fingerprint": decl.fingerprint,
            "lookback_days": lookback_days,
            "late_days": late_days,
            "thresholds": thresholds,
            **({UNVALIDATED_INPUTS: unvalidated} if unvalidated else {}),
        },
        inputs={f"{logs_table}/ds={ds}": lake.table(logs_table).manifest(ds).content_fingerprint},
    )
    if html:
        from jobs.skew.report import write_html

        report.html_path = write_html(cfg, report, timeseries(cfg, ds, decl.name), decl.name)
    if report.warnings:
        msg = (
            f"skew ds={ds}: {len(report.warnings)} warning(s): "
            + "; ".join(report.warnings)
            + (f" — report: {report.html_path}" if report.html_path else "")
        )
        _alert(cfg, msg, notifier, ds=ds, report=report.html_path, dataset=logs_table, level="warning")
    if report.drift_alerts:
        msg = (
            f"skew ds={ds}: major drift on {len(report.drift_alerts)} feature(s): "
            + "; ".join(report.drift_alerts)
            + (f" — report: {report.html_path}" if report.html_path else "")
        )
        _alert(
            cfg,
            msg,
            notifier,
            ds=ds,
            failed=report.drift_alerts,
            report=report.html_path,
            dataset=logs_table,
            what="major drift",
        )
    if report.breaches:
        msg = (
            f"skew ds={ds}: {len(report.breaches)} threshold breach(es): "
            + "; ".join(report.breaches)
            + (f" — report: {report.html_path}" if report.html_path else "")
        )
        if alert_breaches:
            _alert(cfg, msg, notifier, ds=ds, failed=report.breaches, report=report.html_path, dataset=logs_table)
        if fail:
            raise SkewThresholdError(msg, report)
    return report


def timeseries(cfg, to_ds: str, model: str | None = None) -> pd.DataFrame:
    """Every published skew report of ``model`` (default: the repo's default model) up to ``to_ds``,
    one row per (ds, feature)."""
    repo = cfg.repo()
    decl = repo.model(model) if model else repo.default_model()
    table = cfg.lake().table(decl.skew_report_table, REPORT_SCHEMA)
    days = [d for d in table.partitions() if d <= to_ds]
    if not days:
        return REPORT_SCHEMA.empty_table().to_pandas()
    return pd.concat([table.read(d) for d in days], ignore_index=True)


def _champion(model_source, notes, ds: str):
    """``(champion model or None, {name, version, train_end, age_days} or None)``; ``age_days`` is the
    days from the end of its training window (the source's ``training_window``) to ``ds``."""
    if model_source is None:
        notes.append("drift skipped: no model source (registry not configured)")
        return None, None
    try:
        champ = model_source.champion()
    except Exception as exc:  # noqa: BLE001 - drift is informative; a missing champion must not hide skew
        notes.append(f"drift skipped: no training reference ({exc})")
        return None, None
    info = {"name": champ.name, "version": str(champ.version), "train_end": None, "age_days": None}
    window_of = getattr(model_source, "training_window", None)  # an optional part of the protocol
    window = window_of(champ) if window_of is not None else None
    if window:
        info["train_end"] = str(window[1])[:10]
        info["age_days"] = (pd.Timestamp(ds) - pd.Timestamp(info["train_end"])).days
    else:
        notes.append(f"champion {champ.name} v{champ.version}: training window unknown, its age not checked")
    return champ, info


def _add_drift(stats, model, served, champ, model_source, notes) -> None:
    train = None
    if champ is not None:
        try:
            train = model_source.training_features(champ)
        except Exception as exc:  # noqa: BLE001 - drift is informative; a missing reference must not hide skew
            notes.append(f"drift skipped: no training reference ({exc})")
    for rec in stats:
        psi = js = None
        if train is not None and rec["feature"] in train.columns:
            psi, js = psi_js(
                train[rec["feature"]].to_numpy(dtype=np.float64, na_value=np.nan),
                served[rec["feature"]].to_numpy(dtype=np.float64),
            )
        rec["psi"], rec["js_bits"] = psi, js
        rec["drift"] = drift_level(psi, model.drift_psi, model.drift_psi_moderate)


def _prediction_skew(model, logs, served, known, model_source, notes) -> dict:
    rec = {"feature": SCORE_ROW, "rows": len(logs)}
    if model_source is None or not len(logs):
        return rec
    rescored = np.full(len(logs), np.nan)
    offline = np.full(len(logs), np.nan)
    for (name, version), idx in logs.groupby(["model_name", "model_version"]).indices.items():
        try:
            model = model_source.load(name, version)
        except Exception as exc:  # noqa: BLE001 - reported as a note; feature skew still counts
            notes.append(f"prediction skew: cannot load model {name}:{version} ({exc})")
            continue
        rescored[idx] = model.predict(served.iloc[idx])
        offline[idx] = model.predict(known.iloc[idx])
    logged = logs["score"].to_numpy(dtype=np.float64)
    ok = ~np.isnan(rescored)
    d = np.abs(rescored[ok] - logged[ok])
    od = offline[ok] - logged[ok]
    rec.update(
        compared=int(ok.sum()),
        rescore_max_abs_diff=float(d.max()) if len(d) else None,
        rescore_mismatches=int((d > 0).sum()),
        mismatches=int((od != 0).sum()),
        mismatch_rate=float((od != 0).mean()) if len(od) else None,
        diff_mean=float(od.mean()) if len(od) else None,
        abs_diff_p50=float(np.percentile(np.abs(od), 50)) if len(od) else None,
        abs_diff_p99=float(np.percentile(np.abs(od), 99)) if len(od) else None,
    )
    return rec


def model_thresholds(model) -> dict:
    """A model's declared thresholds as ``{feature or "*": {metric: max}}`` from ``skew_thresholds``: a
    flat metric applies to every feature (a cause name means its rate: ``logic_skew`` =
    ``logic_skew_rate``), a dict value is one feature's. (``drift_psi`` is the PSI at which drift is
    reported ``major``; a PSI breach is declared as ``("psi", max)``.)"""
    out: dict = {"*": {}}
    for key, value in model.skew_thresholds:
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        else:
            out["*"][f"{key}_rate" if key in CAUSES else key] = value
    return out


def _merge_thresholds(*layers: dict | None) -> dict:
    """The defaults, then each layer over them (``{feature or "*": {metric: max}}``)."""
    out = {k: dict(v) for k, v in DEFAULT_THRESHOLDS.items()}
    for layer in layers:
        for k, v in (layer or {}).items():
            out.setdefault(k, {}).update(v)
    return out


def _breaches(table: pd.DataFrame, thresholds: dict) -> list[tuple[str, str]]:
    out = []
    for rec in table.to_dict("records"):
        feat = rec["feature"]
        limits = dict(thresholds.get("*", {})) if feat != SCORE_ROW else {}
        limits.update(thresholds.get(feat, {}))
        for metric, limit in limits.items():
            if limit is None:
                continue
            if metric.endswith("_rate") and metric[:-5] in CAUSES:
                value = rec[metric[:-5]] / rec["rows"] if rec.get("rows") else 0.0
            else:
                value = rec.get(metric)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            if value > limit:
                detail = ""
                if metric[:-5] in CAUSES:
                    detail = f" ({int(rec[metric[:-5]])} of {int(rec['rows'])} rows)"
                out.append((feat, f"{metric}={value:.6g} > {limit:g}{detail}"))
    return out


def _alert(
    cfg,
    message: str,
    notifier=None,
    *,
    ds: str | None = None,
    failed=(),
    report: str | None = None,
    dataset: str = SERVING_LOGS_TABLE,
    level: str = "error",
    what: str = "skew threshold",
) -> None:
    """The platform notifier (``jobs.alerts``: alerts log, e-mail, webhook), or ``notifier(message)``."""
    (log.warning if level == "warning" else log.error)(message)
    if notifier is not None:
        notifier(message)
        return
    try:
        from jobs.alerts import Alert, Notifier
    except ImportError:
        return
    try:
        Notifier.for_lake(cfg.lake()).send(
            Alert(
                title={
                    "skew threshold": f"training-serving skew over threshold, ds={ds}",
                    "major drift": f"major drift of served features, ds={ds}",
                }.get(what, f"training-serving skew report warnings, ds={ds}"),
                where="lockstep skew",
                reason=message,
                what="skew warning" if level == "warning" else what,
                level=level,
                dataset=dataset,
                partition=ds,
                failed=list(failed),
                report=report,
            )
        )
    except Exception:  # alerting must not mask the failure being reported (logged)
        log.exception("could not send the skew alert")
